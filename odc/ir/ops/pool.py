"""Pooling and its gradients, as PyTorch's `torch.nn.functional` defines them.

Built-ins (a size argument is an integer or a pair [h, w]):
- `maxpool2d(x, k, stride=k, pad=0)` and `avgpool2d(x, k, stride=k, pad=0)`: F.max_pool2d and
  F.avg_pool2d (ceil_mode false; the average counts the padding, count_include_pad true).
  Padding is at most half the kernel on each axis (PyTorch refuses more); max pooling pads
  with -inf, average pooling with 0, so the divisor is always kh * kw. Output size per axis:
  (size + 2 * pad - k) // stride + 1.
- `global_avgpool2d(x)`: [N, C, H, W] -> [N, C], the mean over H and W (lowered to `mean`).
- `adaptive_avgpool2d(x, size)`: F.adaptive_avg_pool2d; output row i averages input rows
  floor(i * H / h) up to ceil((i + 1) * H / h) (columns alike). Lowered to `avgpool2d` when h
  divides H and w divides W (PyTorch's windows are then the same), to `mean` for [1, 1], and to
  the op `adaptive_avgpool2d {size=[h, w]}` otherwise.

The attributes of `maxpool2d`/`avgpool2d` and their gradients (`Window` reads them, `Window.attrs`
writes them in their shortest form): `kernel` k or [kh, kw]; `stride` s or [sh, sw] (absent:
the kernel); `pad` p or [ph, pw] (absent: 0; p rows above and below, columns left and right).
So the graphs of pooling without padding read `{kernel=2, stride=2}` as before.

Gradients, made by the derivative rules: `maxpool2d_grad(dy, x)` (typed as x) sends each
window's gradient to its first maximum in row-major order, never to padding (PyTorch's rule);
`avgpool2d_grad(dy) {..., size=[H, W]}` spreads it evenly, dy / (kh * kw), over the window's
inputs; `adaptive_avgpool2d_grad(dy) {size=[H, W]}` over each adaptive window, dy / its area.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from odc.ir.graph import TensorType
from odc.ir.ops.core import (Arg, ShapeError, builtin, register, require_float, require_rank,
                             window_out)

LAYOUT = "[batch, channels, height, width]"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(t) -> str:
    return str(t[0]) if len(set(t)) == 1 else f"[{', '.join(map(str, t))}]"


# -- the attributes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """A pooling's kernel (kh, kw), stride (sh, sw) and padding (ph, pw)."""
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int] = (0, 0)

    @staticmethod
    def of(attrs: dict, what: str = "pooling") -> "Window":
        def pair(name, default, lo):
            v = attrs.get(name, default)
            v = [v, v] if _is_int(v) else v
            if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(i) and i >= lo for i in v)):
                raise ShapeError(f"{what}: {name} must be an integer >= {lo} or a pair [h, w] of them, "
                                 f"got {attrs.get(name)}")
            return tuple(v)
        if "kernel" not in attrs:
            raise ShapeError(f"{what}: the attribute kernel is missing")
        kernel = pair("kernel", None, 1)
        return Window(kernel, pair("stride", list(kernel), 1), pair("pad", 0, 0))

    def attrs(self) -> dict:
        """The attributes in their shortest form: an integer where the axes agree; no pad if 0."""
        def short(t):
            return t[0] if t[0] == t[1] else list(t)
        out = {"kernel": short(self.kernel), "stride": short(self.stride)}
        if self.pad != (0, 0):
            out["pad"] = short(self.pad)
        return out

    @property
    def square(self) -> bool:
        return len(set(self.kernel)) == 1 and len(set(self.stride)) == 1 and len(set(self.pad)) == 1

    def out(self, size: int, axis: int) -> int:
        return (size + 2 * self.pad[axis] - self.kernel[axis]) // self.stride[axis] + 1


