"""The op registry: for every op, its type rule and its numpy reference implementation.

A type rule takes the operand types and the attributes and returns the result type, or raises
`ShapeError` with a message in the user's terms (the caller attaches the source span). A numpy
reference takes operand arrays and attributes and returns the result array; it is the oracle
for the interpreter and for every compiled kernel. `vjp` rules (reverse-mode derivatives) are
attached to the same `OpDef`s by `odc.ir.vjp`; besides `sign`, the ops they need are at the end
of this file (`broadcast_to`, `conv2d_grad_input`, `conv2d_grad_weight`, `maxpool2d_grad`,
`avgpool2d_grad`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from odc.ir.graph import Dim, TensorType


class ShapeError(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass
class OpDef:
    name: str
    infer: Callable[[list[TensorType], dict], TensorType]
    ref: Callable[..., np.ndarray]
    elementwise: bool = False  # result[i] depends only on operand[i] (after broadcasting)
    vjp: Callable | None = None  # set by odc.ir.vjp


OPS: dict[str, OpDef] = {}


def register(name: str, infer, ref, elementwise: bool = False) -> OpDef:
    OPS[name] = OpDef(name, infer, ref, elementwise)
    return OPS[name]


def get(name: str) -> OpDef:
    return OPS[name]


# numpy dtypes of the IR's element types (bf16 has none; the interpreter computes it in f32)
NP_DTYPES = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": np.float32,
             "i32": np.int32, "i64": np.int64, "u8": np.uint8}


# -- helpers for type rules -----------------------------------------------------------------
def require_float(t: TensorType, what: str) -> None:
    if not t.is_float:
        raise ShapeError(f"{what} expects a floating-point tensor, got {t}")


def require_rank(t: TensorType, rank: int, what: str, layout: str, hint: str | None = None) -> None:
    if t.rank != rank:
        raise ShapeError(f"{what} expects a {rank}-D input {layout}, got {t}", hint)


def broadcast_shapes(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """NumPy broadcasting on concrete or symbolic dims; None if incompatible."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(reversed(out))


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for a {rank}-D tensor")
    return axis % rank


def axes_of(attrs: dict, rank: int) -> tuple[int, ...]:
    axis = attrs.get("axis")
    if axis is None:
        return tuple(range(rank))
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return tuple(sorted(normalize_axis(a, rank) for a in axes))


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


# -- leaves ---------------------------------------------------------------------------------
def _no_infer(types, attrs):
    raise ShapeError("argument nodes carry their own type")


for _leaf in ("input", "param", "state"):
    register(_leaf, _no_infer, None)

register("const", lambda ts, a: TensorType(a.get("dtype", "f32"), ()),
         lambda a: np.asarray(a["value"]))


# -- elementwise ----------------------------------------------------------------------------
def _unary(name: str, fn):
    def infer(ts, attrs):
        require_float(ts[0], name)
        return ts[0]
    register(name, infer, lambda x, attrs: fn(x).astype(x.dtype, copy=False), elementwise=True)


def _sigmoid(x):
    return np.exp(-np.logaddexp(0, -x))


_unary("relu", lambda x: np.maximum(x, 0))
_unary("tanh", np.tanh)
_unary("sigmoid", _sigmoid)
_unary("exp", np.exp)
_unary("log", np.log)
_unary("sqrt", np.sqrt)
_unary("abs", np.abs)
_unary("neg", np.negative)
_unary("sign", np.sign)  # used by the derivatives of relu, abs and max


def _binary(name: str, fn):
    def infer(ts, attrs):
        a, b = ts
        if a.dtype != b.dtype:
            raise ShapeError(f"{name} of different element types: {a} and {b}")
        shape = broadcast_shapes(a.shape, b.shape)
        if shape is None:
            raise ShapeError(f"incompatible shapes for broadcasting in {name}: {a} and {b}",
                             "shapes are compared from the last dimension; each pair must be "
                             "equal or one of them 1")
        return TensorType(a.dtype, shape)
    register(name, infer, lambda a, b, attrs: fn(a, b), elementwise=True)


_binary("add", np.add)
_binary("sub", np.subtract)
_binary("mul", np.multiply)
_binary("div", np.divide)


