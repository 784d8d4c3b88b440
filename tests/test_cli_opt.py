"""`odc opt`: named passes on a model or on text IR, as mlir-opt runs them. Every pass's output
on every model parses back and verifies; bad pass lists, options and IR are clean errors.
What each pass does is checked by the FileCheck tests in tests/ir/passes/."""
import io
import subprocess
import sys
from pathlib import Path

import pytest

import odc
from odc.cli import main, parse_pipeline
from odc.errors import OdcError
from odc.ir import passes
from odc.ir.printer import print_graph

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "models").glob("*.od"))
ODC = [sys.executable, "-m", "odc.cli"]
BROKEN = "func @M(\n    input %x: f32[N, 4],\n) {\n  %0 = relu(%x) : f32[N, 3]\n  return %0 as logits\n}\n"


def opt(capsys, monkeypatch, *argv, stdin: str | None = None) -> tuple[int, str, str]:
    """`odc opt ARGV` in this process: (exit code, stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        code = main(["opt", *argv])
    except SystemExit as e:  # argparse refuses a flag
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch):
    monkeypatch.chdir(ROOT)  # locations print as models/NAME.od:LINE:COL


def test_list_passes_shows_every_pass_and_its_summary(capsys, monkeypatch):
    code, out, _ = opt(capsys, monkeypatch, "--list-passes")
    lines = out.splitlines()
    assert code == 0 and len(lines) == len(passes.REGISTRY)
    for line, (name, p) in zip(lines, passes.REGISTRY.items()):
        assert line.split()[0] == name and line.endswith("  " + p.summary)
    assert "verify" in out


@pytest.mark.parametrize("pipeline", [*passes.REGISTRY, "shape-infer{N=4},plan-memory",
                                      "shape-infer{N=4},optimizer,fuse,plan-memory"])
@pytest.mark.parametrize("model", MODELS)
def test_every_pass_output_parses_back_and_verifies(model, pipeline, capsys, monkeypatch):
    code, text, err = opt(capsys, monkeypatch, model, "-p", pipeline)
    assert code == 0, err
    code, again, err = opt(capsys, monkeypatch, "-", "-p", "verify", stdin=text)
    assert code == 0, err
    assert again == text  # print -> parse -> print is the identity
    if "{N=4}" in pipeline:  # concrete sizes: memory planning places every stored value
        assert "arena=" in text and ") attributes {arena_bytes=" in text


@pytest.mark.parametrize("model", MODELS)
def test_ir_between_passes_parses_back_function_by_function(model, capsys, monkeypatch):
    code, out, err = opt(capsys, monkeypatch, model, "-p", ",".join(passes.ORDER), "--print-between-passes")
    assert code == 0, err
    chunks = out.split("// after ")[1:]
    assert [c.split("\n", 1)[0] for c in chunks][-len(passes.ORDER):] == list(passes.ORDER)
    for chunk in chunks:
        text = chunk.split("\n", 1)[1]
        code, again, err = opt(capsys, monkeypatch, "-", stdin=text)
        assert code == 0 and again == text, err


def test_a_pipeline_of_processes_as_in_a_shell():
    first = subprocess.run(ODC + ["opt", "models/lenet5.od", "-p", "autodiff"], cwd=ROOT, capture_output=True,
                           text=True)
    assert first.returncode == 0 and "as grad.conv2d1.weight" in first.stdout
    second = subprocess.run(ODC + ["opt", "-", "-p", "verify"], cwd=ROOT, input=first.stdout, capture_output=True,
                            text=True)
    assert second.returncode == 0 and second.stdout == first.stdout, second.stderr


def test_without_passes_the_input_is_printed(capsys, monkeypatch):
    code, out, _ = opt(capsys, monkeypatch, "models/lenet5.od")
    assert code == 0 and out == print_graph(odc.load("models/lenet5.od").graph)
    code, again, _ = opt(capsys, monkeypatch, "-", stdin="// a comment first\n\n" + out)
    assert code == 0 and again == out


def test_an_od_program_on_stdin(capsys, monkeypatch):
    code, out, err = opt(capsys, monkeypatch, "-", "-p", "shape-infer{N=3}",
                         stdin=(ROOT / "models" / "mlp.od").read_text())
    assert code == 0, err
    assert "input %image: f32[3, 1, 28, 28]  loc(\"<stdin>\":4:5)" in out


def test_model_picks_one_of_several(tmp_path, capsys, monkeypatch):
    path = tmp_path / "two.od"
    path.write_text("model A():\n    input x: f32[N, 2]\n    return dense(x, 3)\n\n"
                    "model B():\n    input x: f32[N, 2]\n    return dense(x, 4)\n")
    code, out, _ = opt(capsys, monkeypatch, str(path), "--model", "B")
    assert code == 0 and out.startswith("func @B(") and "f32[N, 4]" in out


def test_the_train_block_gives_the_defaults_and_options_override_them(capsys, monkeypatch):
    # LeNet-5 trains with sgd(lr=0.01, momentum=0.9); the rate is an input of the step
    _, out, err = opt(capsys, monkeypatch, "models/lenet5.od", "-p", "optimizer")
    assert "momentum_buffer" in out and "value=0.9}" in out and "note: optimizer requires autodiff" in err
    assert "input %optimizer.lr: f32[]" in out
    _, out, _ = opt(capsys, monkeypatch, "models/lenet5.od", "-p", "optimizer{weight_decay=0.25}")
    assert "momentum_buffer" in out and "value=0.9}" in out and "value=0.25}" in out  # the recipe's momentum stays
    _, out, _ = opt(capsys, monkeypatch, "models/lenet5.od", "-p", "optimizer{name=adam,lr=0.001}")
    assert "momentum_buffer" not in out and "%adam.beta1_power" in out  # another optimizer: its own defaults
    _, out, _ = opt(capsys, monkeypatch, "models/lenet5.od", "-p", "autodiff{loss=mse}")
    assert "mse(" in out and "cross_entropy(" not in out


def test_text_ir_has_no_train_block(capsys, monkeypatch):
    _, text, _ = opt(capsys, monkeypatch, "models/lenet5.od")
    _, out, _ = opt(capsys, monkeypatch, "-", "-p", "optimizer", stdin=text)
    assert "cross_entropy(" in out and "state %" not in out and "mul(" in out  # plain sgd: p - lr * grad


def test_verify_each(capsys, monkeypatch):
    code, out, _ = opt(capsys, monkeypatch, "models/vgg_letters.od", "-p", "optimizer,fuse", "--verify-each")
    assert code == 0 and "fuse=" in out


def test_a_pass_named_twice_takes_its_options_each_time(capsys, monkeypatch):
    code, out, err = opt(capsys, monkeypatch, "models/mlp.od", "-p", "shape-infer{N=2},dce,shape-infer")
    assert code == 0 and "f32[2, 1, 28, 28]" in out, err


@pytest.mark.parametrize("text, pipeline", [
    ("dce", [("dce", {})]),
    (" shape-infer{N=32} , fuse ", [("shape-infer", {"N": 32}), ("fuse", {})]),
    ("optimizer{name=adam, lr=0.001,nesterov=true}", [("optimizer", {"name": "adam", "lr": 0.001, "nesterov": True})]),
    ("autodiff{loss=mse,target=float},verify{}", [("autodiff", {"loss": "mse", "target": "float"}), ("verify", {})]),
    ("optimizer{lr=1e-3,momentum=0}", [("optimizer", {"lr": 0.001, "momentum": 0})]),
    ("", []),
])
def test_pass_lists_read_as_mlir_writes_them(text, pipeline):
    assert parse_pipeline(text) == pipeline


@pytest.mark.parametrize("argv, message", [
    (["models/lenet5.od", "-p", "frobnicate"], "error: no pass named 'frobnicate'; the passes are shape-infer, "),
    (["models/lenet5.od", "-p", "dce{x=1}"], "error: pass dce has no option 'x'; its options are none"),
    (["models/lenet5.od", "-p", "autodiff{los=mse}"], "error: pass autodiff has no option 'los'"),
    (["models/lenet5.od", "-p", "autodiff{loss=hinge}"], "error: unknown loss 'hinge'"),
    (["models/lenet5.od", "-p", "optimizer{name=adam,lr=-1}"], "error: adam: lr must be a number > 0, got -1"),
    (["models/lenet5.od", "-p", "optimizer{name=adam,lr=0.01,momentum=0.9}"], "error: adam has no option momentum"),
    (["models/lenet5.od", "-p", "shape-infer{N=0}"], "the size of N must be a positive integer, got 0"),
    (["models/lenet5.od", "-p", "shape-infer{N=big}"], "the size of N must be a positive integer, got 'big'"),
    (["models/lenet5.od", "-p", "dce{"], "error: cannot read the pass list 'dce{' at '{'"),
    (["models/lenet5.od", "-p", "dce,,fuse"], "error: cannot read the pass list 'dce,,fuse' at ',fuse'"),
    (["models/lenet5.od", "-p", "dce fuse"], "error: cannot read the pass list 'dce fuse' at 'fuse'"),
    (["models/lenet5.od", "-p", "dce,"], "error: cannot read the pass list 'dce,' at its end"),
    (["models/lenet5.od", "-p", "shape-infer{N}"], "error: cannot read the option 'N' of pass shape-infer"),
    (["models/lenet5.od", "-p", "shape-infer{N=1,N=2}"], "error: pass shape-infer: option N is given twice"),
    (["models/nothere.od", "-p", "dce"], "models/nothere.od: error: no such file"),
    (["models", "-p", "dce"], "models: error: cannot read"),
    (["models/lenet5.od", "--model", "Nope"], "models/lenet5.od: error: no model 'Nope'"),
    ([], "error: odc opt needs a FILE"),
    (["models/lenet5.od", "--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_passes_options_and_files_are_clean_errors(argv, message, capsys, monkeypatch):
    code, out, err = opt(capsys, monkeypatch, *argv)
    assert code == 1 and message in err and out == ""


@pytest.mark.parametrize("text, message", [
    (BROKEN, "<stdin>: error: IR of @M is malformed:\n  %"),
    (BROKEN, " (relu): type f32[N, 3] but its operands give f32[N, 4]"),
    (BROKEN.replace("relu(%x) : f32[N, 3]", "relu() : f32[N, 4]"),
     "malformed:\n  %0 (relu): relu does not take 0 operands with no attributes"),
    (BROKEN.replace("relu(%x) : f32[N, 3]", "reshape(%x) : f32[N, 4]"), "malformed:\n  %0 (reshape): no attribute shape"),
    (BROKEN.replace("relu", "frobnicate"), "(frobnicate): unknown op"),
    (BROKEN.replace(") {", ")) {"), "<stdin>:3:2: error: IR text: unexpected ')'"),
    (BROKEN.replace("%x) :", "%y) :"), "<stdin>:4:13: error: IR text: value %y used before it is defined"),
    (BROKEN.replace("f32[N, 4]", "f33[N, 4]"), "<stdin>:2:15: error: IR text: unknown element type 'f33'"),
    ("func @M(\n", "<stdin>:1:9: error: IR text: the text ends early"),
])
def test_invalid_ir_is_a_clean_error(text, message, capsys, monkeypatch):
    for pipeline in ("verify", "dce"):
        code, out, err = opt(capsys, monkeypatch, "-", "-p", pipeline, stdin=text)
        assert code == 1 and message in err and out == "", err


def test_model_is_for_od_files(tmp_path, capsys, monkeypatch):
    path = tmp_path / "m.ir"
    path.write_text(print_graph(odc.load("models/mlp.od").graph))
    code, _, err = opt(capsys, monkeypatch, str(path), "--model", "MLP")
    assert code == 1 and "--model picks a model of an .od file" in err


def test_errors_in_a_subprocess_have_no_traceback():
    for argv, stdin in [(["models/lenet5.od", "-p", "nope"], None), (["-", "-p", "verify"], BROKEN),
                        (["-"], "func @M(")]:
        r = subprocess.run(ODC + ["opt", *argv], cwd=ROOT, input=stdin or "", capture_output=True, text=True)
        assert r.returncode == 1 and "error:" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_parse_pipeline_checks_the_pass_names():
    with pytest.raises(OdcError, match="no pass named 'dc'"):
        parse_pipeline("dce,dc")
