"""ONNX export (`odc export`, `odc.export.export_onnx`) against ONNX Runtime, an independent
implementation of every ONNX op: for every model of models/ and for programs that use every op
of dsl.md v2, with random parameters and running statistics, the logits ONNX Runtime computes
from the exported file equal those of odc's compiled `forward` to 1e-4 relative, at several batch
sizes, and `onnx.checker` (full check) accepts the file. Also the file's interface (input name,
symbolic batch, `logits`, initializers, opset), the recipe's normalize step baked in, and each
error: an op without a mapping, a bad opset, a missing onnx package, and through the command
line a missing, truncated or foreign checkpoint and an output that cannot be written."""
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import safetensors
import safetensors.numpy

import odc
from odc.errors import CompileError, OdcError
from odc.cli import main
from odc.export import MIN_OPSET, export_onnx, inference_graph, to_onnx
from odc.ir import interp
from odc.ir.textparse import parse_graph
from odc.program import Program
from tests.oracle import rel_err
from tests.test_cli import run_main

MODELS = sorted((Path(__file__).parent.parent / "models").glob("*.od"))
NEWER_OPSET = 21  # reductions take their axes as an input from opset 18

# every elementwise op, each on its own columns of the logits; arithmetic with constants,
# batchnorm1d, layernorm, dropout, softmax, log_softmax, a reduction and reshape with -1
ELEMENTWISE = """
model Elementwise():
    input image: f32[N, 2, 3, 4]
    x = batchnorm1d(dense(flatten(image), 8), momentum=0.3, eps=0.001)
    a = concat([relu(x), tanh(x), sigmoid(x), exp(x * 0.2), log(abs(x) + 1), sqrt(abs(x)), neg(x), erf(x)])
    b = concat([leaky_relu(x, slope=0.2), elu(x, alpha=0.7), selu(x), gelu(x), gelu(x, approximate="tanh"),
                silu(x), softplus(x * 30) / 30, mish(x)])
    c = concat([relu6(x * 8), hardtanh(x, lo=-0.5, hi=2), hardsigmoid(x * 4), hardswish(x * 4),
                clip(x, -0.3, 0.4), maximum(x, 0.5 - x), minimum(x, x * x - 1), pow(x, 2), pow(abs(x) + 1, 0.5),
                x / (abs(x) + 1), x - 1 + 2 * x])
    y = dropout(layernorm(dense(concat([a, b, c]), 8), eps=0.01), 0.3)
    return concat([a, b, c, softmax(y), log_softmax(y, axis=1), sum(reshape(y, [N, 4, -1]), axis=2)])
"""

# convolutions (stride, asymmetric and "same" padding, dilation, groups, no bias), batchnorm2d,
# pooling with padding, adaptive pooling (overlapping windows, divisible, [1, 1]), global
# pooling, concat, pad that crops, slice with a step, transpose, max, flatten
CONVOLUTIONS = """
model Convolutions(classes = 5):
    input image: f32[N, 4, 11, 10]
    a = relu(conv2d(image, out=6, kernel=3, stride=2, pad=1))
    b = conv2d(image, out=4, kernel=[3, 2], dilation=[2, 3], groups=2, pad="same")
    c = conv2d(image, out=8, kernel=3, groups=4, bias=false, pad=[1, 0], stride=[1, 2])
    b = batchnorm2d(b, momentum=0.2, eps=0.01)
    p = maxpool2d(b, 3, stride=2, pad=1)
    q = avgpool2d(c, [3, 2], stride=[2, 1], pad=[1, 1])
    r = adaptive_avgpool2d(q, [4, 5])
    s = adaptive_avgpool2d(p, [3, 5])
    t = concat([a, adaptive_avgpool2d(p, [6, 5])], axis=1)
    u = pad(t, [1, -1, 2, 0], value=0.25)
    v = slice(u, 2, 1, -1, step=2)
    w = transpose(v, [0, 1, 3, 2])
    g = global_avgpool2d(w) + mean(adaptive_avgpool2d(w, 1), axis=[2, 3])
    m = max(flatten(r), axis=1)
    h = concat([g, flatten(s), reshape(r, [N, -1]), reshape(m, [N, 1])], axis=-1)
    return dense(h, classes)
"""

