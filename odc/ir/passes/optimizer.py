"""Optimizer lowering: the loss-and-gradients graph becomes one training step.

The optimizer of the train block (default `sgd(lr=0.01)`) is written out as elementwise ops
(`mul`, `add`, `sub`, `div`, `sqrt` and scalar `const`s), so that a fusion pass can turn each
parameter's update into one loop. Its state becomes explicit: `state` arguments, zero at the
start unless said otherwise, whose next values are outputs, so one call of the graph is one step:

- `sgd(lr, momentum=0, nesterov=false, weight_decay=0)`, as torch.optim.SGD (no dampening):
  g = grad + wd*p; buf = momentum*buf + g (state `<param>.momentum_buffer`);
  g = g + momentum*buf with nesterov, else buf; p = p - lr*g.
- `adam(lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0)`, as torch.optim.Adam:
  g = grad + wd*p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g (states `<param>.exp_avg`,
  `.exp_avg_sq`); p = p - lr/(1 - b1^t) * m / (sqrt(v)/sqrt(1 - b2^t) + eps) at step t. The
  powers b1^t and b2^t are two scalar states shared by all parameters, `adam.beta1_power` and
  `adam.beta2_power` (one at the start), each multiplied by its beta at every step.
- `adamw(...)`: Adam with decoupled decay (default weight_decay=0.01, as torch.optim.AdamW):
  p is first scaled by 1 - lr*wd, and the decay is not added to the gradient.

The hyper-parameters are checked as torch.optim checks them (`hyper_parameters`); the front end
reports the same problems at their place in the train block. The step is named
`<model>.train_step`. Outputs: `loss`, `logits`, then `new.<param>` for each parameter and
`new.<state>` for each state (those autodiff made first), in the order of the `state`
arguments. The gradients are no longer outputs. No parameter can be named like Adam's powers:
the front end's names have no dot, or a digit before it.
"""
from __future__ import annotations

import sys

from odc.errors import OdcError
from odc.ir.graph import Graph, TensorType
from odc.ir.passes import dce
from odc.ir.ops import Emit

name = "optimizer"
summary = "write the train block's optimizer update as elementwise ops over explicit state arguments"
requires = ("autodiff",)

