"""The public Python API (`odc.load`, `Program`, `Model`) and the `dump-ir` and `gradcheck`
commands."""
import numpy as np
import pytest

import odc
from odc.cli import main
from odc.ir.graph import Graph, TensorType
from odc.ir.verify import IRVerificationError
from odc.ir import interp
from odc.runtime.gradcheck import gradcheck

SMALL = """
model Small(classes = 10):
    input image: f32[N, 1, 6, 6]
    param scale: f32[1] = ones
    param shift: f32[2, 1, 1] = zeros
    x = conv2d(image * scale, out=2, kernel=3)
    x = tanh(batchnorm2d(x + shift))
    x = dropout(flatten(x), 0.5)
    return dense(x, classes)

model Other():
    input image: f32[N, 3]
    return dense(image, 2)

train Small:
    data = idx("small")  # 6x6 images; the folder is never read here
    optimizer = sgd(lr=0.5)
    seed = 7
"""

NOTRAIN = """
model A():
    input image: f32[N, 3]
    return dense(image, 2)

model B():
    input image: f32[N, 3]
    return dense(image, 3)
"""


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.od"
    path.write_text(SMALL)
    return path


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 6, 6), dtype=np.float32), rng.integers(0, 10, n)


def test_load_picks_the_model_with_a_train_block(small):
    prog = odc.load(small)
    assert prog.name == "Small"
    assert prog.recipe["optimizer"] == {"name": "sgd", "lr": 0.5, "momentum": 0.0, "dampening": 0.0,
                                        "nesterov": False, "weight_decay": 0.0}
    assert odc.load(small, model="Other").name == "Other"


def test_load_needs_a_name_among_several_untrained_models(tmp_path):
    path = tmp_path / "two.od"
    path.write_text(NOTRAIN)
    with pytest.raises(odc.OdcError, match=r"2 models \(A, B\) and 0 train blocks; pick a model"):
        odc.load(path)
    prog = odc.load(path, model="B")
    assert prog.recipe["loss"] == "cross_entropy" and prog.recipe["optimizer"]["name"] == "sgd"


def test_ir_after_each_pass(small):
    prog = odc.load(small)
    after_autodiff = prog.ir(after="autodiff")
    assert "cross_entropy(" in after_autodiff and "as grad.conv2d1.weight" in after_autodiff
    assert "dropout(" in prog.ir(after="shape-infer") and "dropout(" not in after_autodiff
    assert "state %scale.momentum_buffer" not in prog.ir()  # momentum 0: plain sgd, no state
    dumps = prog.ir(after="all")
    headers = [line for line in dumps.splitlines() if line.startswith("// after ") or line.startswith("func ")]
    assert headers == ["// after shape-infer", "func @Small(", "// after dce", "func @Small(",
                       "// after augment", "func @Small(", "// after normalize", "func @Small(",
                       "// after inference", "func @Small(", "// after train-mode", "func @Small(",
                       "// after autodiff", "func @Small(",
                       "// after optimizer", "func @Small.train_step(",
                       "// after cse", "func @Small.train_step(",
                       "// after fuse", "func @Small.train_step(",
                       "// after plan-memory", "func @Small.train_step("]
    assert dumps.split("// after ")[5] == "inference\n" + prog.ir(after="inference")
    assert dumps.split("// after ")[6] == "train-mode\n" + prog.ir(after="train-mode")
    assert "dropout1.mask" in prog.ir(after="train-mode") and "cross_entropy(" not in prog.ir(after="train-mode")
    assert dumps.split("// after ")[8] == "optimizer\n" + prog.ir(after="optimizer")
    assert dumps.split("// after ")[11] == "plan-memory\n" + prog.ir()
    assert prog.ir(format="dot").startswith('digraph "Small.train_step" {')
    with pytest.raises(odc.OdcError, match="no pass named 'fusion'"):
        prog.ir(after="fusion")


def test_params_in_declaration_order_and_torch_layouts(small):
    model = odc.load(small).compile()
    assert [(k, v.shape, v.dtype) for k, v in model.params.items()] == [
        ("scale", (1,), np.float32), ("shift", (2, 1, 1), np.float32),
        ("conv2d1.weight", (2, 1, 3, 3), np.float32), ("conv2d1.bias", (2,), np.float32),
        ("batchnorm2d1.weight", (2,), np.float32), ("batchnorm2d1.bias", (2,), np.float32),
        ("dense1.weight", (10, 32), np.float32), ("dense1.bias", (10,), np.float32)]
    assert list(model.state) == ["batchnorm2d1.running_mean", "batchnorm2d1.running_var"]
    assert not model.state["batchnorm2d1.running_mean"].any() and (model.state["batchnorm2d1.running_var"] == 1).all()
    assert model.params["scale"][0] == 1 and not model.params["shift"].any()
    bound = 1 / np.sqrt(32)  # PyTorch's default for a Linear(32, 10)
    w = model.params["dense1.weight"]
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound


def test_params_depend_on_the_seed(small):
    prog = odc.load(small)
    a, b, c = prog.compile(), prog.compile(), prog.compile(seed=8)
    assert np.array_equal(a.params["dense1.weight"], b.params["dense1.weight"])
    assert not np.array_equal(a.params["dense1.weight"], c.params["dense1.weight"])


def small_forward_in_numpy(x, p, s):
    """Small's logits written out in numpy: inference mode (batchnorm with the running statistics,
    no dropout), convolution as a sum over the kernel's offsets."""
    x = x.astype(np.float64) * p["scale"]
    w, n = p["conv2d1.weight"], x.shape[2] - 2
    y = sum(np.einsum("nchw,oc->nohw", x[:, :, i:i + n, j:j + n], w[:, :, i, j]) for i in range(3) for j in range(3))
    y = y + p["conv2d1.bias"][:, None, None] + p["shift"]
    c = (slice(None), None, None)
    y = (y - s["batchnorm2d1.running_mean"][c]) / np.sqrt(s["batchnorm2d1.running_var"][c] + 1e-5)
    y = np.tanh(y * p["batchnorm2d1.weight"][c] + p["batchnorm2d1.bias"][c])
    return y.reshape(len(x), -1) @ p["dense1.weight"].T + p["dense1.bias"]


def test_forward_any_batch_size_matches_the_model_written_in_numpy(small):
    model = odc.load(small).compile()
    for n in (3, 7):  # two training steps move the batchnorm statistics away from 0 and 1
        model.train_step(*batch(n, seed=n))
    assert not np.allclose(model.state["batchnorm2d1.running_mean"], 0)
    for n in (1, 5):
        x, _ = batch(n)
        np.testing.assert_allclose(model.forward(x), small_forward_in_numpy(x, model.params, model.state),
                                   rtol=1e-5, atol=1e-6)


def test_executor_is_swappable_and_compiles_once_per_batch_size(small):
    compiled = []

    def executor(graph):
        compiled.append((graph.name, str(graph.inputs()[0].type)))
        return interp.compile_graph(graph)

    model = odc.load(small).compile(executor=executor)
    for n in (2, 3, 2, 3):
        model.forward(batch(n)[0])
    assert compiled == [("Small", "f32[2, 1, 6, 6]"), ("Small", "f32[3, 1, 6, 6]")]


def test_train_step_updates_params_and_lowers_the_loss(small):
    model = odc.load(small).compile()
    before = model.params["dense1.weight"].copy()
    x, y = batch(16)
    losses = [model.train_step(x, y) for _ in range(30)]
    assert list(model.params) == list(odc.load(small).compile().params)  # same names, same order
    assert not np.array_equal(model.params["dense1.weight"], before)
    assert losses[-1] < 0.5 * losses[0]


def test_loss_and_grads_draw_a_dropout_mask_per_call(small):
    model = odc.load(small).compile()
    x, y = batch(4)
    (l1, g1), (l2, g2) = model.loss_and_grads(x, y), model.loss_and_grads(x, y)
    assert l1 != l2 and not np.array_equal(g1["dense1.weight"], g2["dense1.weight"])
    assert np.array_equal(model.forward(x), model.forward(x))


def test_bad_inputs_are_user_errors(small):
    model = odc.load(small).compile()
    x, y = batch(3)
    with pytest.raises(odc.OdcError, match=r"input 'image' expects f32\[N, 1, 6, 6\], got an array of shape \[3, 6, 6\]"):
        model.forward(x[:, 0])
    with pytest.raises(odc.OdcError, match="label 10 is out of range for a model with 10 classes"):
        model.train_step(x, np.array([1, 10, 2]))
    with pytest.raises(odc.OdcError, match=r"input 'label' expects i32\[N\] with N=3"):
        model.loss_and_grads(x, y[:2])


def test_save_and_load_checkpoint(small, tmp_path):
    model = odc.load(small).compile()
    x, y = batch(4)
    model.train_step(x, y)
    model.save(tmp_path / "ckpt.safetensors")
    again = odc.load_checkpoint(tmp_path / "ckpt.safetensors")
    assert list(again.params) == list(model.params)
    np.testing.assert_array_equal(again.forward(x), model.forward(x))