# dense on [N, T, F], batchnorm1d on [N, C, L], layernorm on 3 axes, matmul with broadcast batch
# axes (the batch symbol on axis 1), softmax and log_softmax on other axes, dense without bias
SEQUENCES = """
model Sequences(classes = 3):
    input image: f32[N, 6, 5]
    x = dense(image, 7)
    x = batchnorm1d(x, momentum=0.5)
    x = layernorm(x, eps=0.001)
    param w: f32[2, 1, 7, 4] = normal(0.3)
    y = sum(x @ w, axis=0)
    a = softmax(y @ transpose(y, [0, 2, 1]), axis=1)
    z = matmul(a, log_softmax(y, axis=-2))
    z = dense(z, 2, bias=false)
    return dense(reshape(z, [N, 12]), classes)
"""
PROGRAMS = {"elementwise": ELEMENTWISE, "convolutions": CONVOLUTIONS, "sequences": SEQUENCES}


def randomized(model, seed: int = 0):
    """`model` with every parameter moved off its initial value and running statistics that are
    not PyTorch's initial zeros and ones, so that each term of the graph matters."""
    rng = np.random.default_rng(seed)
    for v in model.params.values():
        v += rng.normal(0, 0.2, v.shape).astype(v.dtype)
    for k, v in model.state.items():
        if k.endswith(".running_mean"):
            v[...] = rng.normal(0, 0.5, v.shape)
        elif k.endswith(".running_var"):
            v[...] = rng.uniform(0.3, 2, v.shape)
    return model


def compiled(source: str, tmp_path, name: str = "m.od"):
    path = tmp_path / name
    path.write_text(source)
    return randomized(odc.load(path).compile())


def inputs(model, batch: int, seed: int = 1, scale: float = 1) -> np.ndarray:
    """A batch of what odc's forward takes: uint8 pixels (a recipe with normalize or augment), or
    floats in [0, 1] (times `scale`)."""
    image = inference_graph(model.program).inputs()[0].type
    rng = np.random.default_rng(seed)
    if image.dtype == "u8":
        return rng.integers(0, 256, (batch, *image.shape[1:]), dtype=np.uint8)
    return rng.random((batch, *image.shape[1:]), dtype=np.float32) * np.float32(scale)


def runtime(path) -> onnxruntime.InferenceSession:
    onnx.checker.check_model(str(path), full_check=True)
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_same_logits(model, path, batches=(1, 8, 3), scale: float = 1, feed=lambda x: x, forward=None) -> None:
    """ONNX Runtime on the file at `path` given `feed(x)` against odc's forward given x (or
    `forward(x)`), x a batch of what odc's forward takes: to 1e-4 relative, and each column to
    1e-4 of its own magnitude (or absolutely, where that is below 1), so that a term of small
    values counts too."""
    session = runtime(path)
    name = session.get_inputs()[0].name
    for batch in batches:
        x = inputs(model, batch, seed=batch, scale=scale)
        logits, = session.run(["logits"], {name: feed(x)})
        expected = (forward or model.forward)(x)
        assert logits.shape == expected.shape
        assert rel_err(logits, expected) <= 1e-4, f"batch {batch}"
        size = np.maximum(np.abs(expected).max(axis=0), 1)
        assert (np.abs(logits - expected) <= 1e-4 * size).all(), f"batch {batch}"


# -- the numbers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_every_model_of_the_zoo_gives_odcs_logits(path, tmp_path):
    model = randomized(odc.load(path).compile())
    export_onnx(model, tmp_path / "model.onnx")
    assert_same_logits(model, tmp_path / "model.onnx", batches=(8, 1))


