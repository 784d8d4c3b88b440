"""The normalisation layers of language v2 (batchnorm1d, batchnorm2d with momentum and eps,
layernorm), exact to PyTorch: the numpy references and the train-mode and inference passes
against torch.nn in training and evaluation mode, the derivative rules against finite
differences, the compiled kernels against the references, a model trained three steps beside a
torch.nn twin, checkpoints, the refusal of a training batch with one value per channel, and
the diagnoses."""
import numpy as np
import pytest

import odc
from odc import codegen
from odc.errors import CompileError
from odc.frontend import parse_source
from odc.ir import interp, ops, passes
from odc.ir.graph import Graph, TensorType
from odc.ir.passes.autodiff import backprop
from test_vjp import check_vjp
from tests.oracle import rel_err


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    """Compiled code goes to a throwaway cache, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ODC_CACHE_DIR", str(tmp_path_factory.mktemp("odc-cache")))
        yield




def randn(seed, *shapes, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * scale + shift).astype(np.float32) for s in shapes]


# -- numpy references against torch.nn ----------------------------------------------------------
BATCH_NORMS = [("batchnorm1d", (6, 5)), ("batchnorm1d", (4, 3, 7)), ("batchnorm2d", (3, 4, 5, 6))]


@pytest.mark.parametrize("op, shape", BATCH_NORMS)
@pytest.mark.parametrize("momentum, eps", [(0.1, 1e-5), (0.3, 1e-3), (1.0, 0.5)])
def test_batch_norm_reference_is_torch_train_mode(torch, op, shape, momentum, eps):
    c = shape[1]
    x, gamma, beta = randn(1, shape, (c,), (c,), scale=2.0, shift=0.5)
    layer = getattr(torch.nn, {"batchnorm1d": "BatchNorm1d", "batchnorm2d": "BatchNorm2d"}[op])(
        c, momentum=momentum, eps=eps)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
        layer.bias.copy_(torch.tensor(beta))
    expected = layer.train()(torch.tensor(x)).detach().numpy()
    got = ops.evaluate(op, [x, gamma, beta], {"momentum": momentum, "eps": eps})
    assert got.dtype == np.float32 and got.shape == x.shape
    assert rel_err(got, expected) <= 1e-5


def torch_batch_norm(torch, op, c, momentum, eps, gamma, beta, mean, var):
    layer = getattr(torch.nn, {"batchnorm1d": "BatchNorm1d", "batchnorm2d": "BatchNorm2d"}[op])(
        c, momentum=momentum, eps=eps)
    with torch.no_grad():
        for t, v in ((layer.weight, gamma), (layer.bias, beta), (layer.running_mean, mean), (layer.running_var, var)):
            t.copy_(torch.tensor(v))
    return layer


def batch_norm_graph(op, shape, attrs):
    """x -> op(x, bn1.weight, bn1.bias), its output `y`; symbolic batch."""
    g = Graph("bn")
    t, c = TensorType("f32", ("N", *shape[1:])), TensorType("f32", (shape[1],))
    ids = [g.add("input", type=t, name="x"), g.add("param", type=c, name="bn1.weight"),
           g.add("param", type=c, name="bn1.bias")]
    g.outputs = [("y", g.add(op, ids, attrs, t))]
    return g


@pytest.mark.parametrize("op, shape", BATCH_NORMS)
@pytest.mark.parametrize("momentum, eps", [(0.1, 1e-5), (0.3, 1e-3), (0.0, 0.2)])
def test_train_mode_and_inference_passes_are_torch(torch, op, shape, momentum, eps):
    """The train-mode pass's running statistics after one batch (the unbiased variance, the
    momentum), and the inference pass's output (eval mode), as torch.nn's."""
    c = shape[1]
    x, gamma, beta, mean = randn(11, shape, (c,), (c,), (c,), scale=2.0, shift=0.5)
    var = np.abs(randn(12, (c,))[0]) + 0.5
    attrs = {k: v for k, v in (("momentum", momentum), ("eps", eps)) if v != {"momentum": 0.1, "eps": 1e-5}[k]}
    g = batch_norm_graph(op, shape, attrs)
    feeds = {"x": x, "bn1.weight": gamma, "bn1.bias": beta, "bn1.running_mean": mean, "bn1.running_var": var}
    layer = torch_batch_norm(torch, op, c, momentum, eps, gamma, beta, mean, var)
    with torch.no_grad():
        expected_eval = layer.eval()(torch.tensor(x)).numpy()
        expected_train = layer.train()(torch.tensor(x)).numpy()
    got = interp.run(passes.get("inference").run(g), feeds)
    assert rel_err(got["y"], expected_eval) <= 1e-5
    got = interp.run(passes.get("train-mode").run(g), feeds)
    assert rel_err(got["y"], expected_train) <= 1e-5
    assert rel_err(got["new.bn1.running_mean"], layer.running_mean.numpy()) <= 1e-5
    assert rel_err(got["new.bn1.running_var"], layer.running_var.numpy()) <= 1e-5


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 9), (1, 1), (2, 3, 1)])
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_layernorm_reference_is_torch(torch, shape, eps):
    f = shape[-1]
    x, gamma, beta = randn(2, shape, (f,), (f,), scale=3.0, shift=-1.0)
    layer = torch.nn.LayerNorm(f, eps=eps)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
        layer.bias.copy_(torch.tensor(beta))
    for mode in (layer.train, layer.eval):  # the same in both
        expected = mode()(torch.tensor(x)).detach().numpy()
        assert rel_err(ops.evaluate("layernorm", [x, gamma, beta], {"eps": eps}), expected) <= 1e-5


def test_layernorm_of_a_vector(torch):
    x, gamma, beta = randn(3, (6,), (6,), (6,))
    layer = torch.nn.LayerNorm(6)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
        layer.bias.copy_(torch.tensor(beta))
    assert rel_err(ops.evaluate("layernorm", [x, gamma, beta], {}), layer(torch.tensor(x)).detach().numpy()) <= 1e-5


def test_running_statistics_layout_comes_from_the_catalog():
    """The passes and the driver take a batch norm's channel and statistics axes from here."""
    assert {n for n, d in ops.OPS.items() if d.training == "state"} == {"batchnorm1d", "batchnorm2d"}
    assert ops.norm.running("batchnorm2d").axes(4) == [0, 2, 3]
    assert ops.norm.running("batchnorm1d").axes(2) == [0]
    assert ops.norm.running("batchnorm1d").axes(3) == [0, 2]
    assert ops.get("layernorm").training is None


