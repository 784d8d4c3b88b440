"""Convolution and its gradients, as PyTorch's `torch.nn.functional.conv2d`.

The built-in `conv2d(x, out, kernel, stride=1, pad=0, dilation=1, groups=1, bias=true)` creates
its weight [out, in/groups, kh, kw] and bias [out] with PyTorch's default initialisation
(U(-b, b), b = 1/sqrt(in/groups * kh * kw)); the op takes them as operands. A size argument is an
integer or a pair [h, w]; `pad="same"` is PyTorch's padding="same" (stride 1 only): a total of
dilation * (kernel - 1) per axis, the odd pixel at the bottom and on the right.

The op's attributes (`Geometry` reads them, `conv_attrs` writes them in their shortest form):
- `stride`: s, or [sh, sw];
- `pad`: p, or [top, bottom, left, right] (a pair [ph, pw] is read as [ph, ph, pw, pw]);
- `dilation`: d, or [dh, dw] (absent: 1);
- `groups`: g (absent: 1): input channel block k (of in/g) meets output channel block k (of
  out/g) only; g == in == out is a depthwise convolution.
So a graph written before dilation, groups and asymmetric padding existed (`{pad=2, stride=1}`)
reads the same. Output size per axis: (size + before + after - dilation * (k - 1) - 1) // s + 1.

`conv2d_grad_input` and `conv2d_grad_weight` are made by its derivative rule, with the same
attributes plus the input's spatial `size` or the weight's `kernel`."""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from odc.ir.graph import TensorType
from odc.ir.ops.core import Arg, ShapeError, builtin, default_init, register, require_float, require_rank


# -- the attributes -----------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Geometry:
    """A convolution's stride (sh, sw), padding (top, bottom, left, right), dilation (dh, dw)
    and groups."""
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @staticmethod
    def of(attrs: dict) -> "Geometry":
        def pair(name, lo):
            v = attrs.get(name, 1)
            v = [v, v] if _is_int(v) else v
            if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(i) and i >= lo for i in v)):
                raise ShapeError(f"conv2d: {name} must be an integer >= {lo} or a pair [h, w] of them, got {v}")
            return tuple(v)
        p = attrs.get("pad", 0)
        p = [p] * 4 if _is_int(p) else [p[0], p[0], p[1], p[1]] if isinstance(p, (list, tuple)) and len(p) == 2 else p
        if not (isinstance(p, (list, tuple)) and len(p) == 4 and all(_is_int(i) and i >= 0 for i in p)):
            raise ShapeError(f"conv2d: pad must be an integer >= 0, a pair [h, w] or [top, bottom, left, right], "
                             f"got {attrs.get('pad')}")
        g = attrs.get("groups", 1)
        if not (_is_int(g) and g >= 1):
            raise ShapeError(f"conv2d: groups must be a positive integer, got {g}")
        return Geometry(pair("stride", 1), tuple(p), pair("dilation", 1), g)

    def attrs(self) -> dict:
        """The attributes in their shortest form: an integer where the axes (sides) agree;
        dilation and groups only where they are not 1."""
        def short(t):
            return t[0] if len(set(t)) == 1 else list(t)
        out = {"stride": short(self.stride), "pad": short(self.pad)}
        if self.dilation != (1, 1):
            out["dilation"] = short(self.dilation)
        if self.groups != 1:
            out["groups"] = self.groups
        return out

    @property
    def simple(self) -> bool:
        """Both axes alike and no dilation: what the first version of the op knew."""
        return len(set(self.stride)) == 1 and len(set(self.pad)) == 1 and self.dilation == (1, 1)

    def out_size(self, size: int, k: int, axis: int) -> int:
        return (size + self.pad[2 * axis] + self.pad[2 * axis + 1] - self.dilation[axis] * (k - 1) - 1) \
            // self.stride[axis] + 1


def conv_attrs(attrs: dict) -> dict:
    """A convolution's attributes (of conv2d or its gradients) in their shortest form."""
    return Geometry.of(attrs).attrs()


def _short(t) -> str:
    return str(t[0]) if len(set(t)) == 1 else f"[{', '.join(map(str, t))}]"


