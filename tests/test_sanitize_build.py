"""`make sanitize` runs the CPU tests against a build with AddressSanitizer
and UBSan; this makes sure that build, not the normal one, is under test."""
import os

import pytest

import custom_conv


def test_make_sanitize_tests_the_sanitized_build():
    if os.environ.get("CUSTOM_CONV_EXPECT_SANITIZED") != "1":
        pytest.skip("only under `make sanitize`")
    assert "build-sanitize" in custom_conv._C.__file__
