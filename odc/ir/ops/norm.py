"""Normalisation layers, as `torch.nn.BatchNorm1d`, `BatchNorm2d` and `LayerNorm` define them.

Each creates its weight (ones) and bias (zeros) and is one op `NAME(x, weight, bias)` whose
attributes are the non-default `momentum` and `eps` (absent: 0.1 and 1e-5, PyTorch's).

- `batchnorm2d` on [N, C, H, W] and `batchnorm1d` on [N, F] (or [N, C, L]) normalise each
  channel (axis 1) over every other axis. The op itself uses the batch's statistics (biased
  variance), as in training; such an op says `training="state"` and has a `Running` entry in
  `RUNNING` (its channel axis; the statistics are taken over the other axes): the train-mode
  pass gives it running mean and variance as state and outputs their next values
  ((1 - momentum) * running + momentum * batch statistic, the variance unbiased), and the
  inference pass makes it normalise with them.
- `layernorm` normalises each position over the last axis (biased variance), the same in
  training and evaluation; weight and bias are [F], F the size of the last axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from odc.ir.graph import TensorType
from odc.ir.ops.core import Arg, ShapeError, builtin, register, require_float

MOMENTUM, EPS = 0.1, 1e-5  # PyTorch's defaults


@dataclass(frozen=True)
class Running:
    """How an op with running statistics (`training="state"`) normalises: each index of its
    input's `channel` axis over all the other axes (`axes(rank)`); its operands are
    (x, weight, bias) with weight and bias of shape [C], and its type is its input's."""
    channel: int = 1

    def axes(self, rank: int) -> list[int]:
        return [a for a in range(rank) if a != self.channel]

    def per_channel(self, rank: int, c) -> list:
        """The shape [1, ..., C, ..., 1] that broadcasts a [C] vector along the channel axis."""
        return [c if a == self.channel else 1 for a in range(rank)]


RUNNING: dict[str, Running] = {}


def running(op: str) -> Running:
    """The layout of an op with `training="state"`."""
    return RUNNING[op]


def momentum(attrs: dict) -> float:
    return float(attrs.get("momentum", MOMENTUM))


def eps(attrs: dict) -> float:
    return float(attrs.get("eps", EPS))


def _check_attrs(op: str, attrs: dict) -> None:
    if not 0 <= momentum(attrs) <= 1:
        raise ShapeError(f"{op}: momentum must be in [0, 1], got {attrs['momentum']}",
                         "the running statistics move by momentum times the batch's: 0.1 is PyTorch's default")
    if not eps(attrs) > 0:
        raise ShapeError(f"{op}: eps must be a positive number, got {attrs['eps']}")


def _check_params(op: str, ts, size) -> None:
    for t, role in zip(ts[1:], ("weight", "bias")):
        if t.shape != (size,) or t.dtype != ts[0].dtype:
            raise ShapeError(f"{op} {role} {t} does not match input {ts[0]}")


def _attrs(a: dict, *names: str) -> dict:
    """The node's attributes: the arguments that differ from PyTorch's defaults."""
    default = {"momentum": MOMENTUM, "eps": EPS}
    return {k: a[k] for k in names if a[k] != default[k]}


# -- batch norm -------------------------------------------------------------------------------
LAYOUTS = {"batchnorm2d": {4: "[batch, channels, height, width]"},
           "batchnorm1d": {2: "[batch, features]", 3: "[batch, channels, length]"}}
HINTS = {"batchnorm2d": "batchnorm1d normalises [batch, features]",
         "batchnorm1d": "batchnorm2d normalises images [batch, channels, height, width]"}


def _batchnorm_infer(op: str):
    def infer(ts, attrs):
        x = ts[0]
        if x.rank not in LAYOUTS[op]:
            layouts = " or ".join(f"a {r}-D input {lay}" for r, lay in LAYOUTS[op].items())
            raise ShapeError(f"{op} expects {layouts}, got {x}", HINTS[op] if x.rank > 1 else None)
        require_float(x, op)
        _check_attrs(op, attrs)
        _check_params(op, ts, x.shape[running(op).channel])
        return x
    return infer


def _batchnorm_ref(op: str):
    def ref(x, gamma, beta, attrs):
        lay = running(op)
        axes, c = tuple(lay.axes(x.ndim)), lay.per_channel(x.ndim, -1)
        mean = x.mean(axis=axes, keepdims=True)
        var = x.var(axis=axes, keepdims=True)
        y = (x - mean) / np.sqrt(var + eps(attrs))
        return (y * gamma.reshape(c) + beta.reshape(c)).astype(x.dtype, copy=False)
    return ref