# -- derivative rules against finite differences ----------------------------------------------
@pytest.mark.parametrize("shape, attrs", [((3, 4), {}), ((2, 3, 5), {"eps": 0.01}), ((5, 1), {"momentum": 0.3})])
def test_batchnorm1d_vjp(shape, attrs):
    x, gamma, beta = (a.astype(np.float64) for a in randn(4, shape, shape[1:2], shape[1:2], shift=0.3))
    check_vjp("batchnorm1d", [x, gamma, beta], attrs, symbolic=(0,))


def test_batchnorm2d_vjp_with_eps():
    x, gamma, beta = (a.astype(np.float64) for a in randn(5, (2, 3, 2, 3), (3,), (3,)))
    check_vjp("batchnorm2d", [x, gamma, beta], {"eps": 0.5, "momentum": 0.3}, symbolic=(0,))


@pytest.mark.parametrize("shape, attrs", [((3, 5), {}), ((2, 3, 4), {"eps": 0.1}), ((4,), {}), ((2, 1), {})])
def test_layernorm_vjp(shape, attrs):
    x, gamma, beta = (a.astype(np.float64) for a in randn(6, shape, shape[-1:], shape[-1:], scale=2.0))
    check_vjp("layernorm", [x, gamma, beta], attrs, symbolic=(0,) if len(shape) > 1 else ())


def test_training_form_gradient_is_the_batch_norms(torch):
    """batchnorm_train(x, gamma, beta, batchnorm_stats(x)), the train-mode pass's form: its
    gradients (through the statistics too) against finite differences, and its output against
    torch.nn's train mode."""
    x, gamma, beta = (a.astype(np.float64) for a in randn(9, (3, 4, 2, 5), (4,), (4,), scale=2.0, shift=0.5))
    g = Graph("train-form")
    ids = [g.add("input", type=TensorType("f64", a.shape), name=name) for a, name in ((x, "x"), (gamma, "g"), (beta, "b"))]
    e = ops.Emit(g)
    y = e("batchnorm_train", *ids, e("batchnorm_stats", ids[0]), eps=0.01)
    cot = np.random.default_rng(1).standard_normal(x.shape)
    loss = e("sum", e("mul", y, g.add("input", type=g.type(y), name="cot")))
    grads = backprop(g, loss, ids)
    g.outputs = [("y", y), ("loss", loss)] + [(f"d{i}", grads[i]) for i in ids]
    feeds = {"x": x, "g": gamma, "b": beta, "cot": cot}
    out = interp.run(g, feeds, np.float64)
    layer = torch.nn.BatchNorm2d(4, eps=0.01).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
        layer.bias.copy_(torch.tensor(beta))
    assert rel_err(out["y"], layer.train()(torch.tensor(x)).detach().numpy()) <= 1e-12
    for i, (name, a) in zip(ids, (("x", x), ("g", gamma), ("b", beta))):
        fd = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            moved = []
            for sign in (1, -1):
                b = a.copy()
                b[idx] += sign * 1e-6
                moved.append(interp.run(g, {**feeds, name: b}, np.float64)["loss"])
            fd[idx] = (moved[0] - moved[1]) / 2e-6
        np.testing.assert_allclose(out[f"d{i}"], fd, rtol=1e-5, atol=1e-6, err_msg=name)