@pytest.fixture(scope="module", params=list(PROGRAMS))
def program_model(request, tmp_path_factory):
    return compiled(PROGRAMS[request.param], tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("opset", [MIN_OPSET, NEWER_OPSET])
def test_programs_using_every_op_give_odcs_logits(program_model, opset, tmp_path):
    export_onnx(program_model, tmp_path / "model.onnx", opset=opset)
    assert_same_logits(program_model, tmp_path / "model.onnx")


def test_large_inputs_through_every_activation(tmp_path):
    """Inputs far from 0 reach the saturated ends (softplus above its threshold, the clips),
    where formulas that are equal on paper differ in floating point."""
    model = compiled(ELEMENTWISE, tmp_path)
    export_onnx(model, tmp_path / "model.onnx")
    assert_same_logits(model, tmp_path / "model.onnx", batches=(8,), scale=20)


# -- the file -----------------------------------------------------------------------------------------
def test_the_file_has_odcs_interface(tmp_path):
    model = randomized(odc.load(Path(__file__).parent.parent / "models" / "lenet5.od").compile())
    export_onnx(model, tmp_path / "lenet5.onnx")
    proto = onnx.load(str(tmp_path / "lenet5.onnx"))
    image, = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and dims == ["N", 1, 28, 28]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    logits, = proto.graph.output
    assert logits.name == "logits"
    assert [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim] == ["N", 47]
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", MIN_OPSET)]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for name, value in model.params.items():  # under their names, in their layouts
        np.testing.assert_array_equal(weights[name], value)
    assert proto.producer_name == "odc" and proto.producer_version == odc.__version__
    assert "input image: f32[N, 1, 28, 28]" in proto.doc_string and "[0, 1]" in proto.doc_string


def test_running_statistics_are_initializers_and_dropout_is_gone(tmp_path):
    model = compiled(ELEMENTWISE, tmp_path)
    proto = to_onnx(model)
    odc_names = {t.name for t in proto.graph.initializer if not t.name.startswith("/")}  # not the exporter's
    assert odc_names == set(model.params) | {"batchnorm1d1.running_mean", "batchnorm1d1.running_var"}
    assert {n.op_type for n in proto.graph.node} & {"BatchNormalization", "Dropout"} == set()


def test_the_output_is_written_atomically(tmp_path):
    """An old file stays whole until the new one is complete; no temporary file is left."""
    model = compiled(SEQUENCES, tmp_path)
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    out.write_bytes(b"old")
    export_onnx(model, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]
    runtime(out)


# -- normalize ----------------------------------------------------------------------------------------
NORMALIZE = {"mean": [0.49, 0.48, 0.45, 0.5], "std": [0.25, 0.24, 0.26, 0.3]}


def test_a_recipe_that_normalizes_gives_a_model_of_uint8_pixels(tmp_path):
    """As odc's forward: the pixels scaled to [0, 1] and normalised inside; with normalize, the
    model takes the scaled images, and equals the plain network (no normalize in its recipe, the
    same weights) on images that numpy normalises."""
    path = tmp_path / "c.od"
    path.write_text(CONVOLUTIONS)
    prog = odc.load(path)
    prog.recipe = prog.graph.meta["recipe"] = {**prog.recipe, "normalize": NORMALIZE}  # as a train block sets it
    model = randomized(prog.compile())
    pixels = export_onnx(model, tmp_path / "pixels.onnx")
    assert pixels.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert_same_logits(model, tmp_path / "pixels.onnx")
    scaled = export_onnx(model, tmp_path / "scaled.onnx", normalize=True)
    assert scaled.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert_same_logits(model, tmp_path / "scaled.onnx", feed=lambda x: x.astype(np.float32) / np.float32(255))

    plain = compiled(CONVOLUTIONS, tmp_path)
    for have, want in ((plain.params, model.params), (plain.state, model.state)):
        for k, v in have.items():
            v[...] = want[k]
    mean, std = (np.asarray(NORMALIZE[k], np.float32).reshape(1, 4, 1, 1) for k in ("mean", "std"))
    assert_same_logits(model, tmp_path / "scaled.onnx", feed=lambda x: x.astype(np.float32) / np.float32(255),
                       forward=lambda x: plain.forward((x.astype(np.float32) / np.float32(255) - mean) / std))
    assert pixels.doc_string == ("input image: u8[N, 4, 11, 10], pixels from 0 to 255, which it scales to [0, 1] "
                                 "and normalises per channel with mean [0.49, 0.48, 0.45, 0.5] and std "
                                 "[0.25, 0.24, 0.26, 0.3]; output logits: f32[N, 5]")
    assert scaled.doc_string.startswith("input image: f32[N, 4, 11, 10], images scaled to [0, 1], which it normalises")


def test_normalize_without_a_normalize_step_is_an_error(tmp_path):
    with pytest.raises(OdcError, match="the model does not normalize its input") as err:
        to_onnx(compiled(SEQUENCES, tmp_path), normalize=True)
    assert "hint: export without --normalize" in str(err.value)


# -- errors -------------------------------------------------------------------------------------------
UNMAPPED = """func @Signs(
    input %image: f32[N, 4]  loc("signs.od":2:5),
    param %w: f32[3, 4] {init=ones}  loc("signs.od":3:5),
) {
  %0 = sign(%image) : f32[N, 4]  loc("signs.od":4:9)
  %1 = linear(%0, %w) : f32[N, 3]  loc("signs.od":5:12)
  return %1 as logits
}
"""


def test_an_op_without_a_mapping_is_an_error_at_its_line():
    """`sign` (made by derivative rules, never by the language) has no mapping: refused, named."""
    model = Program(parse_graph(UNMAPPED, "signs.ir")).compile(executor=interp.compile_graph)
    with pytest.raises(CompileError, match=r"signs.od:4:9: error: ONNX export: the op sign has no ONNX mapping"):
        to_onnx(model)


def test_a_reshape_with_two_run_time_sizes_is_an_error(tmp_path):
    source = ("model Square():\n    input image: f32[N, 4]\n    s = image @ transpose(image, [1, 0])\n"
              "    r = reshape(s, [N, N, 1])\n    return dense(mean(r, axis=1), 3)\n")
    with pytest.raises(CompileError, match=r"m.od:4:9: error: ONNX export: a reshape to f32\[N, N, 1\]"):
        to_onnx(compiled(source, tmp_path))


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, onnx.defs.onnx_opset_version() + 1])
def test_an_opset_odc_cannot_write_is_an_error(opset, tmp_path):
    with pytest.raises(OdcError, match=f"cannot export ONNX opset {opset}: odc exports opsets {MIN_OPSET} to"):
        to_onnx(compiled(SEQUENCES, tmp_path), opset=opset)


