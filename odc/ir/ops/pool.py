"""Pooling and its gradients (`maxpool2d_grad`, `avgpool2d_grad`, made by the derivative rules)."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from odc.ir.ops.core import Arg, builtin, register, require_float, require_rank, window_out


# -- pooling ----------------------------------------------------------------------------------
def _pool_infer(name):
    def infer(ts, attrs):
        x = ts[0]
        require_float(x, name)
        require_rank(x, 4, name, "[batch, channels, height, width]")
        k = attrs["kernel"]
        s = attrs.get("stride", k)
        return x.with_shape((x.shape[0], x.shape[1], window_out(x.shape[2], k, s, 0, name, x),
                             window_out(x.shape[3], k, s, 0, name, x)))
    return infer


def _windows(x, attrs):
    k = attrs["kernel"]
    s = attrs.get("stride", k)
    return sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s]


def _maxpool2d_vjp(e, n, y, dy):
    k = n.attrs["kernel"]
    return (e("maxpool2d_grad", dy, n.args[0], kernel=k, stride=n.attrs.get("stride", k)),)


def _avgpool2d_vjp(e, n, y, dy):
    k = n.attrs["kernel"]
    return (e("avgpool2d_grad", dy, kernel=k, stride=n.attrs.get("stride", k),
              size=list(e.shape(n.args[0])[2:])),)


def _pool(op):
    return lambda b, a: b.node(op, [a["x"]], {"kernel": a["k"], "stride": a["stride"] or a["k"]})


def _maxpool2d_grad_ref(dy, x, attrs):
    """Each window's gradient goes to its first maximum in row-major order (as in PyTorch)."""
    k = attrs["kernel"]
    s = attrs.get("stride", k)
    win = _windows(x, attrs)
    n, c, ho, wo = win.shape[:4]
    first = win.reshape(n, c, ho, wo, k * k).argmax(axis=-1)
    rows = np.arange(ho)[:, None] * s + first // k
    cols = np.arange(wo)[None, :] * s + first % k
    dx = np.zeros_like(x)
    np.add.at(dx, (np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols), dy)
    return dx


def _avgpool2d_grad_infer(ts, attrs):
    """avgpool2d_grad(dy) {kernel, stride, size=[H, W]}: the gradient of avgpool2d."""
    dy = ts[0]
    return dy.with_shape((*dy.shape[:2], *attrs["size"]))


def _avgpool2d_grad_ref(dy, attrs):
    k = attrs["kernel"]
    s = attrs.get("stride", k)
    ho, wo = dy.shape[2:]
    dx = np.zeros((*dy.shape[:2], *attrs["size"]), dy.dtype)
    for i in range(k):
        for j in range(k):
            dx[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] += dy / (k * k)
    return dx


register("maxpool2d", _pool_infer("maxpool2d"), lambda x, attrs: _windows(x, attrs).max(axis=(4, 5)),
         _maxpool2d_vjp, codegen="anchor")
register("avgpool2d", _pool_infer("avgpool2d"),
         lambda x, attrs: _windows(x, attrs).mean(axis=(4, 5)).astype(x.dtype, copy=False),
         _avgpool2d_vjp, codegen="anchor")
for _op in ("maxpool2d", "avgpool2d"):
    builtin(_op, _pool(_op), Arg("x", "tensor"), Arg("k", "int"), Arg("stride", "int", None, "k"))
# maxpool2d_grad(dy, x) {kernel, stride}: the gradient of maxpool2d wrt x, typed as x
register("maxpool2d_grad", lambda ts, attrs: ts[1], _maxpool2d_grad_ref, codegen="anchor")
register("avgpool2d_grad", _avgpool2d_grad_infer, _avgpool2d_grad_ref, codegen="anchor")