def _spatial(x: TensorType, kernel: tuple[int, int], g: Geometry) -> tuple[int, int]:
    """The output's spatial sizes; a ShapeError (with the image's history) where one shrinks
    to nothing, i.e. where the (dilated) kernel is larger than the padded input."""
    sizes = x.shape[2:]
    if not all(isinstance(s, int) for s in sizes):
        raise ShapeError(f"conv2d needs concrete spatial sizes, got {x}")
    out = []
    same_axes = g.simple and kernel[0] == kernel[1] and sizes[0] == sizes[1]
    for axis, (size, k) in enumerate(zip(sizes, kernel)):
        span = g.dilation[axis] * (k - 1) + 1
        padded = size + g.pad[2 * axis] + g.pad[2 * axis + 1]
        if padded >= span:
            out.append(g.out_size(size, k, axis))
            continue
        shrunk = min((padded - span) // g.stride[axis] + 1, 0)
        what = "a spatial size" if same_axes else ("the height", "the width")[axis]
        dilated = g.dilation != (1, 1)
        raise ShapeError(
            f"conv2d with kernel {_short(kernel)}{f', dilation {_short(g.dilation)}' if dilated else ''}, "
            f"stride {_short(g.stride)}, padding {_short(g.pad)} shrinks {what} of {size} to {shrunk}"
            + (f": the dilated kernel spans {span} pixels, more than the padded input's {padded}" if dilated else "")
            + f"; input {x}",
            f"use a smaller kernel{', dilation' if dilated else ''} or stride, add padding, or remove a pooling layer",
            history=True)
    return out[0], out[1]


def _groups_hint(c: int, o: int) -> str:
    common = [d for d in range(1, gcd(c, o) + 1) if c % d == 0 and o % d == 0]
    return f"groups must divide both the input channels ({c}) and out ({o}): one of {', '.join(map(str, common))}"


# -- convolution ------------------------------------------------------------------------------
def _conv2d_infer(ts, attrs):
    x, w = ts[0], ts[1]
    require_float(x, "conv2d")
    require_rank(x, 4, "conv2d", "[batch, channels, height, width]")
    g = Geometry.of(attrs)
    c, groups = x.shape[1], g.groups
    if w.rank != 4:
        raise ShapeError(f"conv2d weight {w} does not match input {x} ({c} channels)")
    o = w.shape[0]
    if _is_int(c) and c % groups:
        raise ShapeError(f"conv2d: input channels {c} are not divisible by groups={groups}", _groups_hint(c, o))
    if o % groups:
        raise ShapeError(f"conv2d: output channels {o} are not divisible by groups={groups}", _groups_hint(c, o))
    if w.shape[1] * groups != c:
        raise ShapeError(f"conv2d weight {w} does not match input {x} "
                         f"({c} channels{f' in {groups} groups' if groups > 1 else ''})")
    h, wd = _spatial(x, w.shape[2:], g)
    if len(ts) == 3 and ts[2].shape != (o,):
        raise ShapeError(f"conv2d bias {ts[2]} does not match weight {w}")
    return TensorType(x.dtype, (x.shape[0], o, h, wd))


def _windows(x: np.ndarray, kernel, g: Geometry) -> np.ndarray:
    """[N, groups, C/groups, H', W', kh, kw]: the (dilated, strided) windows of the padded x."""
    (kh, kw), (dh, dw), (sh, sw) = kernel, g.dilation, g.stride
    t, b, l, r = g.pad
    x = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))
    win = sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]
    n, c = x.shape[:2]
    return win.reshape(n, g.groups, c // g.groups, *win.shape[2:])


def conv2d_ref(x, w, *rest):
    attrs = rest[-1]
    g = Geometry.of(attrs)
    o, cg, kh, kw = w.shape
    win = _windows(x, (kh, kw), g)
    wg = w.reshape(g.groups, o // g.groups, cg, kh, kw)
    y = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True)
    y = y.reshape(y.shape[0], o, *y.shape[3:])
    if len(rest) == 2:
        y = y + rest[0][None, :, None, None]
    return y.astype(x.dtype, copy=False)


def _conv2d_vjp(e, n, y, dy):
    x, w = n.args[:2]
    sp = conv_attrs(n.attrs)
    dx = e("conv2d_grad_input", dy, w, size=list(e.shape(x)[2:]), **sp)
    dw = e("conv2d_grad_weight", dy, x, kernel=list(e.shape(w)[2:]), **sp)
    return (dx, dw) + ((e("sum", dy, axis=[0, 2, 3]),) if len(n.args) == 3 else ())


def _conv2d(b, a):
    xt = b.type(a["x"])
    cin, out, groups = b.features(xt, 4), a["out"], a["groups"]
    pair = (lambda v: (v, v) if _is_int(v) else tuple(v))
    (kh, kw), stride, dilation = pair(a["kernel"]), pair(a["stride"]), pair(a["dilation"])
    if a["pad"] == "same":
        if stride != (1, 1):
            b.fail(f'conv2d: pad="same" needs stride 1, got stride {_short(stride)}',
                   "PyTorch refuses it too: give the padding explicitly, e.g. pad=1 for a 3x3 kernel")
        total = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
        pad = (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    else:
        ph, pw = pair(a["pad"])
        pad = (ph, ph, pw, pw)
    cg = max(1, cin // groups)  # the type rule refuses channels that groups does not divide
    fan_in = cg * kh * kw
    params = [("weight", TensorType(xt.dtype, (out, cg, kh, kw)), default_init(fan_in)),
              ("bias", TensorType(xt.dtype, (out,)), default_init(fan_in))]
    return b.layer("conv2d", a["x"], params[:2 if a["bias"] else 1], Geometry(stride, pad, dilation, groups).attrs())


def _conv2d_grad_input_infer(ts, attrs):
    """conv2d_grad_input(dy, w) {stride, pad, dilation, groups, size=[H, W]}: the gradient of
    conv2d wrt its input."""
    dy, w = ts
    return dy.with_shape((dy.shape[0], w.shape[1] * Geometry.of(attrs).groups, *attrs["size"]))


def conv2d_grad_input_ref(dy, w, attrs):
    g = Geometry.of(attrs)
    (h, wd), (kh, kw) = attrs["size"], w.shape[2:]
    (sh, sw), (dh, dw), (t, _, l, _) = g.stride, g.dilation, g.pad
    n, o, ho, wo = dy.shape
    cg = w.shape[1]
    # rows and columns of the padded input that some output reads
    hp = max(t + h, sh * (ho - 1) + dh * (kh - 1) + 1)
    wp = max(l + wd, sw * (wo - 1) + dw * (kw - 1) + 1)
    dx = np.zeros((n, g.groups, cg, hp, wp), dy.dtype)
    dyg = dy.reshape(n, g.groups, o // g.groups, ho, wo)
    wg = w.reshape(g.groups, o // g.groups, cg, kh, kw)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw] += \
                np.einsum("ngohw,goc->ngchw", dyg, wg[:, :, :, i, j], optimize=True)
    return dx.reshape(n, g.groups * cg, hp, wp)[:, :, t:t + h, l:l + wd]


def _conv2d_grad_weight_infer(ts, attrs):
    """conv2d_grad_weight(dy, x) {stride, pad, dilation, groups, kernel=[kh, kw]}: the gradient
    wrt the weight."""
    dy, x = ts
    return dy.with_shape((dy.shape[1], x.shape[1] // Geometry.of(attrs).groups, *attrs["kernel"]))


def conv2d_grad_weight_ref(dy, x, attrs):
    g = Geometry.of(attrs)
    win = _windows(x, tuple(attrs["kernel"]), g)
    n, o, ho, wo = dy.shape
    dyg = dy.reshape(n, g.groups, o // g.groups, ho, wo)
    dw = np.einsum("ngchwij,ngohw->gocij", win, dyg, optimize=True)
    return dw.reshape(o, *dw.shape[2:]).astype(dy.dtype, copy=False)


register("conv2d", _conv2d_infer, conv2d_ref, _conv2d_vjp, codegen="anchor")
builtin("conv2d", _conv2d, Arg("x", "tensor"), Arg("out", "int"), Arg("kernel", "size"), Arg("stride", "size", 1),
        Arg("pad", "pads", 0, choices=("same",)), Arg("dilation", "size", 1), Arg("groups", "int", 1),
        Arg("bias", "bool", True), params=True)
register("conv2d_grad_input", _conv2d_grad_input_infer, conv2d_grad_input_ref, codegen="anchor")
register("conv2d_grad_weight", _conv2d_grad_weight_infer, conv2d_grad_weight_ref)