# -- linear algebra -------------------------------------------------------------------------
def _matmul_infer(ts, attrs):
    a, b = ts
    require_float(a, "matmul")
    if a.dtype != b.dtype:
        raise ShapeError(f"matmul of different element types: {a} @ {b}",
                         "both operands need the same element type")
    if a.rank < 2 or b.rank != 2:
        raise ShapeError(f"matmul expects a [..., m, k] left operand and a [k, n] right operand, "
                         f"got {a} and {b}")
    if a.shape[-1] != b.shape[0]:
        raise ShapeError(f"matmul inner dimensions differ: {a} @ {b} ({a.shape[-1]} vs {b.shape[0]})",
                         "the last dimension of the left operand must equal the first of the right")
    return TensorType(a.dtype, a.shape[:-1] + b.shape[1:])


register("matmul", _matmul_infer, lambda a, b, attrs: a @ b)


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


register("linear", _linear_infer, _linear_ref)


# -- convolution and pooling ----------------------------------------------------------------
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


register("conv2d", _conv2d_infer, conv2d_ref)


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


register("maxpool2d", _pool_infer("maxpool2d"), lambda x, attrs: _windows(x, attrs).max(axis=(4, 5)))
register("avgpool2d", _pool_infer("avgpool2d"),
         lambda x, attrs: _windows(x, attrs).mean(axis=(4, 5)).astype(x.dtype, copy=False))


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


register("batchnorm2d", _batchnorm_infer, _batchnorm_ref)


# -- shape manipulation ---------------------------------------------------------------------
def symbolic_numel(shape) -> tuple[int, tuple[str, ...]]:
    n, syms = 1, []
    for d in shape:
        if isinstance(d, int):
            n *= d
        else:
            syms.append(d)
    return n, tuple(sorted(syms))


