"""The optimizers of recipes v2 (sgd's dampening, rmsprop, adagrad, adadelta, lars) against
torch.optim (LARS against numpy): six train steps of a small conv + dense model, its optimizer
set in the train block, give the losses and final parameters of the same steps in PyTorch
from the same parameters (float32 on both sides, error relative to each tensor's largest
magnitude); and the train block reports arguments torch.optim refuses at their place."""
import numpy as np
import pytest

import odc
from odc.errors import CompileError, OdcError
from odc.frontend import parse_source
from odc.ir import interp
from odc.ir.passes import autodiff, optimizer
from odc.ir.graph import Graph, TensorType

MODEL = """
model Tiny():
    input image: f32[N, 1, 28, 28]
    x = tanh(conv2d(image, out=3, kernel=5, stride=4))
    return dense(flatten(x), 10)

train Tiny:
    data = mnist()
    optimizer = {optimizer}
"""


def twin(F, p, x):
    x = F.conv2d(x, p["conv2d1.weight"], p["conv2d1.bias"], stride=4).tanh()
    return F.linear(x.flatten(1), p["dense1.weight"], p["dense1.bias"])


def lars_reference(lr, momentum, trust, weight_decay):
    """You et al. 2017 in numpy over float64 tensors: `step(params, grads)` updates params in
    place; rank < 2 tensors take plain momentum SGD."""
    bufs = {}

    def step(params, grads):
        for k, w in params.items():
            g = grads[k].astype(np.float64)
            if w.ndim >= 2:
                wn, gn = np.linalg.norm(w), np.linalg.norm(g)
                local = trust * wn / (gn + weight_decay * wn) if wn > 0 and gn > 0 else 1.0
                d = lr * local * (g + weight_decay * w)
            else:
                d = lr * g
            bufs[k] = momentum * bufs.get(k, 0) + d if momentum else d
            params[k] = w - bufs[k]
    return step


CASES = {  # the train block's optimizer, and its twin: torch.optim (from torch, params) or numpy
    "sgd-dampening": ("sgd(lr=0.05, momentum=0.9, dampening=0.3)",
                      lambda t, ps: t.optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.3)),
    "sgd-dampening-decay": ("sgd(lr=0.05, momentum=0.5, dampening=1, weight_decay=0.1)",
                            lambda t, ps: t.optim.SGD(ps, lr=0.05, momentum=0.5, dampening=1.0, weight_decay=0.1)),
    "rmsprop": ("rmsprop(lr=0.01)", lambda t, ps: t.optim.RMSprop(ps, lr=0.01)),
    "rmsprop-all": ("rmsprop(lr=0.005, alpha=0.9, eps=1e-6, momentum=0.8, centered=true, weight_decay=0.1)",
                    lambda t, ps: t.optim.RMSprop(ps, lr=0.005, alpha=0.9, eps=1e-6, momentum=0.8, centered=True,
                                                  weight_decay=0.1)),
    "rmsprop-centered": ("rmsprop(lr=0.005, centered=true)",
                         lambda t, ps: t.optim.RMSprop(ps, lr=0.005, centered=True)),
    "adagrad": ("adagrad(lr=0.05)", lambda t, ps: t.optim.Adagrad(ps, lr=0.05)),
    "adagrad-all": ("adagrad(lr=0.05, lr_decay=0.2, eps=1e-6, weight_decay=0.1)",
                    lambda t, ps: t.optim.Adagrad(ps, lr=0.05, lr_decay=0.2, eps=1e-6, weight_decay=0.1)),
    "adadelta": ("adadelta()", lambda t, ps: t.optim.Adadelta(ps)),
    "adadelta-all": ("adadelta(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1)",
                     lambda t, ps: t.optim.Adadelta(ps, lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1)),
    "lars": ("lars(lr=0.1)", lambda t, ps: lars_reference(0.1, 0.9, 0.001, 0.0)),
    "lars-all": ("lars(lr=0.5, momentum=0.5, trust=0.02, weight_decay=0.01)",
                 lambda t, ps: lars_reference(0.5, 0.5, 0.02, 0.01)),
    "lars-no-momentum": ("lars(lr=0.5, momentum=0, trust=0.01)", lambda t, ps: lars_reference(0.5, 0.0, 0.01, 0.0)),
}


def tiny(tmp_path, optimizer: str, executor=None):
    """The tiny model with `optimizer` (and any train-block lines after it), compiled, and
    torch copies of its parameters that need gradients."""
    path = tmp_path / "tiny.od"
    path.write_text(MODEL.format(optimizer=optimizer))
    return odc.load(path).compile(executor=executor, seed=3)


def torch_params(torch, model) -> dict:
    return {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}



