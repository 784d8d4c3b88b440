"""The `odc` command itself: version, flag errors, and output piped into a reader that stops early."""
import subprocess
import sys

import odc

ODC = [sys.executable, "-m", "odc.cli"]


def test_version():
    out = subprocess.run(ODC + ["--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"odc {odc.__version__}"


def test_unknown_flag_is_exit_1_with_a_hint():
    out = subprocess.run(ODC + ["check", "models/lenet5.od", "--frobnicate"], capture_output=True, text=True)
    assert out.returncode == 1
    assert "unrecognized arguments: --frobnicate" in out.stderr and "hint:" in out.stderr
    assert "Traceback" not in out.stderr


def test_output_into_a_closed_pipe_is_not_a_traceback():
    # the reader goes away before odc writes anything, as `odc dump-ir ... | head -n 0` does
    proc = subprocess.Popen(ODC + ["dump-ir", "models/lenet5.od", "--after", "all"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 0
    assert "Traceback" not in err and "BrokenPipe" not in err, err
