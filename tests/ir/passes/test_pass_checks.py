"""Golden tests of every pass, FileCheck style: each `.ir` or `.od` file beside this one is an
input with the command to run and the lines its output must show.

    // RUN: odc opt %s -p fuse | filecheck %s
    // CHECK:      %0 = mul(%x, %x) {fuse=[[K:[0-9]+]]} : f32[N, 8]
    // CHECK-NEXT: %1 = exp(%0) {fuse=[[K]]} : f32[N, 8]

A `RUN:` line (in a `//` comment in IR, a `#` comment in an .od file) is `[not] odc opt ARGS
[2>&1] | filecheck %s [FLAGS]`: `odc opt` runs in this process, `%s` standing for the file;
`not` expects it to fail (exit 1) and `2>&1` checks its stderr too. Its output goes through the
`filecheck` package (a Python clone of LLVM's FileCheck) with the file as the check file, so
CHECK, CHECK-NEXT, CHECK-NOT, CHECK-SAME, `{{regex}}` and `[[VAR:regex]]` work as in LLVM.
A file may hold several RUN lines, each with its own `--check-prefix`.
"""
import io
import shlex
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from odc.cli import main
from odc.ir import passes

HERE = Path(__file__).parent
FILECHECK = Path(sys.executable).parent / "filecheck"  # installed with the test extra


def run_lines(path: Path) -> list[str]:
    return [line.split("RUN:", 1)[1].strip() for line in path.read_text().splitlines() if "RUN:" in line]


CASES = [(p, i, run) for p in sorted([*HERE.glob("*.ir"), *HERE.glob("*.od")])
         for i, run in enumerate(run_lines(p))]


def parse_run(run: str, path: Path) -> tuple[bool, list[str], bool, list[str]]:
    """(expect failure, odc opt's arguments, stderr too, filecheck's flags) of a RUN line."""
    words = [str(path) if w == "%s" else w for w in shlex.split(run)]
    left, bar, right = (words[:words.index("|")], "|", words[words.index("|") + 1:]) if "|" in words else (words, "", [])
    expect_failure = left[:1] == ["not"]
    left = left[expect_failure:]
    stderr = left[-1:] == ["2>&1"]
    left = left[:len(left) - stderr]
    if left[:2] != ["odc", "opt"] or not bar or right[:2] != ["filecheck", str(path)]:
        raise ValueError(f"{path.name}: RUN: {run!r} is not `[not] odc opt ARGS [2>&1] | filecheck %s [FLAGS]`")
    return expect_failure, left[2:], stderr, right[2:]


def filecheck(checks: Path, text: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(FILECHECK), *flags, str(checks)], input=text, capture_output=True, text=True)


@pytest.mark.parametrize("path, index, run", CASES, ids=[f"{p.name}:{i}" for p, i, _ in CASES])
def test_pass_output_matches_its_checks(path, index, run):
    expect_failure, args, stderr, flags = parse_run(run, path)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(out if stderr else err):
        try:
            code = main(["opt", *args])
        except SystemExit as e:  # a flag argparse refuses
            code = e.code
    assert code == (1 if expect_failure else 0), f"odc opt {' '.join(args)}: exit {code}\n{err.getvalue()}"
    assert "Traceback" not in out.getvalue() + err.getvalue()
    checked = filecheck(path, out.getvalue(), *flags)
    assert checked.returncode == 0, f"{path.name}: RUN: {run}\n{checked.stdout}{checked.stderr}"


def test_every_pass_has_checks():
    ran = {name for p, _, run in CASES for name in _passes_named(parse_run(run, p)[1])}
    assert ran >= set(passes.REGISTRY), f"passes without FileCheck tests: {set(passes.REGISTRY) - ran}"


def _passes_named(args: list[str]) -> set[str]:
    from odc.cli import parse_pipeline
    text = next((args[i + 1] for i, a in enumerate(args) if a in ("-p", "--passes")), "")
    return {name for name, _ in parse_pipeline(text)}


def test_a_wrong_check_fails(tmp_path):
    """The checks have teeth: filecheck fails on a line that is not there, a CHECK-NEXT that is
    not next, a CHECK-NOT that is there, and a check file without checks."""
    text = "func @M(\n  %0 = relu(%x)\n  %1 = exp(%0)\n}\n"
    good = tmp_path / "good.ir"
    good.write_text("// CHECK: relu(%x)\n// CHECK-NEXT: exp(%0)\n// CHECK-NOT: sqrt\n")
    assert filecheck(good, text).returncode == 0
    for wrong in ["// CHECK: tanh(%x)\n", "// CHECK: func\n// CHECK-NEXT: exp(%0)\n",
                  "// CHECK: relu\n// CHECK-NOT: exp\n", "// no checks at all\n"]:
        bad = tmp_path / "bad.ir"
        bad.write_text(wrong)
        assert filecheck(bad, text).returncode != 0, wrong