def _spatial(x: TensorType, win: Window, name: str) -> tuple[int, int]:
    """The output's spatial sizes. PyTorch's rule on padding first (at most half the kernel),
    then `window_out` on each axis: a ShapeError, with the image's history, where a window is
    larger than its padded input."""
    over = [a for a in (0, 1) if 2 * win.pad[a] > win.kernel[a]]
    if over:
        where = "" if win.square else " on the " + " and the ".join(("height", "width")[a] for a in over)
        most = tuple(k // 2 for k in win.kernel)
        raise ShapeError(
            f"{name}: padding {_short(win.pad)} is more than half of kernel {_short(win.kernel)}{where}; "
            f"PyTorch allows at most {_short(most)}",
            f"use pad={_short(tuple(min(p, m) for p, m in zip(win.pad, most)))} or a larger kernel: "
            "a window would otherwise hold padding only")
    sizes = x.shape[2:]
    out = []
    for axis, size in enumerate(sizes):
        k, s, p = win.kernel[axis], win.stride[axis], win.pad[axis]
        try:
            out.append(window_out(size, k, s, p, name, x))
        except ShapeError as err:
            if not _is_int(size) or win.square and win.pad == (0, 0) and sizes[0] == sizes[1]:
                raise  # the message of square pooling without padding, as before
            what = "a spatial size" if win.square and sizes[0] == sizes[1] else ("the height", "the width")[axis]
            shrunk = min((size + 2 * p - k) // s + 1, 0)
            padding = f", padding {_short(win.pad)}" if win.pad != (0, 0) else ""
            raise ShapeError(f"{name} with kernel {_short(win.kernel)}, stride {_short(win.stride)}{padding} "
                             f"shrinks {what} of {size} to {shrunk}; input {x}", err.hint, history=True) from None
    return out[0], out[1]


# -- pooling ----------------------------------------------------------------------------------
def _pool_infer(name):
    def infer(ts, attrs):
        x = ts[0]
        require_float(x, name)
        require_rank(x, 4, name, LAYOUT)
        return x.with_shape((x.shape[0], x.shape[1], *_spatial(x, Window.of(attrs, name), name)))
    return infer


def _windows(x, win: Window, fill: float):
    """[N, C, H', W', kh, kw]: the windows of x padded with `fill`."""
    (ph, pw), (sh, sw) = win.pad, win.stride
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    return sliding_window_view(x, win.kernel, axis=(2, 3))[:, :, ::sh, ::sw]


def _maxpool2d_ref(x, attrs):
    return _windows(x, Window.of(attrs), -np.inf).max(axis=(4, 5))


def _avgpool2d_ref(x, attrs):
    win = Window.of(attrs)
    return (_windows(x, win, 0).sum(axis=(4, 5)) / (win.kernel[0] * win.kernel[1])).astype(x.dtype, copy=False)


def _maxpool2d_vjp(e, n, y, dy):
    return (e("maxpool2d_grad", dy, n.args[0], **Window.of(n.attrs).attrs()),)


def _avgpool2d_vjp(e, n, y, dy):
    return (e("avgpool2d_grad", dy, size=list(e.shape(n.args[0])[2:]), **Window.of(n.attrs).attrs()),)


def _pool(op):
    def build(b, a):
        kernel = a["k"]
        stride = kernel if a["stride"] is None else a["stride"]
        pair = (lambda v: (v, v) if _is_int(v) else tuple(v))
        return b.node(op, [a["x"]], Window(pair(kernel), pair(stride), pair(a["pad"])).attrs())
    return build


def _maxpool2d_grad_ref(dy, x, attrs):
    """Each window's gradient goes to its first maximum in row-major order (as in PyTorch),
    never to padding: to the first input of the window where all are -inf."""
    win = Window.of(attrs)
    (kh, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.pad
    vals = _windows(x, win, -np.inf)
    valid = _windows(np.ones((1, 1, *x.shape[2:]), bool), win, False)
    n, c, ho, wo = vals.shape[:4]
    vals = vals.reshape(n, c, ho, wo, kh * kw)
    valid = valid.reshape(1, 1, ho, wo, kh * kw)
    take = (vals == vals.max(axis=-1, keepdims=True)) & valid
    take |= ~take.any(axis=-1, keepdims=True) & valid  # a NaN: its window's first input
    first = take.argmax(axis=-1)
    rows = np.arange(ho)[:, None] * sh + first // kw - ph
    cols = np.arange(wo)[None, :] * sw + first % kw - pw
    dx = np.zeros_like(x)
    np.add.at(dx, (np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols), dy)
    return dx


def _avgpool2d_grad_infer(ts, attrs):
    """avgpool2d_grad(dy) {kernel, stride, pad, size=[H, W]}: the gradient of avgpool2d."""
    dy = ts[0]
    Window.of(attrs, "avgpool2d_grad")
    return dy.with_shape((*dy.shape[:2], *attrs["size"]))


def _avgpool2d_grad_ref(dy, attrs):
    win = Window.of(attrs)
    (kh, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.pad
    h, w = attrs["size"]
    ho, wo = dy.shape[2:]
    dx = np.zeros((*dy.shape[:2], h + 2 * ph, w + 2 * pw), dy.dtype)
    share = dy / (kh * kw)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += share
    return dx[:, :, ph:ph + h, pw:pw + w]


register("maxpool2d", _pool_infer("maxpool2d"), _maxpool2d_ref, _maxpool2d_vjp, codegen="anchor")
register("avgpool2d", _pool_infer("avgpool2d"), _avgpool2d_ref, _avgpool2d_vjp, codegen="anchor")
for _op in ("maxpool2d", "avgpool2d"):
    builtin(_op, _pool(_op), Arg("x", "tensor"), Arg("k", "size"), Arg("stride", "size", None, "k"),
            Arg("pad", "pads", 0))


def _maxpool2d_grad_infer(ts, attrs):
    """maxpool2d_grad(dy, x) {kernel, stride, pad}: the gradient of maxpool2d wrt x, typed as x."""
    Window.of(attrs, "maxpool2d_grad")
    return ts[1]


register("maxpool2d_grad", _maxpool2d_grad_infer, _maxpool2d_grad_ref, codegen="anchor")
register("avgpool2d_grad", _avgpool2d_grad_infer, _avgpool2d_grad_ref, codegen="anchor")


# -- global and adaptive average pooling ---------------------------------------------------------
def adaptive_bounds(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive windows along one axis: [floor(i * size / out), ceil((i + 1) * size / out))."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _global_avgpool2d(b, a):
    x = a["x"]
    try:
        t = b.type(x)
        require_float(t, "global_avgpool2d")
        require_rank(t, 4, "global_avgpool2d", LAYOUT)
    except ShapeError as err:
        b.fail(err.message, err.hint)
    return b.node("mean", [x], {"axis": [2, 3]})


def _adaptive_infer(ts, attrs):
    """adaptive_avgpool2d(x) {size=[h, w]}: [N, C, H, W] -> [N, C, h, w]."""
    x = ts[0]
    require_float(x, "adaptive_avgpool2d")
    require_rank(x, 4, "adaptive_avgpool2d", LAYOUT)
    size = attrs.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(s) and s >= 1 for s in size)):
        raise ShapeError(f"adaptive_avgpool2d: size must be a pair [h, w] of positive integers, got {size}")
    if not all(_is_int(d) for d in x.shape[2:]):
        raise ShapeError(f"adaptive_avgpool2d needs concrete spatial sizes, got {x}")
    return x.with_shape((x.shape[0], x.shape[1], *size))


def _adaptive_ref(x, attrs):
    h, w = attrs["size"]
    rows, cols = adaptive_bounds(x.shape[2], h), adaptive_bounds(x.shape[3], w)
    y = np.empty((*x.shape[:2], h, w), x.dtype)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            y[:, :, i, j] = x[:, :, r0:r1, c0:c1].sum(axis=(2, 3)) / ((r1 - r0) * (c1 - c0))
    return y


def _adaptive_vjp(e, n, y, dy):
    return (e("adaptive_avgpool2d_grad", dy, size=list(e.shape(n.args[0])[2:])),)


def _adaptive_grad_infer(ts, attrs):
    """adaptive_avgpool2d_grad(dy) {size=[H, W]}: the gradient of adaptive_avgpool2d."""
    dy = ts[0]
    return dy.with_shape((*dy.shape[:2], *attrs["size"]))


def _adaptive_grad_ref(dy, attrs):
    h, w = attrs["size"]
    rows, cols = adaptive_bounds(h, dy.shape[2]), adaptive_bounds(w, dy.shape[3])
    dx = np.zeros((*dy.shape[:2], h, w), dy.dtype)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            dx[:, :, r0:r1, c0:c1] += (dy[:, :, i, j] / ((r1 - r0) * (c1 - c0)))[:, :, None, None]
    return dx


def _adaptive_avgpool2d(b, a):
    x, size = a["x"], a["size"]
    h, w = (size, size) if _is_int(size) else size
    t = b.type(x)
    if t.is_float and t.rank == 4 and all(_is_int(d) for d in t.shape[2:]):
        H, W = t.shape[2:]
        if (h, w) == (1, 1):
            return b.node("mean", [x], {"axis": [2, 3], "keepdims": True})
        if H % h == 0 and W % w == 0:  # PyTorch's windows are then avgpool2d's
            return b.node("avgpool2d", [x], Window((H // h, W // w), (H // h, W // w)).attrs())
    return b.node("adaptive_avgpool2d", [x], {"size": [h, w]})


builtin("global_avgpool2d", _global_avgpool2d, Arg("x", "tensor"))
register("adaptive_avgpool2d", _adaptive_infer, _adaptive_ref, _adaptive_vjp, codegen="anchor")
builtin("adaptive_avgpool2d", _adaptive_avgpool2d, Arg("x", "tensor"), Arg("size", "size"))
register("adaptive_avgpool2d_grad", _adaptive_grad_infer, _adaptive_grad_ref, codegen="anchor")
