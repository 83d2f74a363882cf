"""The documents: a README a newcomer reads in minutes, with the set-up
commands first; every relative link in the documents leads to a file of the
repository (and every #anchor to a heading of it), and so does every path
named in code, tests and documents; and code, tests, scripts
and documents state reasons and bounds, not dates or tracker numbers, which
belong to the results files and their READMEs, next to the machine."""
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCUMENTS = sorted([README, REPO / "benchmarks" / "README.md", REPO / "results" / "training" / "README.md",
                    REPO / "tests" / "README.md", *(REPO / "docs").glob("*.md")])
# Where dated figures belong: results, with their machine.
RESULTS = ("results/", "benchmarks/README.md")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def headings_anchors(path):
    """GitHub's anchors for a Markdown file's headings."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


def test_the_readme_is_short_and_starts_with_the_two_set_up_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    first_block = text.split("```")[1]
    assert "make train" in first_block and "make test" in first_block
    assert text.index("```") < text.index("\n## ", text.index("## ") + 1), "set-up comes first"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(document):
    for target in LINK.findall(document.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        assert resolved.exists(), f"{document.relative_to(REPO)}: {target} leads nowhere"
        assert resolved.is_relative_to(REPO), f"{document.relative_to(REPO)}: {target} leaves the repository"
        if anchor and resolved.suffix == ".md":
            assert anchor in headings_anchors(resolved), f"{document.relative_to(REPO)}: no heading for {target}"


def tracked_text_files():
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    for name in listed:
        path = REPO / name
        if name and not name.startswith(RESULTS) and path.suffix not in (".png", ".json") and path.is_file():
            yield name, path


# A path of the repository named in a file: a comment, a docstring, a
# document. Not patterns (followed by {, <, * or .{) nor placeholders (DATE).
PATH = re.compile(r"(?<![\w./-])((?:csrc|custom_conv|tests|benchmarks|results|docs)/[\w./-]*\w/?)(?![\w{<*]|\.\{)")


def test_every_path_named_in_code_tests_and_documents_exists():
    """A file that moves leaves no stale mention behind (the link test above
    covers Markdown links; this covers plain mentions, in code too)."""
    missing = [f"{name}:{number}: {match.group(1)}"
               for name, path in tracked_text_files()
               for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
               for match in PATH.finditer(line)
               if not re.search(r"[A-Z]{3,}", match.group(1)) and not (REPO / match.group(1)).exists()
               and not match.group(1).startswith("custom_conv/_C")]  # the compiled module, built, not tracked
    assert missing == [], "\n".join(missing)


# A date, a tracker's issue number, or a diary's machine.
DIARY = re.compile(r"\b(19|20)\d\d-\d\d-\d\d\b|\b[Ii]ssue\s*#?\d+|(^|[^&#\w])#\d+\b|\bthis VM\b|\bour machines\b")


def test_code_tests_scripts_and_documents_hold_no_dates_or_tracker_numbers():
    found = [f"{name}:{number}: {line.strip()}"
             for name, path in tracked_text_files()
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if DIARY.search(line)]
    assert found == [], "state the reason or the bound instead (dates belong in results/):\n" + "\n".join(found)
