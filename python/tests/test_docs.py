"""Every Python example of the README, the book and the package's page runs: each ```python
block is a script of its own, run as `__main__` in a fresh interpreter, and must exit cleanly
and print what its comments say it prints."""

import re

import pytest

from conftest import HERE, run_script

ROOT = HERE.parent.parent
PAGES = [ROOT / "README.md", ROOT / "python" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples():
    found = []
    for page in PAGES:
        text = page.read_text()
        for n, block in enumerate(re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)):
            found.append(pytest.param(block, id=f"{page.relative_to(ROOT)}#{n + 1}"))
    return found


def test_the_pages_have_python_examples():
    assert len(examples()) >= 2


@pytest.mark.parametrize("source", examples())
def test_each_python_example_runs(source, tmp_path):
    p = run_script(source, tmp_path)
    assert p.returncode == 0, p.stderr
    # A line `print(...)  # X` says the script prints X.
    for expected in re.findall(r"print\(.*\)\s+# (.+)$", source, re.M):
        assert expected.strip() in p.stdout, f"{expected!r} not in {p.stdout!r}"
