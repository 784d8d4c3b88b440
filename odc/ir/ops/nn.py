"""Layers and their derivatives: dense (`linear`), convolution, pooling, batch norm, dropout.

The built-ins `dense`, `conv2d` and `batchnorm2d` create parameters with PyTorch's layouts and
default initialisation (U(-b, b), b = 1/sqrt(fan_in), for weights and biases; ones and zeros for
a batch norm); the ops themselves take the parameters as operands. The gradient ops
(`conv2d_grad_input`, `conv2d_grad_weight`, `maxpool2d_grad`, `avgpool2d_grad`) are made by
the derivative rules only.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from odc.ir.graph import Dim, TensorType
from odc.ir.ops.core import Arg, ShapeError, builtin, register, require_float, require_rank


def window_out(size: Dim, k: int, stride: int, pad: int, what: str, t: TensorType) -> int:
    if not isinstance(size, int):
        raise ShapeError(f"{what} needs concrete spatial sizes, got {t}")
    out = (size + 2 * pad - k) // stride + 1
    if size + 2 * pad - k < 0 or out <= 0:
        conv = what == "conv2d"  # pooling has no padding
        raise ShapeError(
            f"{what} with kernel {k}, stride {stride}{f', padding {pad}' if conv else ''} shrinks a "
            f"spatial size of {size} to {min(out, 0) if size + 2 * pad < k else out}; input {t}",
            "use a smaller kernel or stride, add padding, or remove a pooling layer" if conv else
            "use a smaller window, or remove a pooling or strided layer before this one")
    return out


def _uniform(fan_in: int) -> dict:
    bound = 1 / math.sqrt(fan_in)  # PyTorch's default: kaiming_uniform(a=sqrt(5)) = U(-b, b)
    return {"init": "uniform", "lo": -bound, "hi": bound}


# -- dense ------------------------------------------------------------------------------------
def _linear_infer(ts, attrs):
    x, w = ts[0], ts[1]
    require_rank(x, 2, "dense", "[batch, features]", "insert flatten(x) before dense")
    if x.shape[1] != w.shape[1]:
        raise ShapeError(f"dense weight {w} does not match input {x}")
    if len(ts) == 3 and ts[2].shape != (w.shape[0],):
        raise ShapeError(f"dense bias {ts[2]} does not match weight {w}")
    return TensorType(x.dtype, (x.shape[0], w.shape[0]))


def _linear_ref(x, w, *rest):
    y = x @ w.T
    return y + rest[0] if len(rest) == 2 else y


def _linear_vjp(e, n, y, dy):
    x, w = n.args[:2]
    grads = (e("matmul", dy, w), e("matmul", e("transpose", dy, perm=[1, 0]), x))
    return grads + ((e("sum", dy, axis=0),) if len(n.args) == 3 else ())


def _dense(b, a):
    xt = b.type(a["x"])
    cin, out = b.features(xt, 2), a["out"]
    params = [("weight", TensorType(xt.dtype, (out, cin)), _uniform(cin)),
              ("bias", TensorType(xt.dtype, (out,)), _uniform(cin))]
    return b.layer("linear", a["x"], params[:2 if a["bias"] else 1], {})


register("linear", _linear_infer, _linear_ref, _linear_vjp, codegen="anchor")
builtin("dense", _dense, Arg("x", "tensor"), Arg("out", "int"), Arg("bias", "bool", True), params=True)


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
    params = [("weight", TensorType(xt.dtype, (out, cin, k, k)), _uniform(cin * k * k)),
              ("bias", TensorType(xt.dtype, (out,)), _uniform(cin * k * k))]
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


def _dropout_infer(ts, attrs):
    require_float(ts[0], "dropout")
    if not 0 <= attrs.get("p", 0.5) < 1:
        raise ShapeError(f"dropout probability p must be in [0, 1), got {attrs['p']}")
    return ts[0]


# the identity outside training; the train-mode pass makes it a product with a random mask
register("dropout", _dropout_infer, lambda x, attrs: x, lambda e, n, y, dy: (dy,), codegen="alias",
         training="only")
builtin("dropout", lambda b, a: b.node("dropout", [a["x"]], {"p": a["p"]}), Arg("x", "tensor"),
        Arg("p", "probability"))