# -- compiled kernels against the references --------------------------------------------------
def training_form(x, gamma, beta, attrs, seed):
    """The kernels of a batch norm's training step (the train-mode pass's form and the gradient's
    sums) on x: batchnorm_stats, batchnorm_train and batchnorm_grad_sums cases."""
    stats = ops.evaluate("batchnorm_stats", [x.astype(np.float64)], {}).astype(np.float32)
    (dy,) = randn(seed, x.shape)
    eps = {k: v for k, v in attrs.items() if k == "eps"}
    return [("batchnorm_stats", [x], {}), ("batchnorm_train", [x, gamma, beta, stats], eps),
            ("batchnorm_grad_sums", [dy, x, stats], {})]


def compile_cases(cases, threads):
    g = Graph("cases")
    feeds = {}
    for i, (op, arrays, attrs) in enumerate(cases):
        ids = []
        for j, a in enumerate(arrays):
            feeds[f"a{i}_{j}"] = a
            ids.append(g.add("input", type=TensorType("f32", a.shape), name=f"a{i}_{j}"))
        g.outputs.append((f"o{i}", g.add(op, ids, dict(attrs), ops.get(op).infer([g.type(x) for x in ids], attrs))))
    planned = passes.run_passes(g, ("dce", "fuse", "plan-memory"))[-1][1]
    return codegen.compile_graph(planned, threads=threads)(feeds)


# feature counts below, at and above one and two vectors of 8 or 16 lanes
FEATURES = [1, 5, 7, 8, 13, 16, 17, 33, 37, 64, 67, 100, 129]


@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_match_the_references(threads):
    cases = []
    for k, f in enumerate(FEATURES):
        n = (2, 3, 9, 1)[k % 4] if f != 1 else 2
        x, gamma, beta = randn(10 + k, (n, f), (f,), (f,), scale=3.0, shift=1.5)
        cases += training_form(x, gamma, beta, {"eps": 1e-3} if k % 2 else {}, 80 + k)
        cases.append(("layernorm", [x, gamma, beta], {"eps": 0.2} if k % 3 == 0 else {}))
        x3, g3 = randn(30 + k, (3, 5, f), (f,))
        cases.append(("layernorm", [x3, g3, beta], {}))
        c = 1 + k % 4
        x3, gc, bc = randn(50 + k, (2 + k % 3, c, f), (c,), (c,), shift=-2.0)
        cases += training_form(x3, gc, bc, {}, 90 + k)
    x4, g4, b4 = randn(7, (3, 5, 7, 9), (5,), (5,), scale=2.0)
    cases += training_form(x4, g4, b4, {"eps": 1e-3, "momentum": 0.3}, 7)
    cases.append(("layernorm", [x4, *randn(8, (9,), (9,))], {}))
    far = randn(5, (6, 4, 9, 11), (4,), (4,), shift=1000.0)  # a mean 1,000 standard deviations from 0
    cases += training_form(*far, {}, 6)
    for k, shape in enumerate([(2000, 37), (500, 133)]):  # bigger: split among threads
        rows = randn(60 + k, shape, shape[1:], shape[1:], shift=4.0)
        cases += [*training_form(*rows, {}, 70 + k), ("layernorm", rows, {})]
    out = compile_cases(cases, threads)
    for i, (op, arrays, attrs) in enumerate(cases):
        ref = ops.evaluate(op, [a.astype(np.float64) for a in arrays], attrs)  # exact, to f32's rounding
        assert out[f"o{i}"].dtype == np.float32
        np.testing.assert_allclose(out[f"o{i}"], ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()),
                                   err_msg=f"{op} {attrs} on {[a.shape for a in arrays]}")


