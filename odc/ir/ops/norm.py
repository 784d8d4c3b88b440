"""Normalisation layers, as `torch.nn.BatchNorm1d`, `BatchNorm2d` and `LayerNorm` define them.

Each creates its weight (ones) and bias (zeros) and is one op `NAME(x, weight, bias)` whose
attributes are the non-default `momentum` and `eps` (absent: 0.1 and 1e-5, PyTorch's).

- `batchnorm2d` on [N, C, H, W] and `batchnorm1d` on [N, F] (or [N, C, L]) normalise each
  channel (axis 1) over every other axis. The op itself uses the batch's statistics (biased
  variance), as in training; such an op says `training="state"` and has a `Running` entry in
  `RUNNING` (its channel axis; the statistics are taken over the other axes): the train-mode
  pass turns it into its training form, `batchnorm_train(x, weight, bias,
  batchnorm_stats(x))`, gives it running mean and variance as state and outputs their next
  values ((1 - momentum) * running + momentum * batch statistic, the variance unbiased); the
  inference pass makes it normalise with them.
- `layernorm` normalises each position over the last axis (biased variance), the same in
  training and evaluation; weight and bias are [F], F the size of the last axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from odc.ir.graph import TensorType
from odc.ir.ops.core import Arg, ShapeError, builtin, count, register, require_float

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


def _batchnorm_grads(e, x, gamma, dy, stats: int, eps_: float) -> tuple:
    """(dx, dgamma, dbeta) of a batch norm over axis 1 of `x` (as `_normalise_vjp`) whose
    statistics `stats` are batchnorm_stats(x), their dependence on x included, with the
    per-channel sums in one pass over the data (`batchnorm_grad_sums`: sum(dy), sum(dy * (x -
    mean))). With rstd = 1 / sqrt(var + eps), a = gamma * rstd and n values per channel:
    dx = dy * a + (x - mean) * b + c, b = -a * rstd^2 * sum(dy * (x - mean)) / n,
    c = -a * sum(dy) / n; dgamma = rstd * sum(dy * (x - mean)), dbeta = sum(dy). Everything but
    the sums and dx is a [C] vector."""
    lay, rank, dt = Running(), len(e.shape(x)), e.dtype(x)
    per_channel = lay.per_channel(rank, e.shape(gamma)[0])

    def spread(v):
        return e("reshape", v, shape=per_channel)
    sums = e("batchnorm_grad_sums", dy, x, stats)
    mean, var = row(e, stats, 0), row(e, stats, 1)
    sum_dy, sum_dyxc = row(e, sums, 0), row(e, sums, 1)
    rstd = e("div", e.const(1, dt), e("sqrt", e("add", var, e.const(eps_, dt))))
    a = e("mul", gamma, rstd)
    inv_n = e("div", e.const(1, dt), count(e, e.shape(x), lay.axes(rank), dt))
    b = e("neg", e("mul", e("mul", a, e("mul", rstd, rstd)), e("mul", sum_dyxc, inv_n)))
    c = e("neg", e("mul", a, e("mul", sum_dy, inv_n)))
    dx = e("add", e("mul", dy, spread(a)), e("add", e("mul", e("sub", x, spread(mean)), spread(b)), spread(c)))
    return dx, e("mul", sum_dyxc, rstd), sum_dy


def _batchnorm_vjp(e, n, y, dy):
    x, gamma = n.args[:2]
    return _batchnorm_grads(e, x, gamma, dy, e("batchnorm_stats", x), eps(n.attrs))


def row(e, pair: int, k: int) -> int:
    """Row k of a [2, C] node of per-channel values, as a [C] vector."""
    return e("reshape", e("slice", pair, axis=0, start=k, stop=k + 1), shape=[e.shape(pair)[1]])


def _stats_infer(ts, attrs):
    x = ts[0]
    if x.rank < 2 or not x.is_float:
        raise ShapeError(f"batchnorm_stats expects a floating-point [batch, channels, ...] tensor, got {x}")
    return TensorType(x.dtype, (2, x.shape[1]))


def _stats_ref(x, attrs):
    axes = tuple(Running().axes(x.ndim))
    return np.stack([x.mean(axis=axes, dtype=np.float64), x.var(axis=axes, dtype=np.float64)]).astype(x.dtype)


def _grad_sums_infer(ts, attrs):
    dy, x, stats = ts
    if dy != x or stats != _stats_infer([x], {}):
        raise ShapeError(f"batchnorm_grad_sums expects dy and x of one type and their [2, C] statistics, "
                         f"got {dy}, {x} and {stats}")
    return stats


def _grad_sums_ref(dy, x, stats, attrs):
    axes, c = tuple(Running().axes(x.ndim)), Running().per_channel(x.ndim, -1)
    xc = x.astype(np.float64) - stats[0].astype(np.float64).reshape(c)
    return np.stack([dy.sum(axis=axes, dtype=np.float64), (dy * xc).sum(axis=axes)]).astype(x.dtype)


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
    register(_op, _batchnorm_infer(_op), _batchnorm_ref(_op), _batchnorm_vjp, training="state", codegen="rewritten")
    builtin(_op, _batchnorm_build(_op), Arg("x", "tensor"), Arg("momentum", "number", MOMENTUM),
            Arg("eps", "positive", EPS), params=True)


def _train_infer(ts, attrs):
    x, stats = ts[0], ts[3]
    if stats != _stats_infer([x], {}):
        raise ShapeError(f"batchnorm_train expects the [2, C] statistics of its input {x}, got {stats}")
    _check_params("batchnorm_train", ts[:3], x.shape[1])
    return x


def _train_ref(x, gamma, beta, stats, attrs):
    c = Running().per_channel(x.ndim, -1)
    y = (x - stats[0].reshape(c)) / np.sqrt(stats[1].reshape(c) + eps(attrs))
    return (y * gamma.reshape(c) + beta.reshape(c)).astype(x.dtype, copy=False)


def _train_vjp(e, n, y, dy):
    x, gamma, _, stats = n.args
    return (*_batchnorm_grads(e, x, gamma, dy, stats, eps(n.attrs)), None)


# The training form of a batch norm (the train-mode pass makes it): batchnorm_stats(x) = [mean,
# biased variance] per index of axis 1 over all other axes, a [2, C] tensor accumulated in double;
# batchnorm_train(x, weight, bias, stats) {eps} normalises x with them. stats must be
# batchnorm_stats(x): the gradient of batchnorm_train is the batch norm's, through the statistics
# too, and stats gets none. Its code runs example by example, so an epilogue (ReLU, a residual
# add) fuses into it. batchnorm_grad_sums(dy, x, stats) = [sum(dy), sum(dy * (x - mean))] per
# channel, for the gradient.
register("batchnorm_stats", _stats_infer, _stats_ref)
register("batchnorm_train", _train_infer, _train_ref, _train_vjp, codegen="anchor")
register("batchnorm_grad_sums", _grad_sums_infer, _grad_sums_ref)


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