# each optimizer's hyper-parameters and their defaults (PyTorch's); lr has none
OPTIMIZERS = {
    "sgd": {"lr": None, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    "adam": {"lr": None, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": None, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
}
DEFAULT = {"name": "sgd", "lr": 0.01}  # the optimizer of a model without a train block
options = {"name": f"{', '.join(OPTIMIZERS)} (default: the train block's)",
           **{k: "a hyper-parameter of the optimizer" for opt in OPTIMIZERS.values() for k in opt}}
# what each hyper-parameter must be (as torch.optim requires, but lr > 0): in words, and the test
VALID = {"lr": ("a number > 0", lambda v: v > 0),
         "momentum": ("a number >= 0", lambda v: v >= 0),
         "weight_decay": ("a number >= 0", lambda v: v >= 0),
         "eps": ("a number >= 0", lambda v: v >= 0),
         "beta1": ("a number in [0, 1)", lambda v: 0 <= v < 1),
         "beta2": ("a number in [0, 1)", lambda v: 0 <= v < 1)}


def invalid(key: str, value) -> str | None:
    """What hyper-parameter `key` must be, in words, if `value` is not that; else None."""
    if key == "nesterov":
        return None if isinstance(value, bool) else "true or false"
    words, ok = VALID[key]
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max
    return None if number and ok(value) else words


def hyper_parameters(spec: dict) -> dict:
    """`spec` ({"name": ..., hyper-parameter: value, ...}) checked and completed with the
    defaults: {"name": ..., "lr": ..., ...}. Raises OdcError."""
    spec = dict(spec)
    kind = spec.pop("name", None)
    if kind not in OPTIMIZERS:
        raise OdcError(f"unknown optimizer '{kind}'; odc knows {', '.join(OPTIMIZERS)}")
    unknown = set(spec) - set(OPTIMIZERS[kind])
    if unknown:
        raise OdcError(f"{kind} has no option {', '.join(sorted(unknown))}; "
                       f"its options are {', '.join(OPTIMIZERS[kind])}")
    hp = {**OPTIMIZERS[kind], **spec}
    for key, value in hp.items():
        if key == "lr" and value is None:
            raise OdcError(f"{kind} needs a learning rate lr")
        problem = invalid(key, value)
        if problem:
            raise OdcError(f"{kind}: {key} must be {problem}, got {value!r}")
    if hp.get("nesterov") and hp["momentum"] == 0:
        raise OdcError("sgd: nesterov needs a momentum > 0")
    return {"name": kind, **hp}


def run(g: Graph, name: str | None = None, **settings) -> Graph:
    """`name` ("sgd", "adam", "adamw") and hyper-parameters as `settings`; by default the train
    block's optimizer, with `settings` replacing some of its hyper-parameters."""
    spec = dict(g.meta.get("recipe", {}).get("optimizer") or DEFAULT)
    hp = hyper_parameters({"name": name, **settings} if name and name != spec["name"] else {**spec, **settings})
    g = g.copy()
    g.name = f"{g.name}.train_step"
    states: list[tuple[int, int]] = []  # (state node, its next value), in creation order
    kind = hp["name"]
    update = _sgd(g, hp, states) if kind == "sgd" else _adam(g, hp, states, decoupled=kind == "adamw")
    carried = [(n, v) for n, v in g.outputs if n.startswith("new.")]  # from autodiff
    g.outputs = [("loss", g.output("loss")), ("logits", g.output("logits"))] + [
        (f"new.{p.name}", update[p.id]) for p in g.params()] + carried + [
        (f"new.{g.node(s).name}", v) for s, v in states]
    return dce.run(g)


def _state(g: Graph, name: str, type: TensorType, init: str = "zeros") -> int:
    return g.add("state", attrs={"init": init}, type=type, name=name)


def _axpy(e: Emit, a: float, x: int, y: int) -> int:
    """a*x + y with a compile-time scalar a."""
    return e("add", e("mul", x, e.const(a, e.dtype(x))), y)


def _sgd(g: Graph, hp: dict, states: list) -> dict[int, int]:
    new = {}
    for p in g.params():
        e, grad = Emit(g, p.span), g.output(f"grad.{p.name}")
        if hp["weight_decay"]:
            grad = _axpy(e, hp["weight_decay"], p.id, grad)
        if hp["momentum"]:
            buf = _state(g, f"{p.name}.momentum_buffer", p.type)
            states.append((buf, _axpy(e, hp["momentum"], buf, grad)))
            grad = _axpy(e, hp["momentum"], states[-1][1], grad) if hp["nesterov"] else states[-1][1]
        new[p.id] = _axpy(e, -hp["lr"], grad, p.id)
    return new


def _adam(g: Graph, hp: dict, states: list, decoupled: bool) -> dict[int, int]:
    b1, b2, wd, lr = hp["beta1"], hp["beta2"], hp["weight_decay"], hp["lr"]
    dt = g.type(g.output("loss")).dtype
    e = Emit(g)
    one = e.const(1, dt)
    bias_corrections = []  # 1 - b^t for b = b1, b2
    for k, b in ((1, b1), (2, b2)):
        power = _state(g, f"adam.beta{k}_power", TensorType(dt, ()), "ones")
        states.append((power, e("mul", power, e.const(b, dt))))
        bias_corrections.append(e("sub", one, states[-1][1]))
    step_size = e("div", e.const(lr, dt), bias_corrections[0])
    sqrt_bc2 = e("sqrt", bias_corrections[1])
    new = {}
    for p in g.params():
        e, grad, param = Emit(g, p.span), g.output(f"grad.{p.name}"), p.id
        if wd and decoupled:
            param = e("mul", param, e.const(1 - lr * wd, dt))
        elif wd:
            grad = _axpy(e, wd, p.id, grad)
        m, v = _state(g, f"{p.name}.exp_avg", p.type), _state(g, f"{p.name}.exp_avg_sq", p.type)
        m_new = e("add", e("mul", m, e.const(b1, dt)), e("mul", grad, e.const(1 - b1, dt)))
        v_new = e("add", e("mul", v, e.const(b2, dt)), e("mul", e("mul", grad, grad), e.const(1 - b2, dt)))
        states += [(m, m_new), (v, v_new)]
        denom = e("add", e("div", e("sqrt", v_new), sqrt_bc2), e.const(hp["eps"], dt))
        new[p.id] = e("sub", param, e("mul", e("div", m_new, denom), step_size))
    return new