# -- a model trained beside a torch.nn twin ---------------------------------------------------
MODEL = """
model Norms():
    input image: f32[N, 3, 6, 5]
    x = conv2d(image, out=4, kernel=3, bias=false)      # a bias would cancel in the batch norm
    x = relu(batchnorm2d(x, momentum=0.3, eps=1e-3))   # f32[N, 4, 4, 3]
    x = layernorm(reshape(x, [N, 3, 16]))               # over the last axis of [N, T, F]
    x = tanh(dense(flatten(x), 7))
    x = layernorm(batchnorm1d(x), eps=0.01)
    return dense(x, 10)
"""


def twin(torch, params):
    nn = torch.nn

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv2d1 = nn.Conv2d(3, 4, 3, bias=False)
            self.batchnorm2d1 = nn.BatchNorm2d(4, momentum=0.3, eps=1e-3)
            self.layernorm1 = nn.LayerNorm(16)
            self.dense1 = nn.Linear(48, 7)
            self.batchnorm1d1 = nn.BatchNorm1d(7)
            self.layernorm2 = nn.LayerNorm(7, eps=0.01)
            self.dense2 = nn.Linear(7, 10)

        def forward(self, x):
            x = torch.relu(self.batchnorm2d1(self.conv2d1(x)))
            x = self.layernorm1(x.reshape(x.shape[0], 3, 16))
            x = torch.tanh(self.dense1(x.flatten(1)))
            return self.dense2(self.layernorm2(self.batchnorm1d1(x)))

    net = Twin()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.tensor(params[name]))
    return net


def torch_state(net):
    return {k: v.detach().numpy() for k, v in net.state_dict().items() if "running" in k}



def norms_model(tmp_path, executor=None):
    """The model, trained by hand here on made-up data."""
    path = tmp_path / "norms.od"
    path.write_text(MODEL)
    prog = odc.load(path)
    prog.recipe["optimizer"] = {"name": "sgd", "lr": 0.2, "momentum": 0.9}
    return prog.compile(executor=executor, seed=3)


def test_three_train_steps_match_a_torch_twin(torch, tmp_path, executor):
    model = norms_model(tmp_path, executor)
    running = [k for k in model.state if "running" in k]  # the rest is SGD's momentum
    assert running == ["batchnorm2d1.running_mean", "batchnorm2d1.running_var",
                       "batchnorm1d1.running_mean", "batchnorm1d1.running_var"]
    assert [k for k in model.params if "norm" in k] == [
        "batchnorm2d1.weight", "batchnorm2d1.bias", "layernorm1.weight", "layernorm1.bias",
        "batchnorm1d1.weight", "batchnorm1d1.bias", "layernorm2.weight", "layernorm2.bias"]
    net = twin(torch, model.params)
    opt = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9)
    rng = np.random.default_rng(0)
    for step in range(3):
        n = (6, 5, 7)[step]
        x = (rng.standard_normal((n, 3, 6, 5)) * 0.2 + 0.1).astype(np.float32)  # eps matters
        y = rng.integers(0, 10, n)
        loss = model.train_step(x, y)
        opt.zero_grad()
        expected = torch.nn.functional.cross_entropy(net.train()(torch.tensor(x)), torch.tensor(y))
        expected.backward()
        opt.step()
        assert rel_err(loss, expected.item()) <= 1e-4, step
    for name, p in net.named_parameters():
        assert rel_err(model.params[name], p.detach().numpy()) <= 1e-4, name
    stats = torch_state(net)
    assert list(stats) == running
    for k, v in stats.items():
        assert rel_err(model.state[k], v) <= 1e-4, k
    x = (rng.standard_normal((4, 3, 6, 5)) * 0.2).astype(np.float32)
    with torch.no_grad():
        expected = net.eval()(torch.tensor(x)).numpy()
    assert rel_err(model.forward(x), expected) <= 1e-4
    assert rel_err(model.forward(x[:1]), expected[:1]) <= 1e-4  # evaluation takes a batch of 1

    if executor is None:  # the running statistics survive a checkpoint
        model.save(tmp_path / "norms.safetensors")
        again = odc.load_checkpoint(tmp_path / "norms.safetensors")
        assert list(again.state) == list(model.state)
        for k in model.state:
            np.testing.assert_array_equal(again.state[k], model.state[k])
        np.testing.assert_array_equal(again.forward(x), model.forward(x))


def test_batchnorm1d_refuses_a_training_batch_of_one(tmp_path):
    model = norms_model(tmp_path)
    x = np.ones((1, 3, 6, 5), np.float32)
    bn = model.one_value_per_channel(1)
    assert bn is not None and bn.op == "batchnorm1d"  # batchnorm2d sees 4x3 values per channel
    assert model.one_value_per_channel(2) is None
    with pytest.raises(CompileError, match=r"batchnorm1d sees one value per channel \(its input is f32\[1, 7\]\)"):
        model.train_step(x, np.zeros(1, np.int64))
    assert model.forward(x).shape == (1, 10)


