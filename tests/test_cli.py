"""The `odc` command itself: version, flag errors, and output piped into a reader that stops early."""
import subprocess
import sys
from pathlib import Path

import pytest

import odc
from odc.cli import build_parser, main
from odc.frontend.recipe import LIMITS

ODC = [sys.executable, "-m", "odc.cli"]
MODEL = str(Path(__file__).resolve().parents[1] / "models" / "lenet5.od")


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


# ---------------------------------------------------------------------------- flag values

def run_main(argv, capsys):
    """`odc ARGV` in this process: (exit code, stderr)."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejects a bad flag before a command runs
        code = e.code
    return code, capsys.readouterr().err


FLAG_LIMITS = [("compile-and-train", "--epochs", "epochs"), ("compile-and-train", "--batch", "batch"),
               ("compile-and-train", "--seed", "seed"), ("dump-ir", "--batch", "batch"),
               ("bench", "--batch", "batch"), ("gradcheck", "--seed", "seed")]


@pytest.mark.parametrize("command, flag, key", FLAG_LIMITS)
def test_count_flags_take_the_train_block_limits(command, flag, key, capsys):
    """A flag accepts what the train block accepts for its key and nothing beyond it."""
    lo, hi = LIMITS[key]
    for value in (lo, hi):
        assert getattr(build_parser().parse_args([command, "m.od", flag, str(value)]), key) in (value, [value])
    for value in (lo - 1, hi + 1, 2**64, "1e23", "3.5"):
        code, err = run_main([command, "m.od", flag, str(value)], capsys)
        assert code == 1 and f"argument {flag}: expected" in err and f"from {lo} to {hi:,}" in err
        assert "hint:" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e400", "fast"])
def test_lr_flag_must_be_positive_and_finite(value, capsys):
    code, err = run_main(["compile-and-train", "m.od", "--lr", value], capsys)
    assert code == 1 and "argument --lr: expected a learning rate" in err and "hint:" in err


@pytest.mark.parametrize("argv", [["compile-and-train", MODEL, "--out", ""],
                                  ["compile-and-train", MODEL, "--out", " "],
                                  ["compile-and-train", MODEL, "--data", ""],
                                  ["compile-and-train", MODEL, "--resume", ""],
                                  ["eval", "run", "--data", ""],
                                  ["data", "list", "--data", ""],
                                  ["data", "fetch", "emnist", "--dest", ""]])
def test_an_empty_folder_name_is_refused(argv, tmp_path, monkeypatch, capsys):
    """An empty name would mean the current folder (--out) or be ignored (--data, --dest)."""
    monkeypatch.chdir(tmp_path)
    code, err = run_main(argv, capsys)
    assert code == 1 and "expected a folder name" in err and "hint:" in err
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder


@pytest.mark.parametrize("argv", [["compile-and-train", MODEL, "--out", "{tmp}/run"], ["eval", "{tmp}/run"],
                                  ["predict", "{tmp}/run", "{tmp}/a.png"]])
@pytest.mark.parametrize("threads", ["0", "-2", "many"])
def test_bad_odc_num_threads_is_refused_before_any_work(argv, threads, tmp_path, monkeypatch, capsys):
    import odc.runtime.train

    def must_not_run(*args, **kwargs):
        raise AssertionError("the data set was loaded before ODC_NUM_THREADS was checked")

    monkeypatch.setattr(odc.runtime.train, "load_dataset", must_not_run)
    monkeypatch.setenv("ODC_NUM_THREADS", threads)
    code, err = run_main([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 1 and f"ODC_NUM_THREADS must be a positive integer, got {threads!r}" in err
    assert "hint:" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
