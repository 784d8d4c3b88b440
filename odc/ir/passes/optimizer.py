"""Optimizer lowering: the loss-and-gradients graph becomes one training step.

The optimizer of the train block (default `sgd(lr=0.01)`) is written out as elementwise ops
(`mul`, `add`, `sub`, `div`, `sqrt`, `gt` and scalar `const`s; LARS adds a `sum` over all axes
for its norms), so that a fusion pass can turn each parameter's update into one loop. Its state becomes explicit: `state` arguments, zero at the
start unless said otherwise, whose next values are outputs, so one call of the graph is one step:

- `sgd(lr, momentum=0, dampening=0, nesterov=false, weight_decay=0)`, as torch.optim.SGD:
  g = grad + wd*p; buf = momentum*buf + (1-dampening)*g (state `<param>.momentum_buffer`), except
  at the first step, where buf = g; g = g + momentum*buf with nesterov, else buf; p = p - lr*g.
  With a dampening (and a momentum) the first step is known by a scalar state `sgd.first_step`,
  one at the start and zero after it: buf = momentum*buf + (1 - dampening + dampening*first)*g.
  Without one buf starts at zero and momentum*0 + g is already g. Nesterov needs dampening 0.
- `adam(lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0)`, as torch.optim.Adam:
  g = grad + wd*p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g (states `<param>.exp_avg`,
  `.exp_avg_sq`); p = p - lr/(1 - b1^t) * m / (sqrt(v)/sqrt(1 - b2^t) + eps) at step t. The
  powers b1^t and b2^t are two scalar states shared by all parameters, `adam.beta1_power` and
  `adam.beta2_power` (one at the start), each multiplied by its beta at every step.
- `adamw(...)`: Adam with decoupled decay (default weight_decay=0.01, as torch.optim.AdamW):
  p is first scaled by 1 - lr*wd, and the decay is not added to the gradient.
- `rmsprop(lr, alpha=0.99, eps=1e-8, momentum=0, centered=false, weight_decay=0)`, as
  torch.optim.RMSprop: g = grad + wd*p; sq = alpha*sq + (1-alpha)*g*g (`<param>.square_avg`);
  centered: ga = alpha*ga + (1-alpha)*g (`<param>.grad_avg`), avg = sqrt(sq - ga*ga) + eps,
  else avg = sqrt(sq) + eps; with momentum buf = momentum*buf + g/avg
  (`<param>.momentum_buffer`), p = p - lr*buf, else p = p - lr*g/avg.
- `adagrad(lr, lr_decay=0, eps=1e-10, weight_decay=0)`, as torch.optim.Adagrad (initial
  accumulator 0): g = grad + wd*p; sum = sum + g*g (`<param>.sum`);
  p = p - lr/(1 + (t-1)*lr_decay) * g/(sqrt(sum) + eps) at step t, from a scalar state
  `adagrad.step` (zero at the start, t-1 during step t, one more after it).
- `adadelta(lr=1, rho=0.9, eps=1e-6, weight_decay=0)`, as torch.optim.Adadelta: g = grad + wd*p;
  sq = rho*sq + (1-rho)*g*g (`<param>.square_avg`); d = sqrt(acc + eps)/sqrt(sq + eps) * g;
  acc = rho*acc + (1-rho)*d*d (`<param>.acc_delta`); p = p - lr*d.
- `lars(lr, momentum=0.9, trust=0.001, weight_decay=0)`, LARS as You et al. 2017 ("Large batch
  training of convolutional networks", algorithm 1), per parameter tensor p of rank 2 or more:
  local = trust*||p|| / (||grad|| + wd*||p||), or 1 where ||p|| or ||grad|| is 0 (Euclidean
  norms over the whole tensor); v = momentum*v + lr*local*(grad + wd*p) (`<param>.momentum_buffer`,
  only with a momentum); p = p - v. Parameters of rank 0 or 1 (biases, batch- and layer-norm
  scales and shifts) are excluded from the adaptation and from the decay: v = momentum*v + lr*grad,
  p = p - v (plain momentum SGD).

The learning rate is not a constant of the code: it is a scalar `input` `optimizer.lr`
(attribute `schedule=lr`) that the runtime feeds at every step, so that a schedule changes it
without compiling again; `lr` above stands for it, the other hyper-parameters are constants.

Two options of the train block act on the gradients before the optimizer sees them:
- `accumulate = k` (k > 1): a scalar state `accumulate.count` counts the steps since the last
  update and a state `<param>.grad_sum` per parameter sums grad/k, as PyTorch's loop with
  `(loss / k).backward()` sums `.grad`. At the k-th step (count + 1 = k, a mask `apply`), the
  optimizer runs on the sums; every parameter and optimizer state takes its new value through
  `where(apply, new, old)`, and count and sums restart at zero; at the other steps they keep
  their values while count and sums grow. The loss output is the step's own batch loss.
- `clip_grad_norm = c`, as torch.nn.utils.clip_grad_norm_: total = sqrt(sum over all
  parameters of sum(grad^2)) (of the sums, with accumulation), and every gradient is multiplied
  by min(1, c / (total + 1e-6)).

The hyper-parameters are checked as torch.optim checks them (`hyper_parameters`); the front end
reports the same problems at their place in the train block. The step is named
`<model>.train_step`. Outputs: `loss`, `logits`, then `new.<param>` for each parameter and
`new.<state>` for each state (those autodiff made first), in the order of the `state`
arguments. The gradients are no longer outputs. No parameter can be named like Adam's powers
or the learning rate: the front end's names have no dot, or a digit before it.
"""
from __future__ import annotations

