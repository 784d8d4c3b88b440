"""Optimizer lowering: the loss-and-gradients graph becomes one training step.

The optimizer of the train block (default `sgd(lr=0.01)`) is written out as elementwise ops
(`mul`, `add`, `sub`, `div`, `sqrt`, `exp` and scalar `const`s), so that a fusion pass can turn
each parameter's update into one loop. Its state becomes explicit: `state` arguments, zero at
the start, whose next values are outputs, so one call of the graph is one step:

- `sgd(lr, momentum=0, nesterov=false, weight_decay=0)`, as torch.optim.SGD (no dampening):
  g = grad + wd*p; buf = momentum*buf + g (state `<param>.momentum_buffer`);
  g = g + momentum*buf with nesterov, else buf; p = p - lr*g.
- `adam(lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0)`, as torch.optim.Adam:
  t = step + 1 (state `step`, a scalar shared by all parameters); g = grad + wd*p;
  m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g (states `<param>.exp_avg`, `.exp_avg_sq`);
  p = p - lr/(1 - b1^t) * m / (sqrt(v)/sqrt(1 - b2^t) + eps), with b^t = exp(t*ln b).
- `adamw(...)`: Adam with decoupled decay (default weight_decay=0.01, as torch.optim.AdamW):
  p is first scaled by 1 - lr*wd, and the decay is not added to the gradient.

Outputs: `loss`, `logits`, then `new.<param>` for each parameter and `new.<state>` for each
state (those autodiff made first), in the order of the `state` arguments. The gradients are no
longer outputs.
"""
from __future__ import annotations

from math import log

from odc.errors import OdcError
from odc.ir.graph import Graph, TensorType
from odc.ir.passes import dce
from odc.ir.vjp import Emit

name = "optimizer"

DEFAULTS = {
    "sgd": {"lr": 0.01, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    "adam": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
}


def run(g: Graph, optimizer: dict | None = None) -> Graph:
    """`optimizer` is {"name": "sgd" | "adam" | "adamw", hyper-parameter: value, ...}; by
    default the train block's."""
    spec = dict(optimizer or g.meta.get("recipe", {}).get("optimizer") or {"name": "sgd"})
    kind = spec.pop("name")
    if kind not in DEFAULTS:
        raise OdcError(f"unknown optimizer '{kind}'; odc knows {', '.join(DEFAULTS)}")
    unknown = set(spec) - set(DEFAULTS[kind])
    if unknown:
        raise OdcError(f"{kind} has no option {', '.join(sorted(unknown))}; "
                       f"its options are {', '.join(DEFAULTS[kind])}")
    hp = {**DEFAULTS[kind], **spec}
    g = g.copy()
    states: list[tuple[int, int]] = []  # (state node, its next value), in creation order
    update = _sgd(g, hp, states) if kind == "sgd" else _adam(g, hp, states, decoupled=kind == "adamw")
    carried = [(n, v) for n, v in g.outputs if n.startswith("new.")]  # from autodiff
    g.outputs = [("loss", g.output("loss")), ("logits", g.output("logits"))] + [
        (f"new.{p.name}", update[p.id]) for p in g.params()] + carried + [
        (f"new.{g.node(s).name}", v) for s, v in states]
    return dce.run(g)


def _state(g: Graph, name: str, type: TensorType) -> int:
    return g.add("state", attrs={"init": "zeros"}, type=type, name=name)


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
    step = _state(g, "step", TensorType(dt, ()))
    t = e("add", step, e.const(1, dt))
    states.append((step, t))
    one = e.const(1, dt)
    step_size = e("div", e.const(lr, dt), e("sub", one, e("exp", e("mul", t, e.const(log(b1), dt)))))
    sqrt_bc2 = e("sqrt", e("sub", one, e("exp", e("mul", t, e.const(log(b2), dt)))))
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