def test_dump_ir_command(small, capsys):
    assert main(["dump-ir", str(small), "--after", "optimizer"]) == 0
    out = capsys.readouterr().out
    assert out == odc.load(small).ir(after="optimizer")
    assert main(["dump-ir", str(small), "--after", "nope"]) == 1
    assert "error: no pass named 'nope'; the passes are shape-infer, dce, augment, normalize, inference, train-mode, autodiff, optimizer" in capsys.readouterr().err


def test_gradcheck_command(small, capsys):
    assert main(["gradcheck", str(small), "--samples", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == list(odc.load(small).compile().params)
    assert all(line.split()[2] == "ok" for line in lines[:-1])
    assert lines[-1] == "8/8 parameters within 0.0001"
    # errors are tiny but never exactly zero: an absurd tolerance fails
    assert main(["gradcheck", str(small), "--samples", "4", "--tol", "1e-300"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_empty_batches_and_non_numbers_are_user_errors(small):
    model = odc.load(small).compile()
    with pytest.raises(odc.OdcError, match=r"input 'image' got an empty batch \(an array of shape \[0, 1, 6, 6\]\)"):
        model.forward(np.zeros((0, 1, 6, 6), np.float32))
    with pytest.raises(odc.OdcError, match="input 'image' got an empty batch"):
        model.train_step(np.zeros((0, 1, 6, 6), np.float32), np.zeros(0, np.int64))
    with pytest.raises(odc.OdcError, match=r"input 'image' expects an array of numbers f32\[N, 1, 6, 6\], got str"):
        model.forward("abc")


def test_a_parameter_may_be_named_like_an_optimizer_state(tmp_path):
    """Adam's scalar states have names no parameter can have, so `param step` trains as any other."""
    path = tmp_path / "step.od"
    path.write_text("model M():\n    input image: f32[N, 4]\n    param step: f32[10] = zeros\n"
                    "    return dense(image, 10) + step\n\ntrain M:\n    data = idx(\"vectors\")\n"
                    "    optimizer = adam(lr=0.01)\n")
    model = odc.load(path).compile()
    assert list(model.params) == ["step", "dense1.weight", "dense1.bias"]
    assert list(model.state)[:2] == ["adam.beta1_power", "adam.beta2_power"]
    x, y = np.ones((2, 4), np.float32), np.array([0, 2])
    model.train_step(x, y)
    # Adam's first step moves every element with a gradient by lr
    np.testing.assert_allclose(np.abs(model.params["step"]), 0.01, rtol=1e-4)
    np.testing.assert_allclose([model.state["adam.beta1_power"], model.state["adam.beta2_power"]], [0.9, 0.999])


def test_a_pass_that_breaks_the_ir_fails_at_once():
    """The IR is verified after each pass: here a parameter named like the momentum buffer the
    optimizer pass adds for another parameter (a name the front end never makes)."""
    g = Graph("M")
    x = g.add("input", type=TensorType("f32", ("N", 3)), name="image")
    w = g.add("param", type=TensorType("f32", (3, 2)), attrs={"init": "zeros"}, name="w")
    v = g.add("param", type=TensorType("f32", (3, 2)), attrs={"init": "zeros"}, name="w.momentum_buffer")
    t = TensorType("f32", ("N", 2))
    g.outputs = [("logits", g.add("add", [g.add("matmul", [x, w], type=t), g.add("matmul", [x, v], type=t)],
                                  type=t))]
    prog = odc.Program(g)
    prog.recipe["optimizer"] = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
    with pytest.raises(IRVerificationError, match=r"argument name 'w.momentum_buffer' missing or repeated"):
        prog.ir()


def test_the_model_picked_by_default(tmp_path):
    path = tmp_path / "none.od"
    path.write_text("# no model here\n")
    with pytest.raises(odc.OdcError, match=r"none\.od: error: the file has no model$"):
        odc.load(path)


def test_gradcheck_batch_is_bounded(small, capsys):
    for n in (0, 1025, 10 ** 12):
        with pytest.raises(odc.OdcError, match=f"gradcheck: the batch size must be between 1 and 1024, got {n}"):
            gradcheck(odc.load(small), batch=n)
    assert main(["gradcheck", str(small), "--batch", str(10 ** 12)]) == 1
    assert "the batch size must be between 1 and 1024" in capsys.readouterr().err