def _reshape_infer(ts, attrs):
    x = ts[0]
    target = list(attrs["shape"])
    n, syms = symbolic_numel(x.shape)
    if target.count(-1) > 1:
        raise ShapeError(f"reshape target {target} has more than one -1")
    if -1 in target:
        tn, tsyms = symbolic_numel([d for d in target if d != -1])
        rest = list(syms)
        for s in tsyms:
            if s not in rest:
                raise ShapeError(f"reshape of {x} to {target}: the symbol {s} does not divide the input")
            rest.remove(s)
        if n % tn:
            raise ShapeError(f"reshape of {x} to {target} changes the number of elements")
        if len(rest) > 1 or (rest and n // tn != 1):
            size = "*".join([*rest, *([str(n // tn)] if n // tn != 1 else [])])
            raise ShapeError(f"reshape of {x} to {target}: -1 would stand for {size}, a size odc cannot "
                             f"express (a size is a number or one symbol)",
                             f"keep {rest[0]} as a size of its own, e.g. reshape(x, [{rest[0]}, -1])")
        target[target.index(-1)] = rest[0] if rest else n // tn
    if symbolic_numel(target) != (n, syms):
        raise ShapeError(f"reshape of {x} ({'*'.join(map(str, x.shape))} elements) to "
                         f"[{', '.join(map(str, target))}] changes the number of elements",
                         "the product of the new sizes must equal the product of the old ones")
    return x.with_shape(target)


def _reshape_ref(x, attrs):
    return x.reshape([-1 if isinstance(d, str) else d for d in attrs["shape"]])  # one symbol at most


register("reshape", _reshape_infer, _reshape_ref)


def _transpose_infer(ts, attrs):
    x, perm = ts[0], list(attrs["perm"])
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"transpose permutation {perm} is not a permutation of the {x.rank} axes of {x}")
    return x.with_shape(x.shape[p] for p in perm)


register("transpose", _transpose_infer, lambda x, attrs: np.transpose(x, attrs["perm"]))


# -- reductions and normalisations ----------------------------------------------------------
def _reduce_infer(name):
    def infer(ts, attrs):
        x = ts[0]
        axes = axes_of(attrs, x.rank)
        if attrs.get("keepdims", False):
            return x.with_shape(1 if i in axes else d for i, d in enumerate(x.shape))
        return x.with_shape(d for i, d in enumerate(x.shape) if i not in axes)
    return infer


def _reduce_ref(fn):
    def ref(x, attrs):
        axes = axes_of(attrs, x.ndim)
        return np.asarray(fn(x, axis=axes, keepdims=attrs.get("keepdims", False))).astype(x.dtype)
    return ref


register("sum", _reduce_infer("sum"), _reduce_ref(np.sum))
register("mean", _reduce_infer("mean"), _reduce_ref(np.mean))
register("max", _reduce_infer("max"), _reduce_ref(np.max))


def _axis_infer(name):
    def infer(ts, attrs):
        require_float(ts[0], name)
        normalize_axis(attrs.get("axis", -1), ts[0].rank)
        return ts[0]
    return infer


def log_softmax_ref(x, attrs):
    ax = attrs.get("axis", -1)
    m = x.max(axis=ax, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=ax, keepdims=True))


register("softmax", _axis_infer("softmax"), lambda x, attrs: np.exp(log_softmax_ref(x, attrs)))
register("log_softmax", _axis_infer("log_softmax"), log_softmax_ref)


def _dropout_infer(ts, attrs):
    require_float(ts[0], "dropout")
    if not 0 <= attrs.get("p", 0.5) < 1:
        raise ShapeError(f"dropout probability p must be in [0, 1), got {attrs['p']}")
    return ts[0]


# identity outside training; autodiff turns it into a product with a random mask
register("dropout", _dropout_infer, lambda x, attrs: x)


# -- losses ---------------------------------------------------------------------------------
def _ce_infer(ts, attrs):
    logits, labels = ts
    require_rank(logits, 2, "cross_entropy", "[batch, classes] of logits")
    if labels.is_float or labels.shape != logits.shape[:1]:
        raise ShapeError(f"cross_entropy expects integer labels of shape [{logits.shape[0]}], got {labels}")
    return TensorType(logits.dtype, ())


def cross_entropy_ref(logits, labels, attrs):
    lp = log_softmax_ref(logits, {"axis": -1})
    return np.asarray(-lp[np.arange(len(labels)), labels].mean(), dtype=logits.dtype)


register("cross_entropy", _ce_infer, cross_entropy_ref)


def _mse_infer(ts, attrs):
    a, b = ts
    if a.shape != b.shape:
        raise ShapeError(f"mse compares tensors of the same shape, got {a} and {b}")
    return TensorType(a.dtype, ())


register("mse", _mse_infer, lambda a, b, attrs: np.asarray(((a - b) ** 2).mean(), dtype=a.dtype))


def _one_hot_infer(ts, attrs):
    return TensorType(attrs.get("dtype", "f32"), ts[0].shape + (attrs["classes"],))


register("one_hot", _one_hot_infer,
         lambda y, attrs: np.eye(attrs["classes"], dtype=NP_DTYPES[attrs.get("dtype", "f32")])[y])


# -- backward ops (made by autodiff) --------------------------------------------------------
def _broadcast_to_infer(ts, attrs):
    x, shape = ts[0], tuple(attrs["shape"])
    if broadcast_shapes(x.shape, shape) != shape:
        raise ShapeError(f"cannot broadcast {x} to [{', '.join(map(str, shape))}]")
    return x.with_shape(shape)


register("broadcast_to", _broadcast_to_infer,
         lambda x, attrs: np.broadcast_to(x, attrs["shape"]).copy())


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


register("conv2d_grad_input", _conv2d_grad_input_infer, conv2d_grad_input_ref)


def _conv2d_grad_weight_infer(ts, attrs):
    """conv2d_grad_weight(dy, x) {stride, pad, kernel=[kh, kw]}: the gradient wrt the weight."""
    dy, x = ts
    return dy.with_shape((dy.shape[1], x.shape[1], *attrs["kernel"]))


def conv2d_grad_weight_ref(dy, x, attrs):
    s, p = attrs.get("stride", 1), attrs.get("pad", 0)
    x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = sliding_window_view(x, tuple(attrs["kernel"]), axis=(2, 3))[:, :, ::s, ::s]
    return np.einsum("nchwij,nohw->ocij", win, dy, optimize=True).astype(dy.dtype, copy=False)


register("conv2d_grad_weight", _conv2d_grad_weight_infer, conv2d_grad_weight_ref)


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


# maxpool2d_grad(dy, x) {kernel, stride}: the gradient of maxpool2d wrt x, typed as x
register("maxpool2d_grad", lambda ts, attrs: ts[1], _maxpool2d_grad_ref)


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


register("avgpool2d_grad", _avgpool2d_grad_infer, _avgpool2d_grad_ref)


def evaluate(op: str, args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    """Run the numpy reference of `op`."""
    d = OPS[op]
    if d.ref is None:
        raise ValueError(f"{op} has no reference implementation")
    return d.ref(*args, attrs)
