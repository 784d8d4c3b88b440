"""The optimizer pass: state arguments, outputs, updates made of elementwise ops only, and the
first steps of each optimizer against formulas written out in numpy (whole models against
torch.optim are in tests/test_torch_oracle.py)."""
import numpy as np
import pytest

from odc.errors import OdcError
from odc.ir.graph import Graph, TensorType
from odc.ir.passes import autodiff, optimizer
from odc.ir.verify import verify
from odc.program import init_param
from odc.ir import interp


def grads_graph():
    g = Graph("M")
    x = g.add("input", type=TensorType("f32", ("N", 3)), name="x")
    w = g.add("param", type=TensorType("f32", (3, 2)), name="w")
    b = g.add("param", type=TensorType("f32", (2,)), name="b")
    h = g.add("matmul", (x, w), type=TensorType("f32", ("N", 2)))
    g.outputs = [("logits", g.add("add", (h, b), type=TensorType("f32", ("N", 2))))]
    return autodiff.run(g)


RNG = np.random.default_rng(0)
FEEDS = {"x": RNG.standard_normal((5, 3)), "label": RNG.integers(0, 2, 5), "w": RNG.standard_normal((3, 2)),
         "b": RNG.standard_normal(2)}


def step(spec, state=None, params=None):
    g = verify(optimizer.run(grads_graph(), **spec))
    state = state or {s.name: init_param(s, None) for s in g.args_of("state")}
    lr = {optimizer.LR: np.float64(spec["lr"])}  # the step's learning-rate input
    return interp.run(g, {**FEEDS, **(params or {}), **state, **lr}, np.float64), g


def test_signature_and_outputs():
    _, g = step({"name": "adam", "lr": 0.1})
    assert [(s.name, str(s.type)) for s in g.args_of("state")] == [
        ("adam.beta1_power", "f32[]"), ("adam.beta2_power", "f32[]"), ("w.exp_avg", "f32[3, 2]"),
        ("w.exp_avg_sq", "f32[3, 2]"), ("b.exp_avg", "f32[2]"), ("b.exp_avg_sq", "f32[2]")]
    assert [n for n, _ in g.outputs] == ["loss", "logits", "new.w", "new.b", "new.adam.beta1_power",
                                          "new.adam.beta2_power", "new.w.exp_avg", "new.w.exp_avg_sq",
                                          "new.b.exp_avg", "new.b.exp_avg_sq"]
    assert [s.attrs["init"] for s in g.args_of("state")] == ["ones", "ones"] + ["zeros"] * 4
    assert g.name == "M.train_step"
    _, g = step({"name": "sgd", "lr": 0.1})
    assert g.args_of("state") == []
    _, g = step({"name": "sgd", "lr": 0.1, "momentum": 0.5})
    assert [s.name for s in g.args_of("state")] == ["w.momentum_buffer", "b.momentum_buffer"]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_updates_are_elementwise_ops(name):
    before = grads_graph()
    after = optimizer.run(before, **{"name": name, "lr": 0.1, "weight_decay": 0.1})
    new_ops = {n.op for n in after.nodes()} - {n.op for n in before.nodes()}
    assert new_ops <= {"state", "input", "const", "add", "sub", "mul", "div", "sqrt", "exp"}


def test_sgd_with_momentum_and_weight_decay():
    g = interp.run(grads_graph(), FEEDS, np.float64)
    spec = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}
    out, _ = step(spec)
    buf = g["grad.w"] + 0.01 * FEEDS["w"]
    np.testing.assert_allclose(out["new.w.momentum_buffer"], buf, rtol=1e-12)
    np.testing.assert_allclose(out["new.w"], FEEDS["w"] - 0.1 * buf, rtol=1e-12)
    # the second step, from the new params and state, uses the momentum
    params = {"w": out["new.w"], "b": out["new.b"]}
    state = {"w.momentum_buffer": out["new.w.momentum_buffer"], "b.momentum_buffer": out["new.b.momentum_buffer"]}
    out2, _ = step(spec, state, params)
    g2 = interp.run(grads_graph(), {**FEEDS, **params}, np.float64)
    buf2 = 0.9 * buf + g2["grad.w"] + 0.01 * params["w"]
    np.testing.assert_allclose(out2["new.w"], params["w"] - 0.1 * buf2, rtol=1e-12)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_first_step_moves_each_weight_by_lr(decoupled):
    """At step 1 the bias-corrected m / sqrt(v) is g / |g|: every weight moves by lr against
    its gradient's sign (after the decoupled decay for adamw)."""
    g = interp.run(grads_graph(), FEEDS, np.float64)
    out, _ = step({"name": "adamw" if decoupled else "adam", "lr": 0.1, "eps": 0.0,
                   "weight_decay": 0.5 if decoupled else 0.0})
    start = FEEDS["w"] * (1 - 0.1 * 0.5) if decoupled else FEEDS["w"]
    np.testing.assert_allclose(out["new.w"], start - 0.1 * np.sign(g["grad.w"]), rtol=1e-10)
    np.testing.assert_allclose([out["new.adam.beta1_power"], out["new.adam.beta2_power"]], [0.9, 0.999], rtol=1e-15)
    np.testing.assert_allclose(out["new.w.exp_avg_sq"], 0.001 * g["grad.w"] ** 2, rtol=1e-10)