import sys

from functools import reduce

from odc.errors import OdcError
from odc.ir.graph import Graph, TensorType
from odc.ir.passes import dce
from odc.ir.ops import Emit

name = "optimizer"
summary = "write the train block's optimizer update as elementwise ops over explicit state arguments"
requires = ("autodiff",)

# each optimizer's hyper-parameters and their defaults (PyTorch's); lr has none
OPTIMIZERS = {
    "sgd": {"lr": None, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
    "adam": {"lr": None, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": None, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
    "rmsprop": {"lr": None, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False, "weight_decay": 0.0},
    "adagrad": {"lr": None, "lr_decay": 0.0, "eps": 1e-10, "weight_decay": 0.0},
    "adadelta": {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0},
    "lars": {"lr": None, "momentum": 0.9, "trust": 0.001, "weight_decay": 0.0},
}
BOOLEAN = {"nesterov", "centered"}  # true or false; every other hyper-parameter is a number
DEFAULT = {"name": "sgd", "lr": 0.01}  # the optimizer of a model without a train block
LR = "optimizer.lr"  # the step's learning-rate input
options = {"name": f"{', '.join(OPTIMIZERS)} (default: the train block's)",
           "clip_grad_norm": "clip the global gradient norm to this (default: the train block's)",
           "accumulate": "update every k-th step with the mean gradient of k (default: the train block's)",
           **{k: "a hyper-parameter of the optimizer" for opt in OPTIMIZERS.values() for k in opt}}
# what each hyper-parameter must be (as torch.optim requires, but lr > 0, dampening in [0, 1]
# and LARS's trust > 0): in words, and the test
VALID = {"lr": ("a number > 0", lambda v: v > 0),
         "momentum": ("a number >= 0", lambda v: v >= 0),
         "weight_decay": ("a number >= 0", lambda v: v >= 0),
         "eps": ("a number >= 0", lambda v: v >= 0),
         "beta1": ("a number in [0, 1)", lambda v: 0 <= v < 1),
         "beta2": ("a number in [0, 1)", lambda v: 0 <= v < 1),
         "dampening": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
         "alpha": ("a number >= 0", lambda v: v >= 0),
         "lr_decay": ("a number >= 0", lambda v: v >= 0),
         "rho": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
         "trust": ("a number > 0", lambda v: v > 0),
         "clip_grad_norm": ("a number > 0", lambda v: v > 0)}


def invalid(key: str, value) -> str | None:
    """What hyper-parameter `key` must be, in words, if `value` is not that; else None."""
    if key in BOOLEAN:
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
    if hp.get("nesterov") and hp["dampening"] != 0:
        raise OdcError("sgd: nesterov needs dampening = 0")
    return {"name": kind, **hp}


def run(g: Graph, name: str | None = None, clip_grad_norm: float | None = None, accumulate: int | None = None,
        **settings) -> Graph:
    """`name` (a key of OPTIMIZERS) and hyper-parameters as `settings`; by default the train
    block's optimizer, with `settings` replacing some of its hyper-parameters. `clip_grad_norm`
    and `accumulate` default to the train block's too."""
    recipe = g.meta.get("recipe", {})
    spec = dict(recipe.get("optimizer") or DEFAULT)
    hp = hyper_parameters({"name": name, **settings} if name and name != spec["name"] else {**spec, **settings})
    clip = recipe.get("clip_grad_norm") if clip_grad_norm is None else clip_grad_norm
    accumulate = recipe.get("accumulate", 1) if accumulate is None else accumulate
    if clip is not None and invalid("clip_grad_norm", clip):
        raise OdcError(f"clip_grad_norm must be {invalid('clip_grad_norm', clip)}, got {clip!r}")
    if not (isinstance(accumulate, int) and not isinstance(accumulate, bool) and accumulate >= 1):
        raise OdcError(f"accumulate must be an integer >= 1, got {accumulate!r}")
    g = g.copy()
    g.name = f"{g.name}.train_step"
    states: list[tuple[int, int]] = []  # (state node, its next value), in creation order
    dt = g.type(g.output("loss")).dtype
    lr = g.add("input", attrs={"schedule": "lr"}, type=TensorType(dt, ()), name=LR)
    grads = {p.id: g.output(f"grad.{p.name}") for p in g.params()}
    apply = _accumulated(g, grads, accumulate, states) if accumulate > 1 else None
    accumulators = len(states)  # the states that change at every step
    if clip is not None:
        _clip(g, grads, clip)
    kind = hp["name"]
    if kind in ("adam", "adamw"):
        update = _adam(g, hp, lr, grads, states, decoupled=kind == "adamw")
    else:
        update = {"sgd": _sgd, "rmsprop": _rmsprop, "adagrad": _adagrad, "adadelta": _adadelta,
                  "lars": _lars}[kind](g, hp, lr, grads, states)
    if apply is not None:  # only every k-th step updates; the accumulators update at every step
        e = Emit(g)
        update = {p: e("where", apply, u, p) for p, u in update.items()}
        states[accumulators:] = [(s, e("where", apply, v, s)) for s, v in states[accumulators:]]
    carried = [(n, v) for n, v in g.outputs if n.startswith("new.")]  # from autodiff
    g.outputs = [("loss", g.output("loss")), ("logits", g.output("logits"))] + [
        (f"new.{p.name}", update[p.id]) for p in g.params()] + carried + [
        (f"new.{g.node(s).name}", v) for s, v in states]
    return dce.run(g)


def _accumulated(g: Graph, grads: dict[int, int], k: int, states: list) -> int:
    """Gradient accumulation over k steps, as PyTorch's loop with `(loss / k).backward()` and an
    optimizer step every k-th batch: a scalar state `accumulate.count` (the steps since the last
    update) and per parameter a state `<param>.grad_sum` (the sum of grad/k since then). Puts
    the sums including this step's gradient into `grads` and returns `apply`, 1 at every k-th
    step and 0 otherwise; the sums restart at zero after an update."""
    e = Emit(g)
    dt = g.type(g.output("loss")).dtype
    count = _state(g, "accumulate.count", TensorType(dt, ()))
    counted = e("add", count, e.const(1, dt))
    apply = e("ge", counted, e.const(k, dt))
    states.append((count, e("where", apply, e.const(0, dt), counted)))
    for p, grad in grads.items():
        node = g.node(p)
        e = Emit(g, node.span)
        total = _state(g, f"{node.name}.grad_sum", node.type)
        grads[p] = e("add", total, e("mul", grad, e.const(1 / k, dt)))
        states.append((total, e("where", apply, e.const(0, dt), grads[p])))
    return apply


def _clip(g: Graph, grads: dict[int, int], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_: the gradients scaled by min(1, max_norm / (total + 1e-6)),
    total the Euclidean norm of all gradients together."""
    e = Emit(g)
    squares = [e("sum", e("mul", x, x)) for x in grads.values()]
    total = e("sqrt", reduce(lambda a, b: e("add", a, b), squares))
    dt = e.dtype(total)
    scale = e("minimum", e("div", e.const(max_norm, dt), e("add", total, e.const(1e-6, dt))), e.const(1, dt))
    for p in grads:
        grads[p] = Emit(g, g.node(p).span)("mul", grads[p], scale)


def _state(g: Graph, name: str, type: TensorType, init: str = "zeros") -> int:
    return g.add("state", attrs={"init": init}, type=type, name=name)


def _axpy(e: Emit, a: float, x: int, y: int) -> int:
    """a*x + y with a compile-time scalar a."""
    return e("add", e("mul", x, e.const(a, e.dtype(x))), y)


def _scalar_state(g: Graph, name: str, init: str, states: list, step) -> int:
    """A scalar state shared by all parameters: its value during the step (the node) and, as
    its next value, step(e, value)."""
    dt = g.type(g.output("loss")).dtype
    e = Emit(g)
    s = _state(g, name, TensorType(dt, ()), init)
    states.append((s, step(e, s)))
    return s


def _descend(e: Emit, p: int, lr: int, step: int) -> int:
    """p - lr*step."""
    return e("sub", p, e("mul", step, lr))


def _sgd(g: Graph, hp: dict, lr: int, grads: dict, states: list) -> dict[int, int]:
    new = {}
    damped = None  # the factor of the gradient in the buffer's update, where not 1
    if hp["momentum"] and hp["dampening"]:
        first = _scalar_state(g, "sgd.first_step", "ones", states,
                              lambda e, s: e("mul", s, e.const(0, e.dtype(s))))
        e = Emit(g)
        damped = _axpy(e, hp["dampening"], first, e.const(1 - hp["dampening"], e.dtype(first)))
    for p in g.params():
        e = Emit(g, p.span)
        grad = _decayed(e, hp, p.id, grads[p.id])
        if hp["momentum"]:
            buf = _state(g, f"{p.name}.momentum_buffer", p.type)
            step = grad if damped is None else e("mul", grad, damped)
            states.append((buf, _axpy(e, hp["momentum"], buf, step)))
            grad = _axpy(e, hp["momentum"], states[-1][1], grad) if hp["nesterov"] else states[-1][1]
        new[p.id] = _descend(e, p.id, lr, grad)
    return new


def _adam(g: Graph, hp: dict, lr: int, grads: dict, states: list, decoupled: bool) -> dict[int, int]:
    b1, b2, wd = hp["beta1"], hp["beta2"], hp["weight_decay"]
    dt = g.type(g.output("loss")).dtype
    e = Emit(g)
    one = e.const(1, dt)
    bias_corrections = []  # 1 - b^t for b = b1, b2
    for k, b in ((1, b1), (2, b2)):
        power = _state(g, f"adam.beta{k}_power", TensorType(dt, ()), "ones")
        states.append((power, e("mul", power, e.const(b, dt))))
        bias_corrections.append(e("sub", one, states[-1][1]))
    step_size = e("div", lr, bias_corrections[0])
    sqrt_bc2 = e("sqrt", bias_corrections[1])
    new = {}
    for p in g.params():
        e, grad, param = Emit(g, p.span), grads[p.id], p.id
        if wd and decoupled:
            param = e("mul", param, e("sub", one, e("mul", lr, e.const(wd, dt))))
        elif wd:
            grad = _axpy(e, wd, p.id, grad)
        m, v = _state(g, f"{p.name}.exp_avg", p.type), _state(g, f"{p.name}.exp_avg_sq", p.type)
        m_new = e("add", e("mul", m, e.const(b1, dt)), e("mul", grad, e.const(1 - b1, dt)))
        v_new = e("add", e("mul", v, e.const(b2, dt)), e("mul", e("mul", grad, grad), e.const(1 - b2, dt)))
        states += [(m, m_new), (v, v_new)]
        denom = e("add", e("div", e("sqrt", v_new), sqrt_bc2), e.const(hp["eps"], dt))
        new[p.id] = e("sub", param, e("mul", e("div", m_new, denom), step_size))
    return new


def _decayed(e: Emit, hp: dict, p: int, grad: int) -> int:
    """grad + weight_decay * p."""
    return _axpy(e, hp["weight_decay"], p, grad) if hp["weight_decay"] else grad


def _ema(e: Emit, rate: float, avg: int, x: int) -> int:
    """rate*avg + (1-rate)*x."""
    return e("add", e("mul", avg, e.const(rate, e.dtype(avg))), e("mul", x, e.const(1 - rate, e.dtype(x))))


def _rmsprop(g: Graph, hp: dict, lr: int, grads: dict, states: list) -> dict[int, int]:
    new = {}
    for p in g.params():
        e = Emit(g, p.span)
        dt = p.type.dtype
        grad = _decayed(e, hp, p.id, grads[p.id])
        sq = _state(g, f"{p.name}.square_avg", p.type)
        states.append((sq, _ema(e, hp["alpha"], sq, e("mul", grad, grad))))
        var = states[-1][1]
        if hp["centered"]:
            ga = _state(g, f"{p.name}.grad_avg", p.type)
            states.append((ga, _ema(e, hp["alpha"], ga, grad)))
            var = e("sub", var, e("mul", states[-1][1], states[-1][1]))
        step = e("div", grad, e("add", e("sqrt", var), e.const(hp["eps"], dt)))
        if hp["momentum"]:
            buf = _state(g, f"{p.name}.momentum_buffer", p.type)
            states.append((buf, _axpy(e, hp["momentum"], buf, step)))
            step = states[-1][1]
        new[p.id] = _descend(e, p.id, lr, step)
    return new


def _adagrad(g: Graph, hp: dict, lr: int, grads: dict, states: list) -> dict[int, int]:
    t = _scalar_state(g, "adagrad.step", "zeros", states, lambda e, s: e("add", s, e.const(1, e.dtype(s))))
    e = Emit(g)
    dt = e.dtype(t)
    clr = e("div", e("neg", lr), _axpy(e, hp["lr_decay"], t, e.const(1, dt)))  # -lr/(1 + (t-1)*decay)
    new = {}
    for p in g.params():
        e = Emit(g, p.span)
        grad = _decayed(e, hp, p.id, grads[p.id])
        acc = _state(g, f"{p.name}.sum", p.type)
        states.append((acc, e("add", acc, e("mul", grad, grad))))
        std = e("add", e("sqrt", states[-1][1]), e.const(hp["eps"], dt))
        new[p.id] = e("add", p.id, e("mul", e("div", grad, std), clr))
    return new


def _adadelta(g: Graph, hp: dict, lr: int, grads: dict, states: list) -> dict[int, int]:
    new = {}
    for p in g.params():
        e = Emit(g, p.span)
        eps = e.const(hp["eps"], p.type.dtype)
        grad = _decayed(e, hp, p.id, grads[p.id])
        sq, acc = _state(g, f"{p.name}.square_avg", p.type), _state(g, f"{p.name}.acc_delta", p.type)
        sq_new = _ema(e, hp["rho"], sq, e("mul", grad, grad))
        delta = e("mul", e("div", e("sqrt", e("add", acc, eps)), e("sqrt", e("add", sq_new, eps))), grad)
        states += [(sq, sq_new), (acc, _ema(e, hp["rho"], acc, e("mul", delta, delta)))]
        new[p.id] = _descend(e, p.id, lr, delta)
    return new


def lars_adapted(type: TensorType) -> bool:
    """Whether LARS adapts (and decays) a parameter of this type: rank 2 or more; biases and
    normalisation scales and shifts (rank 0 or 1) take plain momentum SGD."""
    return type.rank >= 2


def _lars(g: Graph, hp: dict, lr: int, grads: dict, states: list) -> dict[int, int]:
    new = {}
    for p in g.params():
        e = Emit(g, p.span)
        dt = p.type.dtype
        grad = grads[p.id]
        if lars_adapted(p.type):
            zero, one = e.const(0, dt), e.const(1, dt)
            norm = lambda x: e("sqrt", e("sum", e("mul", x, x)))  # noqa: E731
            w_norm, g_norm = norm(p.id), norm(grad)
            both = e("mul", e("gt", w_norm, zero), e("gt", g_norm, zero))  # 1 where both norms are > 0
            # where one is 0, 1 - both keeps the denominator away from 0 (the ratio is not used)
            denom = e("add", _axpy(e, hp["weight_decay"], w_norm, g_norm), e("sub", one, both))
            ratio = e("div", e("mul", w_norm, e.const(hp["trust"], dt)), denom)
            local = e("add", e("mul", both, ratio), e("sub", one, both))
            step = e("mul", _decayed(e, hp, p.id, grad), e("mul", local, lr))
        else:
            step = e("mul", grad, lr)
        if hp["momentum"]:
            buf = _state(g, f"{p.name}.momentum_buffer", p.type)
            states.append((buf, _axpy(e, hp["momentum"], buf, step)))
            step = states[-1][1]
        new[p.id] = e("sub", p.id, step)
    return new
