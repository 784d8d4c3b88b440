"""Convolution and its gradients. The built-in `conv2d` creates its weight [out, in, kh, kw] and
bias [out] with PyTorch's default initialisation (U(-b, b), b = 1/sqrt(in * kh * kw)); the op takes
them as operands. `conv2d_grad_input` and `conv2d_grad_weight` are made by its derivative rule."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from odc.ir.graph import TensorType
from odc.ir.ops.core import Arg, ShapeError, builtin, default_init, register, require_float, require_rank, window_out


# -- convolution ------------------------------------------------------------------------------
def _conv2d_infer(ts, attrs):
    x, w = ts[0], ts[1]
    require_float(x, "conv2d")
    require_rank(x, 4, "conv2d", "[batch, channels, height, width]")
    if w.rank != 4 or w.shape[1] != x.shape[1]:
        raise ShapeError(f"conv2d weight {w} does not match input {x} ({x.shape[1]} channels)")
    k, s, p = w.shape[2], attrs.get("stride", 1), attrs.get("pad", 0)
    h = window_out(x.shape[2], k, s, p, "conv2d", x)
    wd = window_out(x.shape[3], w.shape[3], s, p, "conv2d", x)
    if len(ts) == 3 and ts[2].shape != (w.shape[0],):
        raise ShapeError(f"conv2d bias {ts[2]} does not match weight {w}")
    return TensorType(x.dtype, (x.shape[0], w.shape[0], h, wd))


def conv2d_ref(x, w, *rest):
    attrs = rest[-1]
    s, p = attrs.get("stride", 1), attrs.get("pad", 0)
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::s, ::s]  # N,C,H',W',kh,kw
    y = np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
    if len(rest) == 2:
        y = y + rest[0][None, :, None, None]
    return y.astype(x.dtype, copy=False)


def _conv2d_vjp(e, n, y, dy):
    x, w = n.args[:2]
    sp = {"stride": n.attrs.get("stride", 1), "pad": n.attrs.get("pad", 0)}
    dx = e("conv2d_grad_input", dy, w, size=list(e.shape(x)[2:]), **sp)
    dw = e("conv2d_grad_weight", dy, x, kernel=list(e.shape(w)[2:]), **sp)
    return (dx, dw) + ((e("sum", dy, axis=[0, 2, 3]),) if len(n.args) == 3 else ())


def _conv2d(b, a):
    xt = b.type(a["x"])
    cin, out, k = b.features(xt, 4), a["out"], a["kernel"]
    params = [("weight", TensorType(xt.dtype, (out, cin, k, k)), default_init(cin * k * k)),
              ("bias", TensorType(xt.dtype, (out,)), default_init(cin * k * k))]
    return b.layer("conv2d", a["x"], params[:2 if a["bias"] else 1], {"stride": a["stride"], "pad": a["pad"]})


def _conv2d_grad_input_infer(ts, attrs):
    """conv2d_grad_input(dy, w) {stride, pad, size=[H, W]}: the gradient of conv2d wrt its input."""
    dy, w = ts
    return dy.with_shape((dy.shape[0], w.shape[1], *attrs["size"]))


def conv2d_grad_input_ref(dy, w, attrs):
    s, p = attrs.get("stride", 1), attrs.get("pad", 0)
    (h, wd), (kh, kw) = attrs["size"], w.shape[2:]
    ho, wo = dy.shape[2:]
    dx = np.zeros((dy.shape[0], w.shape[1], h + 2 * p, wd + 2 * p), dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] += \
                np.einsum("nohw,oc->nchw", dy, w[:, :, i, j], optimize=True)
    return dx[:, :, p:p + h, p:p + wd]


def _conv2d_grad_weight_infer(ts, attrs):
    """conv2d_grad_weight(dy, x) {stride, pad, kernel=[kh, kw]}: the gradient wrt the weight."""
    dy, x = ts
    return dy.with_shape((dy.shape[1], x.shape[1], *attrs["kernel"]))


def conv2d_grad_weight_ref(dy, x, attrs):
    s, p = attrs.get("stride", 1), attrs.get("pad", 0)
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = sliding_window_view(x, tuple(attrs["kernel"]), axis=(2, 3))[:, :, ::s, ::s]
    return np.einsum("nchwij,nohw->ocij", win, dy, optimize=True).astype(dy.dtype, copy=False)


register("conv2d", _conv2d_infer, conv2d_ref, _conv2d_vjp, codegen="anchor")
builtin("conv2d", _conv2d, Arg("x", "tensor"), Arg("out", "int"), Arg("kernel", "int"), Arg("stride", "int", 1),
        Arg("pad", "count", 0), Arg("bias", "bool", True), params=True)
register("conv2d_grad_input", _conv2d_grad_input_infer, conv2d_grad_input_ref, codegen="anchor")
register("conv2d_grad_weight", _conv2d_grad_weight_infer, conv2d_grad_weight_ref)


