"""custom_conv as an installable package: the editable install that `make`
sets up, the version and build record, the check that the compiled kernels
match the torch being imported, the sdist, and a wheel installed into a fresh
virtual environment and used from outside the repository."""
import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
import torch

import custom_conv

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "custom_conv"
CSRC_SUFFIXES = (".h", ".cpp", ".cu", ".cuh")


def pyproject_version():
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def clean_env(**extra):
    """The environment for a Python that must find custom_conv the way a user's would:
    no PYTHONPATH, nothing from the user's site directory."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", **extra)
    return env


def run(args, cwd, timeout=300, **env):
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=clean_env(**env), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_version_matches_the_package_metadata_and_pyproject():
    assert custom_conv.__version__ == pyproject_version() == importlib.metadata.version("custom_conv")


def test_the_build_records_the_torch_it_was_built_against():
    info = custom_conv._ops.build_info
    assert info is not None, "custom_conv/_build_info.py is missing: rebuild with `make build`"
    assert (info.TORCH_VERSION, info.TORCH_GIT_VERSION) == (str(torch.__version__), torch.version.git_version)
    assert info.VERSION == custom_conv.__version__


def test_python_m_custom_conv_from_any_directory_prints_what_a_bug_report_needs(tmp_path):
    # The editable install that `make build` does: no PYTHONPATH, not run from the repository.
    out = run([sys.executable, "-m", "custom_conv"], cwd=tmp_path)
    lines = dict(line.split(":", 1) for line in out.splitlines())
    lines = {key: value.strip() for key, value in lines.items()}
    assert lines["custom_conv"] == custom_conv.__version__
    assert lines["location"] == str(PACKAGE)
    assert lines["built against torch"].startswith(str(torch.__version__))
    assert lines["torch"].startswith(str(torch.__version__))
    assert lines["cpu kernels"] == custom_conv.cpu_kernels()
    assert lines["cuda kernels"].startswith("compiled in" if custom_conv.has_cuda_kernels() else "not compiled in")
    assert custom_conv.info()["custom_conv"] == custom_conv.__version__


def test_one_function_says_whether_the_build_has_cuda_kernels():
    """has_cuda_kernels() asks torch's dispatcher; the modules that need the
    answer (info(), enabled()'s fallback, train.py's --device auto) ask it, so
    they cannot disagree."""
    asking = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                    if "_dispatch_has_kernel_for_dispatch_key" in path.read_text())
    assert asking == ["_ops.py"]
    compiled = custom_conv.has_cuda_kernels()
    assert compiled == torch._C._dispatch_has_kernel_for_dispatch_key("custom_conv::conv2d_forward", "CUDA")
    assert custom_conv.mode._has_kernels("cuda") == compiled
    assert custom_conv.info()["cuda kernels"].startswith("compiled in" if compiled else "not compiled in")


def _package_copy(tmp_path, **build_info):
    """The package in a folder of its own, the compiled module linked in, with
    _build_info.py's values replaced by `build_info`."""
    copy = tmp_path / "site" / "custom_conv"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for so in PACKAGE.glob("_C*.so"):
        (copy / so.name).symlink_to(so)
    text = (PACKAGE / "_build_info.py").read_text()
    for name, value in build_info.items():
        text = "\n".join(f"{name} = {value!r}" if line.startswith(f"{name} = ") else line
                         for line in text.splitlines())
    (copy / "_build_info.py").write_text(text)
    return copy.parent


@pytest.mark.parametrize("torch_version, git_version", [
    ("2.4.0", "ee1b6804381c57161c477caa380a840a84167676"),     # another release
    (str(torch.__version__), "0123456789abcdef0123456789abcdef01234567"),  # same number, another build
])
def test_a_build_for_another_torch_says_to_rebuild_before_loading_it(tmp_path, torch_version, git_version):
    site = _package_copy(tmp_path, TORCH_VERSION=torch_version, TORCH_GIT_VERSION=git_version)
    code = textwrap.dedent("""
        import sys
        try:
            import custom_conv
        except ImportError as error:
            print(error)
            print("loaded:", "custom_conv._C" in sys.modules)
    """)
    out = run([sys.executable, "-c", code], cwd=tmp_path, PYTHONPATH=str(site))
    assert f"built against torch {torch_version}, but this is torch {torch.__version__}" in out
    assert "Rebuild it against the torch you have" in out and "make build" in out
    assert "pip install --no-build-isolation" in out
    assert "loaded: False" in out  # checked before the compiled module was loaded
    assert "undefined symbol" not in out