# -- the command line ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of the convolution program, written by `compile()` + `save()`."""
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / "c.od"
    path.write_text(CONVOLUTIONS)
    randomized(odc.load(path).compile()).save(folder / "c.safetensors")
    return folder / "c.safetensors"


def test_odc_export_writes_what_odc_computes(saved, tmp_path, capsys):
    out = tmp_path / "c.onnx"
    code, err = run_main(["export", str(saved), "-o", str(out), "--opset", str(NEWER_OPSET)], capsys)
    assert (code, err) == (0, "")
    assert_same_logits(odc.load_checkpoint(saved), out, batches=(1, 8))
    assert onnx.load(str(out)).opset_import[0].version == NEWER_OPSET


def test_odc_export_prints_what_the_model_takes(saved, tmp_path, capsys):
    out = tmp_path / "c.onnx"
    assert main(["export", str(saved), "-o", str(out)]) == 0
    assert capsys.readouterr().out == (f"wrote {out} (ONNX opset {MIN_OPSET})\ninput image: f32[N, 4, 11, 10], "
                                       f"images scaled to [0, 1]; output logits: f32[N, 5]\n")


def damaged(saved: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Checkpoints odc cannot read, with the message each gives."""
    data = saved.read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[:len(data) // 2])
    with safetensors.safe_open(str(saved), framework="numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    newer = safetensors.numpy.save(tensors, metadata=meta | {"format": "odc-checkpoint/99", "odc_version": "99.0"})
    (folder / "newer.safetensors").write_bytes(newer)
    return {"missing": (folder / "missing.safetensors", "missing.safetensors: no such file"),
            "truncated": (folder / "truncated.safetensors", "truncated.safetensors: error: cannot read the checkpoint"),
            "newer": (folder / "newer.safetensors", "newer.safetensors: error: not an odc checkpoint")}


@pytest.mark.parametrize("case", ["missing", "truncated", "newer"])
def test_odc_export_of_a_checkpoint_it_cannot_read_is_exit_1(case, saved, tmp_path, capsys):
    path, message = damaged(saved, tmp_path)[case]
    code, err = run_main(["export", str(path), "-o", str(tmp_path / "m.onnx")], capsys)
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("flags, message", [
    (["--opset", "16"], "error: cannot export ONNX opset 16: odc exports opsets 17 to"),
    (["--opset", "seventeen"], "argument --opset: invalid int value: 'seventeen'"),
    (["-o", ""], "error: cannot write the ONNX model to '': it names no file"),
    (["-o", "no/such/folder/m.onnx"], "no/such/folder/m.onnx: error: cannot write the ONNX model"),
    (["--normalize"], "error: cannot put the recipe's normalize step into the ONNX model: the model does not"),
])
def test_odc_export_flag_errors_are_exit_1(flags, message, saved, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["export", str(saved), "-o", "m.onnx"] + flags, capsys)
    assert code == 1 and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_odc_export_without_onnx_says_how_to_install_it(saved, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails as if it were not installed
    code, err = run_main(["export", str(saved), "-o", str(tmp_path / "m.onnx")], capsys)
    assert code == 1 and "pip install 'odc[onnx]'" in err and "Traceback" not in err


def test_model_export_onnx_writes_what_forward_computes(tmp_path):
    model = randomized(odc.load(next(p for p in MODELS if p.name == "lenet5.od")).compile())
    proto = model.export_onnx(tmp_path / "m.onnx")
    assert proto.opset_import[0].version == MIN_OPSET
    assert_same_logits(model, tmp_path / "m.onnx")