def rel_err(a, b):
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.parametrize("case", CASES)
def test_six_steps_equal_torch_optim(torch, tmp_path, executor, case):
    text, make = CASES[case]
    model = tiny(tmp_path, text, executor)
    F = torch.nn.functional
    p = torch_params(torch, model)
    opt = make(torch, list(p.values()))
    numpy_params = {k: v.astype(np.float64) for k, v in model.params.items()}
    is_torch = isinstance(opt, torch.optim.Optimizer)
    rng = np.random.default_rng(1)
    losses, expected = [], []
    for _ in range(6):
        x, y = rng.random((4, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 4)
        losses.append(float(model.train_step(x, y)))
        if is_torch:
            opt.zero_grad()
            loss = F.cross_entropy(twin(F, p, torch.tensor(x)), torch.tensor(y))
            loss.backward()
            opt.step()
        else:  # numpy LARS, from torch's gradients at the numpy parameters
            q = {k: torch.tensor(v.astype(np.float32), requires_grad=True) for k, v in numpy_params.items()}
            loss = F.cross_entropy(twin(F, q, torch.tensor(x)), torch.tensor(y))
            loss.backward()
            opt(numpy_params, {k: v.grad.numpy() for k, v in q.items()})
        expected.append(loss.item())
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    assert losses[-1] != losses[0]  # the steps moved the parameters
    for k, v in model.params.items():
        want = p[k].detach().numpy() if is_torch else numpy_params[k]
        assert rel_err(v, want) <= 1e-4, k


def test_sgd_dampening_keeps_a_first_step_state_and_torch_would_differ_without_it(torch, tmp_path):
    """The first step's buffer is the gradient itself (not (1-dampening)*g): a test that could fail."""
    path = tmp_path / "tiny.od"
    path.write_text(MODEL.format(optimizer="sgd(lr=0.1, momentum=0.9, dampening=0.5)"))
    model = odc.load(path).compile(executor=interp.compile_graph, seed=3)
    assert "sgd.first_step" in model.state
    before = {k: v.copy() for k, v in model.params.items()}
    x, y = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32), np.arange(4)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in before.items()}
    F = torch.nn.functional
    F.cross_entropy(twin(F, p, torch.tensor(x)), torch.tensor(y)).backward()
    model.train_step(x, y)
    g = p["dense1.weight"].grad.numpy()
    np.testing.assert_allclose(model.params["dense1.weight"], before["dense1.weight"] - 0.1 * g, rtol=1e-5, atol=1e-7)
    assert rel_err(model.params["dense1.weight"], before["dense1.weight"] - 0.05 * g) > 1e-3


def test_lars_is_plain_sgd_where_a_norm_is_zero():
    """A zero weight matrix has ||w|| = 0: its local lr is 1 (not trust * 0)."""
    g = Graph("M")
    x = g.add("input", type=TensorType("f32", ("N", 3)), name="x")
    w = g.add("param", type=TensorType("f32", (3, 2)), name="w")
    g.outputs = [("logits", g.add("matmul", (x, w), type=TensorType("f32", ("N", 2))))]
    step = optimizer.run(autodiff.run(g), name="lars", lr=0.5, weight_decay=0.1)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((5, 3)), "label": rng.integers(0, 2, 5), "w": np.zeros((3, 2)),
             "w.momentum_buffer": np.zeros((3, 2)), optimizer.LR: np.float64(0.5)}
    out = interp.run(step, feeds, np.float64)
    grad = interp.run(autodiff.run(g), feeds, np.float64)["grad.w"]
    assert np.abs(grad).max() > 0
    np.testing.assert_allclose(out["new.w"], -0.5 * grad, rtol=1e-12)


@pytest.mark.parametrize("text, needle, message", [
    ("sgd(lr=0.1, momentum=0.9, dampening=1.5)", "1.5", "sgd: dampening must be a number in [0, 1], got 1.5"),
    ("sgd(lr=0.1, momentum=0.9, dampening=0.1, nesterov=true)", "sgd(", "sgd: nesterov needs dampening = 0"),
    ("rmsprop(lr=0.1, alpha=-0.5)", "-0.5", "rmsprop: alpha must be a number >= 0, got -0.5"),
    ("rmsprop(lr=0.1, centered=1)", "1)", "rmsprop: centered must be true or false, got 1"),
    ("rmsprop(lr=0.1, eps=-1)", "-1", "rmsprop: eps must be a number >= 0, got -1"),
    ("rmsprop(lr=0.1, momentum=-0.1)", "-0.1", "rmsprop: momentum must be a number >= 0, got -0.1"),
    ("rmsprop(alpha=0.9)", "rmsprop(", "rmsprop is missing argument 'lr'"),
    ("adagrad(lr=0.1, lr_decay=-1)", "-1", "adagrad: lr_decay must be a number >= 0, got -1"),
    ("adagrad(lr=0.1, weight_decay=-0.1)", "-0.1", "adagrad: weight_decay must be a number >= 0, got -0.1"),
    ("adagrad(lr=0)", "0)", "adagrad: lr must be a number > 0, got 0"),
    ("adadelta(rho=1.5)", "1.5", "adadelta: rho must be a number in [0, 1], got 1.5"),
    ("adadelta(lr=-1)", "-1", "adadelta: lr must be a number > 0, got -1"),
    ("lars(lr=0.1, trust=0)", "0)", "lars: trust must be a number > 0, got 0"),
    ("lars(lr=0.1, momentum=-0.9)", "-0.9", "lars: momentum must be a number >= 0, got -0.9"),
])
def test_train_block_reports_bad_arguments_at_their_place(text, needle, message):
    src = MODEL.format(optimizer=text)
    with pytest.raises(CompileError) as e:
        parse_source(src, "t.od")
    d = e.value.first
    at = src.index(needle, src.index("optimizer ="))
    assert (d.span.line, d.span.col, d.message) == (src.count("\n", 0, at) + 1, at - src.rfind("\n", 0, at), message)


def test_train_block_keeps_the_arguments_with_their_defaults():
    r = parse_source(MODEL.format(optimizer="rmsprop(lr=0.1, centered=true)"), "t.od").recipes["Tiny"]
    assert r.as_dict()["optimizer"] == {"name": "rmsprop", "lr": 0.1, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0,
                                        "centered": True, "weight_decay": 0.0}
    r = parse_source(MODEL.format(optimizer="adadelta()"), "t.od").recipes["Tiny"]
    assert r.optimizer_args == {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0}


def test_nesterov_with_dampening_in_a_recipe_dict():
    with pytest.raises(OdcError, match="sgd: nesterov needs dampening = 0"):
        optimizer.hyper_parameters({"name": "sgd", "lr": 0.1, "momentum": 0.9, "dampening": 0.5, "nesterov": True})