def test_the_sdist_holds_every_source_needed_to_build_and_nothing_local(tmp_path):
    run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", tmp_path], cwd=REPO)
    [sdist] = tmp_path.glob("custom_conv-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    csrc = {str(p.relative_to(REPO)) for p in (REPO / "csrc").rglob("*") if p.suffix in CSRC_SUFFIXES}
    assert {"csrc/cpu/direct/loops.h", "csrc/cuda/gemm.cuh"} <= csrc  # every subfolder and suffix
    assert csrc <= names
    python = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if p.name != "_build_info.py"}
    assert python <= names
    assert {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md"} <= names
    assert not [n for n in names if n.endswith((".so", ".pyc")) or n.endswith("_build_info.py")
                or n.split("/")[0] in ("tests", "build", "build-sanitize", "runs", "data", ".venv")]


# ------------------------------------------------------------ the wheel

WHEEL_CHECK = """
import copy, importlib.metadata, os, sys
import torch, torchvision
import custom_conv

# Imported from the fresh environment, not from the repository.
assert custom_conv.__file__.startswith(sys.prefix), custom_conv.__file__
assert custom_conv.__version__ == importlib.metadata.version("custom_conv"), custom_conv.__version__

torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=10).double().eval()  # batch norm on running stats
ours = custom_conv.convert(copy.deepcopy(model))
assert isinstance(ours.conv1, custom_conv.nn.Conv2d) and isinstance(ours.maxpool, custom_conv.nn.MaxPool2d)
x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
for m in (model, ours):
    m(x).pow(2).sum().backward()
torch.testing.assert_close(ours(x), model(x))
for (name, p), q in zip(model.named_parameters(), ours.parameters()):
    torch.testing.assert_close(q.grad, p.grad, msg=lambda m: name + ": " + m)
print("ok", custom_conv.__version__, custom_conv.__file__)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """`pip wheel --no-build-isolation --no-deps .`, as the README says. It
    builds in the repository's build/ folder, so ninja reuses the objects that
    `make build` compiled (only the link and the zip take time)."""
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
         "--wheel-dir", out, REPO], cwd=REPO, timeout=1800)
    [path] = out.glob("custom_conv-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_holds_the_compiled_kernels_and_the_package_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        build_info = z.read("custom_conv/_build_info.py").decode()
    dist_info = f"custom_conv-{pyproject_version()}.dist-info"
    assert {name.split("/")[0] for name in names} == {"custom_conv", dist_info}
    assert [n for n in names if n.startswith("custom_conv/_C.") and n.endswith(".so")]
    python = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")}
    assert python <= names  # __main__.py, models/, training/ included
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert f"TORCH_VERSION = {str(torch.__version__)!r}" in build_info


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_works_from_outside_the_repository(wheel, tmp_path):
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)  # pip from Python's own bundled copy, offline
    python = env_dir / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp_path).strip())
    # The wheel alone, from the file: no index, no dependencies, nothing downloaded...
    run([python, "-m", "pip", "install", "--no-index", "--no-deps", wheel], cwd=tmp_path)
    # ...and torch/torchvision from the test's environment (torch is large: not installed twice),
    # after the new environment's own site-packages, so the installed custom_conv comes first.
    (Path(site) / "dev_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run([python, "-c", WHEEL_CHECK], cwd=elsewhere, timeout=600)
    assert out.startswith(f"ok {custom_conv.__version__} {site}")
    info = run([python, "-m", "custom_conv"], cwd=elsewhere)
    assert f"location:            {site}/custom_conv" in info