def test_adam_steps_match_the_formula_with_powers_of_the_betas():
    """Four steps against Adam written out in numpy with b1**t and b2**t (torch.optim.Adam's
    algorithm), from the params and state each step returns."""
    spec = {"name": "adam", "lr": 0.05, "beta1": 0.5, "beta2": 0.8, "eps": 1e-3}
    params, state = {"w": FEEDS["w"], "b": FEEDS["b"]}, None
    m, v, w = 0, 0, FEEDS["w"]
    for t in range(1, 5):
        grad = interp.run(grads_graph(), {**FEEDS, **params}, np.float64)["grad.w"]
        m, v = 0.5 * m + 0.5 * grad, 0.8 * v + 0.2 * grad ** 2
        w = w - 0.05 / (1 - 0.5 ** t) * m / (np.sqrt(v) / np.sqrt(1 - 0.8 ** t) + 1e-3)
        out, g = step(spec, state, params)
        params = {"w": out["new.w"], "b": out["new.b"]}
        state = {s.name: out[f"new.{s.name}"] for s in g.args_of("state")}
        np.testing.assert_allclose(params["w"], w, rtol=1e-12)


@pytest.mark.parametrize("spec, message", [
    ({"name": "adam", "lr": 0.1, "beta1": 1.0}, r"adam: beta1 must be a number in \[0, 1\), got 1.0"),
    ({"name": "adam", "lr": 0.1, "beta2": -0.5}, r"adam: beta2 must be a number in \[0, 1\), got -0.5"),
    ({"name": "adamw", "lr": 0.1, "eps": -1e-8}, r"adamw: eps must be a number >= 0, got -1e-08"),
    ({"name": "sgd", "lr": 0.0}, r"sgd: lr must be a number > 0, got 0.0"),
    ({"name": "sgd", "lr": float("nan")}, r"sgd: lr must be a number > 0, got nan"),
    ({"name": "sgd", "lr": 0.1, "momentum": -1}, r"sgd: momentum must be a number >= 0, got -1"),
    ({"name": "sgd", "lr": 0.1, "nesterov": 1}, r"sgd: nesterov must be true or false, got 1"),
    ({"name": "sgd", "lr": 0.1, "nesterov": True}, r"sgd: nesterov needs a momentum > 0"),
    ({"name": "adam"}, r"adam needs a learning rate lr"),
])
def test_hyper_parameters_out_of_range_are_user_errors(spec, message):
    """As torch.optim rejects them (beta1=1 or beta2 > 1 would train to NaN, beta1=0 once broke
    the pass); e.g. a recipe dict edited before compile()."""
    with pytest.raises(OdcError, match=message):
        optimizer.run(grads_graph(), **spec)


def test_adam_with_beta1_zero_is_rmsprop_with_bias_correction():
    """beta1 = 0 is legal (m is the gradient itself): the step is lr * g / (sqrt(v_hat) + eps)."""
    out, _ = step({"name": "adam", "lr": 0.1, "beta1": 0.0, "eps": 0.0})
    grad = interp.run(grads_graph(), FEEDS, np.float64)["grad.w"]
    np.testing.assert_allclose(out["new.w"], FEEDS["w"] - 0.1 * np.sign(grad), rtol=1e-10)


def test_bad_optimizer_specs():
    with pytest.raises(OdcError, match="unknown optimizer 'lbfgs'"):
        optimizer.run(grads_graph(), **{"name": "lbfgs", "lr": 0.1})
    with pytest.raises(OdcError, match="sgd has no option beta1"):
        optimizer.run(grads_graph(), **{"name": "sgd", "lr": 0.1, "beta1": 0.9})