def _normalise_vjp(e, x, gamma, dy, axes: list, c: list, outer: list, eps_: float) -> tuple:
    """The gradients of y = xhat * gamma + beta, xhat = (x - mean) / sqrt(var + eps) with the
    (biased) statistics over `axes` and gamma, beta reshaped to `c`:
    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps) with g = dy * gamma;
    dgamma = sum(dy * xhat), dbeta = sum(dy) over `outer`, the axes gamma is broadcast along."""
    xc = e("sub", x, e("mean", x, axis=axes, keepdims=True))
    var = e("mean", e("mul", xc, xc), axis=axes, keepdims=True)
    std = e("sqrt", e("add", var, e.const(eps_, e.dtype(x))))
    xhat = e("div", xc, std)
    g = e("mul", dy, e("reshape", gamma, shape=c))
    dx = e("sub", e("sub", g, e("mean", g, axis=axes, keepdims=True)),
           e("mul", xhat, e("mean", e("mul", g, xhat), axis=axes, keepdims=True)))
    if not outer:  # gamma has x's shape (layernorm of a vector)
        return e("div", dx, std), e("mul", dy, xhat), dy
    return e("div", dx, std), e("sum", e("mul", dy, xhat), axis=outer), e("sum", dy, axis=outer)


def _batchnorm_vjp(e, n, y, dy):
    x, gamma = n.args[:2]
    lay, rank = running(n.op), len(e.shape(x))
    axes = lay.axes(rank)
    return _normalise_vjp(e, x, gamma, dy, axes, lay.per_channel(rank, e.shape(gamma)[0]), axes, eps(n.attrs))


def _batchnorm_build(op: str):
    def build(b, a):
        xt = b.type(a["x"])
        c = TensorType(xt.dtype, (b.features(xt, xt.rank if xt.rank in LAYOUTS[op] else min(LAYOUTS[op])),))
        return b.layer(op, a["x"], [("weight", c, {"init": "ones"}), ("bias", c, {"init": "zeros"})],
                       _attrs(a, "momentum", "eps"))
    return build


# batch statistics here; the train-mode pass adds the running statistics, inference uses them
for _op in ("batchnorm2d", "batchnorm1d"):
    RUNNING[_op] = Running(channel=1)
    register(_op, _batchnorm_infer(_op), _batchnorm_ref(_op), _batchnorm_vjp, training="state")
    builtin(_op, _batchnorm_build(_op), Arg("x", "tensor"), Arg("momentum", "number", MOMENTUM),
            Arg("eps", "positive", EPS), params=True)


# -- layer norm -------------------------------------------------------------------------------
def _layernorm_infer(ts, attrs):
    x = ts[0]
    if x.rank < 1:
        raise ShapeError(f"layernorm normalises over the last axis and expects a tensor of at least 1 "
                         f"dimension, e.g. [batch, features], got the scalar {x}")
    require_float(x, "layernorm")
    _check_attrs("layernorm", attrs)
    _check_params("layernorm", ts, x.shape[-1])
    return x


def _layernorm_ref(x, gamma, beta, attrs):
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps(attrs)) * gamma + beta).astype(x.dtype, copy=False)


def _layernorm_vjp(e, n, y, dy):
    x, gamma = n.args[:2]
    rank = len(e.shape(x))
    return _normalise_vjp(e, x, gamma, dy, [rank - 1], [1] * (rank - 1) + [e.shape(gamma)[0]],
                          list(range(rank - 1)), eps(n.attrs))


def _layernorm(b, a):
    xt = b.type(a["x"])
    f = xt.shape[-1] if xt.rank else 1  # a scalar: the type rule reports it
    if not isinstance(f, int):
        b.fail(f"layernorm needs a known size of the last dimension to create its weights, got {xt}")
    c = TensorType(xt.dtype, (f,))
    return b.layer("layernorm", a["x"], [("weight", c, {"init": "ones"}), ("bias", c, {"init": "zeros"})],
                   _attrs(a, "eps"))


register("layernorm", _layernorm_infer, _layernorm_ref, _layernorm_vjp)
builtin("layernorm", _layernorm, Arg("x", "tensor"), Arg("eps", "positive", EPS), params=True)
