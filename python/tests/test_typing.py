"""The package's type stubs (``py.typed``, ``.pyi`` beside each module): ``mypy --strict`` passes
on annotated scripts and on the original's examples, catches mistakes, and ``stubtest`` finds
the stubs consistent with the package as it runs."""

import os
import re
import subprocess
import sys

from conftest import EXAMPLES, HERE

TYPED = HERE / "typed"


def mypy(*args, cwd=HERE):
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_annotated_scripts_pass_mypy_strict():
    checked = mypy(
        TYPED / "multicore_typed.py", TYPED / "distributed_typed.py", TYPED / "executor_typed.py"
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_annotated_multicore_script_runs():
    ran = subprocess.run(
        [sys.executable, str(TYPED / "multicore_typed.py")], capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    assert "[0, 1, 4]" in ran.stdout, ran.stdout


def test_the_annotated_executor_script_runs():
    ran = subprocess.run(
        [sys.executable, str(TYPED / "executor_typed.py")], capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    assert "49 2401 [0, 1, 4, 9, 16, 25, 36, 49, 64, 81] 2 2" in ran.stdout, ran.stdout
    assert "25" in ran.stdout.splitlines()[-1], ran.stdout


def test_the_originals_examples_pass_mypy_strict_but_for_their_own_unannotated_functions():
    for folder in (EXAMPLES / "multicore", EXAMPLES / "distributed"):
        scripts = sorted(p.name for p in folder.glob("*.py"))
        strict = mypy(*scripts, cwd=folder)
        # The original annotates none of its functions: that is all --strict finds.
        errors = [line for line in strict.stdout.splitlines() if ": error:" in line]
        assert errors, strict.stdout
        assert all(line.endswith("[no-untyped-def]") for line in errors), strict.stdout
        allowed = mypy("--allow-untyped-defs", *scripts, cwd=folder)
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_the_stubs_catch_mistakes():
    checked = mypy(TYPED / "mistyped.py")
    assert checked.returncode == 1, checked.stdout
    marked = [
        i
        for i, line in enumerate((TYPED / "mistyped.py").read_text().splitlines(), 1)
        if "# error:" in line
    ]
    found = sorted({int(m) for m in re.findall(r"mistyped\.py:(\d+): error:", checked.stdout)})
    assert found == marked, checked.stdout


def test_the_stubs_agree_with_the_package_as_it_runs():
    checked = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "blitzen", "--ignore-missing-stub"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