def test_batchnorm2d_one_value_per_channel_counts_every_axis_but_the_channel(tmp_path):
    src = """
model M():
    input image: f32[N, 2, 1, 1]
    return dense(flatten(batchnorm2d(image)), 10)
"""
    (tmp_path / "m.od").write_text(src)
    model = odc.load(tmp_path / "m.od").compile(executor=odc.ir.interp.compile_graph)
    assert model.one_value_per_channel(1).op == "batchnorm2d"
    assert model.one_value_per_channel(2) is None


# -- diagnoses ----------------------------------------------------------------------------------
def diagnose(line):
    src = f"model M():\n    input image: f32[N, 3, 4, 4]\n    x = {line}\n    return dense(flatten(x), 10)\n"
    with pytest.raises(CompileError) as info:
        parse_source(src, "t.od")
    d = info.value.first
    return d.span.line, d.span.col, d.message, d.hint


@pytest.mark.parametrize("line, at, message", [
    ("batchnorm1d(image)", "batchnorm1d",
     "batchnorm1d expects a 2-D input [batch, features] or a 3-D input [batch, channels, length], got f32[N, 3, 4, 4]"),
    ("batchnorm2d(flatten(image))", "batchnorm2d",
     "batchnorm2d expects a 4-D input [batch, channels, height, width], got f32[N, 48]"),
    ("layernorm(sum(image))", "layernorm", "layernorm normalises over the last axis and expects a tensor of at least "
                                           "1 dimension, e.g. [batch, features], got the scalar f32[]"),
    ("batchnorm2d(image, momentum=1.5)", "batchnorm2d", "batchnorm2d: momentum must be in [0, 1], got 1.5"),
    ("batchnorm2d(image, momentum=-0.1)", "batchnorm2d", "batchnorm2d: momentum must be in [0, 1], got -0.1"),
    ("batchnorm1d(flatten(image), 2)", "batchnorm1d", "batchnorm1d: momentum must be in [0, 1], got 2.0"),
    ("batchnorm2d(image, eps=0)", "0", "batchnorm2d: eps must be a positive number, got the number 0"),
    ("batchnorm1d(flatten(image), eps=-1e-5)", "-1e-5", "batchnorm1d: eps must be a positive number, got"),
    ("layernorm(image, eps=0.0)", "0.0", "layernorm: eps must be a positive number, got the number 0.0"),
    ('batchnorm2d(image, momentum="fast")', '"fast"', 'batchnorm2d: momentum must be a number, got the string "fast"'),
])
def test_diagnoses(line, at, message):
    """Each at line 3, at the column of `at`: the call, or the argument out of range."""
    got_line, got_col, got, _ = diagnose(line)
    assert (got_line, got_col) == (3, len("    x = ") + line.rindex(at) + 1)
    assert got.startswith(message), got


def test_diagnosis_hints():
    assert "batchnorm2d normalises images" in diagnose("batchnorm1d(image)")[3]
    assert "0.1 is PyTorch's default" in diagnose("batchnorm2d(image, momentum=2)")[3]


def test_boundary_momentum_and_defaults_are_accepted():
    """momentum 0 (statistics frozen) and 1 (the last batch's) are PyTorch's too; default
    arguments are not written as attributes, so a plain batchnorm2d's IR is as before."""
    src = ("model M():\n    input image: f32[N, 3, 4, 4]\n    x = batchnorm2d(image, momentum=0)\n"
           "    x = batchnorm2d(x, momentum=1, eps=1e-5)\n    x = batchnorm2d(x, 0.1, 1e-5)\n"
           "    return dense(layernorm(flatten(x), eps=1e-5), 10)\n")
    g = parse_source(src).lower()
    attrs = [n.attrs for n in g.nodes() if n.op in ("batchnorm2d", "layernorm")]
    assert sorted(map(str, attrs)) == sorted(map(str, [{"momentum": 0.0}, {"momentum": 1.0}, {}, {}]))


def test_the_comparison_with_torch_can_fail(torch, monkeypatch):
    """A layernorm reference with the unbiased variance (torch.var's default) is caught."""
    monkeypatch.setattr(ops.get("layernorm"), "ref", lambda x, gm, bt, attrs: (
        (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, ddof=1, keepdims=True) + 1e-5) * gm + bt))
    with pytest.raises(AssertionError):
        test_layernorm_reference_is_torch(torch, (5, 7), 1e-5)
