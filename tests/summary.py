"""The closing report of ./test.sh: the ten slowest tests, the failing ones by name, and the one
line `tests: N passed, M failed, K skipped`.

    python3 tests/summary.py [--junit FILE]... [--doctests LOG] [--skipped NAME]...

Each --junit names a JUnit XML report (cargo-nextest's, pytest's); --doctests the output of
`cargo test --doc`, whose `test NAME ... ok` lines count too; each --skipped a test that was not
run (an ignored test). Exits 1 when a test failed.
"""

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


class Case:
    def __init__(self, name, seconds, outcome):
        self.name = name
        self.seconds = seconds
        self.outcome = outcome  # "passed", "failed" or "skipped"


def junit_cases(path):
    """The test cases of one JUnit report: nextest names a case by binary and test, pytest by
    module and function."""
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        classname = case.get("classname", "")
        name = case.get("name", "?")
        full = f"{classname} {name}" if classname else name
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        yield Case(full, float(case.get("time") or 0), outcome)


DOCTEST = re.compile(r"^test (.+) \.\.\. (ok|FAILED|ignored)$")


def doctest_cases(path):
    """The doc tests that ran (`ignore` blocks are examples that are not meant to run)."""
    for line in Path(path).read_text(errors="replace").splitlines():
        match = DOCTEST.match(line.strip())
        if match and match.group(2) != "ignored":
            outcome = "passed" if match.group(2) == "ok" else "failed"
            yield Case(f"doc test {match.group(1)}", 0.0, outcome)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", action="append", default=[], help="a JUnit XML report")
    parser.add_argument("--doctests", help="the output of `cargo test --doc`")
    parser.add_argument("--skipped", action="append", default=[], help="a test not run")
    args = parser.parse_args()

    cases = []
    for report in args.junit:
        if Path(report).exists():
            cases.extend(junit_cases(report))
    if args.doctests and Path(args.doctests).exists():
        cases.extend(doctest_cases(args.doctests))
    cases.extend(Case(name, 0.0, "skipped") for name in args.skipped)

    timed = sorted((c for c in cases if c.outcome != "skipped"), key=lambda c: -c.seconds)
    if timed:
        print("\nslowest tests:")
        for case in timed[:10]:
            print(f"  {case.seconds:7.1f} s  {case.name}")
    skipped = [c for c in cases if c.outcome == "skipped"]
    if skipped:
        print("\nskipped (each says why in its output):")
        for case in skipped:
            print(f"  {case.name}")
    failed = [c for c in cases if c.outcome == "failed"]
    if failed:
        print("\nfailed:")
        for case in failed:
            print(f"  {case.name}")
    passed = sum(c.outcome == "passed" for c in cases)
    print(f"\ntests: {passed} passed, {len(failed)} failed, {len(skipped)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
