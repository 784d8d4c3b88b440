"""Batch normalisation. `batchnorm2d` creates its weight (ones) and bias (zeros) [C]; it normalises
with the batch's statistics, the train-mode pass adds the running statistics, and the inference
pass makes it use them."""
from __future__ import annotations

import numpy as np

from odc.ir.graph import TensorType
from odc.ir.ops.core import Arg, ShapeError, builtin, register, require_rank


# -- normalisation and dropout ----------------------------------------------------------------
def _batchnorm_infer(ts, attrs):
    x = ts[0]
    require_rank(x, 4, "batchnorm2d", "[batch, channels, height, width]")
    for t in ts[1:]:
        if t.shape != (x.shape[1],):
            raise ShapeError(f"batchnorm2d parameter {t} does not match input {x}")
    return x


def _batchnorm_ref(x, gamma, beta, attrs):
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    y = (x - mean) / np.sqrt(var + attrs.get("eps", 1e-5))
    return (y * gamma[None, :, None, None] + beta[None, :, None, None]).astype(x.dtype, copy=False)


def _batchnorm_vjp(e, n, y, dy):
    """y = xhat * gamma + beta with xhat = (x - mean) / sqrt(var + eps) over the batch's N, H, W:
    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps) with g = dy * gamma."""
    x, gamma = n.args[:2]
    dt, axes = e.dtype(x), [0, 2, 3]
    xc = e("sub", x, e("mean", x, axis=axes, keepdims=True))
    var = e("mean", e("mul", xc, xc), axis=axes, keepdims=True)
    std = e("sqrt", e("add", var, e.const(n.attrs.get("eps", 1e-5), dt)))
    xhat = e("div", xc, std)
    g = e("mul", dy, e("reshape", gamma, shape=[1, e.shape(gamma)[0], 1, 1]))
    dx = e("sub", e("sub", g, e("mean", g, axis=axes, keepdims=True)),
           e("mul", xhat, e("mean", e("mul", g, xhat), axis=axes, keepdims=True)))
    return (e("div", dx, std), e("sum", e("mul", dy, xhat), axis=axes), e("sum", dy, axis=axes))


def _batchnorm2d(b, a):
    xt = b.type(a["x"])
    c = TensorType(xt.dtype, (b.features(xt, 4),))
    return b.layer("batchnorm2d", a["x"], [("weight", c, {"init": "ones"}), ("bias", c, {"init": "zeros"})], {})


# batch statistics here; the train-mode pass adds the running statistics, inference uses them
register("batchnorm2d", _batchnorm_infer, _batchnorm_ref, _batchnorm_vjp, training="state")
builtin("batchnorm2d", _batchnorm2d, Arg("x", "tensor"), params=True)


