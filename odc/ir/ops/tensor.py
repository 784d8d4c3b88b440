"""Function arguments, constants, shape manipulation, products, reductions, softmax, losses."""
from __future__ import annotations

import math

import numpy as np

from odc.errors import CompileError, Diagnostic
from odc.ir.dtypes import NP_DTYPES
from odc.ir.graph import TensorType
from odc.ir.ops.core import (Arg, ShapeError, axes_of, builtin, count, expand, keep_reduced, normalize_axis,
                                 register, require_float, require_rank, symbolic_numel)

ANY = ("f32", "f64", "i32", "i64", "u8")  # layout ops move any element type


# -- leaves -----------------------------------------------------------------------------------
def _no_infer(types, attrs):
    raise ShapeError("argument nodes carry their own type")


for _leaf in ("input", "param", "state"):
    register(_leaf, _no_infer, None, codegen="arg", dtypes=ANY)

# a scalar: elementwise kernels inline it as an immediate (a kernel of its own only when returned)
register("const", lambda ts, a: TensorType(a.get("dtype", "f32"), ()), lambda a: np.asarray(a["value"]),
         codegen="const", cost=0, dtypes=("f32", "f64"))


# -- products ---------------------------------------------------------------------------------
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


def _matmul_vjp(e, n, y, dy):
    a, b = n.args
    da = e("matmul", dy, e("transpose", b, perm=[1, 0]))
    lead = e.shape(a)[:-1]
    if len(lead) > 1:  # fold the leading axes of a and dy into one
        if not all(isinstance(d, int) for d in lead):
            raise CompileError(Diagnostic(
                f"odc cannot differentiate matmul with a left operand {e.g.type(a)} of more than two "
                f"axes and a symbolic size", e.span, "flatten the left operand to two axes first"))
        a = e("reshape", a, shape=[-1, e.shape(a)[-1]])
        dy = e("reshape", dy, shape=[-1, e.shape(dy)[-1]])
    return da, e("matmul", e("transpose", a, perm=[1, 0]), dy)


register("matmul", _matmul_infer, lambda a, b, attrs: a @ b, _matmul_vjp, codegen="anchor")
builtin("matmul", lambda b, a: b.node("matmul", [a["a"], a["b"]], {}), Arg("a", "tensor"), Arg("b", "tensor"))


# -- shape manipulation -----------------------------------------------------------------------
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


def _flatten(b, a):
    xt = b.type(a["x"])
    if xt.rank < 2:
        b.fail(f"flatten expects at least a 2-D input, got {xt}")
    if not xt.with_shape(xt.shape[1:]).is_concrete:
        b.fail(f"flatten needs known sizes after dimension 0, got {xt}")
    return b.node("reshape", [a["x"]], {"shape": [xt.shape[0], math.prod(xt.shape[1:])]})


register("reshape", _reshape_infer, _reshape_ref,
         lambda e, n, y, dy: (e("reshape", dy, shape=list(e.shape(n.args[0]))),), codegen="alias", dtypes=ANY)
builtin("reshape", lambda b, a: b.node("reshape", [a["x"]], {"shape": a["shape"]}), Arg("x", "tensor"),
        Arg("shape", "shape"))
builtin("flatten", _flatten, Arg("x", "tensor"))


def _transpose_infer(ts, attrs):
    x, perm = ts[0], list(attrs["perm"])
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"transpose permutation {perm} is not a permutation of the {x.rank} axes of {x}")
    return x.with_shape(x.shape[p] for p in perm)


def _transpose_vjp(e, n, y, dy):
    perm = n.attrs["perm"]
    return (e("transpose", dy, perm=[perm.index(i) for i in range(len(perm))]),)


register("transpose", _transpose_infer, lambda x, attrs: np.transpose(x, attrs["perm"]), _transpose_vjp,
         dtypes=ANY)
builtin("transpose", lambda b, a: b.node("transpose", [a["x"]], {"perm": a["perm"]}), Arg("x", "tensor"),
        Arg("perm", "perm"))


# -- reductions and softmax -------------------------------------------------------------------
def _reduce_infer(ts, attrs):
    x = ts[0]
    axes = axes_of(attrs, x.rank)
    if attrs.get("keepdims", False):
        return x.with_shape(1 if i in axes else d for i, d in enumerate(x.shape))
    return x.with_shape(d for i, d in enumerate(x.shape) if i not in axes)


def _reduce_ref(fn):
    def ref(x, attrs):
        axes = axes_of(attrs, x.ndim)
        return np.asarray(fn(x, axis=axes, keepdims=attrs.get("keepdims", False))).astype(x.dtype)
    return ref


def _sum_vjp(e, n, y, dy):
    shape = e.shape(n.args[0])
    axes = axes_of(n.attrs, len(shape))
    return (expand(e, keep_reduced(e, dy, shape, axes, n.attrs.get("keepdims", False)), shape),)


def _mean_vjp(e, n, y, dy):
    shape = e.shape(n.args[0])
    axes = axes_of(n.attrs, len(shape))
    dy = keep_reduced(e, dy, shape, axes, n.attrs.get("keepdims", False))
    return (expand(e, e("div", dy, count(e, shape, axes, e.dtype(dy))), shape),)


def _max_vjp(e, n, y, dy):
    """The gradient is shared equally by the maxima of each reduced slice (as torch.amax)."""
    x = n.args[0]
    shape, keep = e.shape(x), n.attrs.get("keepdims", False)
    axes = axes_of(n.attrs, len(shape))
    # y - x >= 0, so sign(y - x) is 0 exactly at the maxima and 1 elsewhere
    is_max = e("sub", e.const(1, e.dtype(x)), e("sign", e("sub", keep_reduced(e, y, shape, axes, keep), x)))
    share = e("div", keep_reduced(e, dy, shape, axes, keep), e("sum", is_max, axis=list(axes), keepdims=True))
    return (e("mul", is_max, share),)


def _reduce(op):
    return lambda b, a: b.node(op, [a["x"]], {} if a["axis"] is None else {"axis": a["axis"]})


for _op, _fn, _vjp in (("sum", np.sum, _sum_vjp), ("mean", np.mean, _mean_vjp), ("max", np.max, _max_vjp)):
    register(_op, _reduce_infer, _reduce_ref(_fn), _vjp)
    builtin(_op, _reduce(_op), Arg("x", "tensor"), Arg("axis", "axes", None, "all"))


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


def _softmax_vjp(e, n, y, dy):
    ax = n.attrs.get("axis", -1)
    return (e("mul", y, e("sub", dy, e("sum", e("mul", dy, y), axis=ax, keepdims=True))),)


def _log_softmax_vjp(e, n, y, dy):
    ax = n.attrs.get("axis", -1)
    return (e("sub", dy, e("mul", e("exp", y), e("sum", dy, axis=ax, keepdims=True))),)


register("softmax", _axis_infer("softmax"), lambda x, attrs: np.exp(log_softmax_ref(x, attrs)), _softmax_vjp)
register("log_softmax", _axis_infer("log_softmax"), log_softmax_ref, _log_softmax_vjp)
for _op in ("softmax", "log_softmax"):
    builtin(_op, (lambda op: lambda b, a: b.node(op, [a["x"]], {"axis": a["axis"]}))(_op), Arg("x", "tensor"),
            Arg("axis", "axis", -1))


# -- losses (made by the autodiff pass) -------------------------------------------------------
def _ce_infer(ts, attrs):
    logits, labels = ts
    require_rank(logits, 2, "cross_entropy", "[batch, classes] of logits")
    if labels.is_float or labels.shape != logits.shape[:1]:
        raise ShapeError(f"cross_entropy expects integer labels of shape [{logits.shape[0]}], got {labels}")
    return TensorType(logits.dtype, ())


def cross_entropy_ref(logits, labels, attrs):
    lp = log_softmax_ref(logits, {"axis": -1})
    return np.asarray(-lp[np.arange(len(labels)), labels].mean(), dtype=logits.dtype)


def _ce_vjp(e, n, y, dy):
    """mean over the batch of -log_softmax(logits)[label]: (softmax - one_hot(label)) * dy / N."""
    logits, labels = n.args
    shape, dt = e.shape(logits), e.dtype(logits)
    p = e("sub", e("softmax", logits, axis=-1), e("one_hot", labels, classes=shape[1], dtype=dt))
    return e("mul", p, e("div", dy, count(e, shape, [0], dt))), None


def _mse_infer(ts, attrs):
    a, b = ts
    if a.shape != b.shape:
        raise ShapeError(f"mse compares tensors of the same shape, got {a} and {b}")
    return TensorType(a.dtype, ())


def _mse_vjp(e, n, y, dy):
    a, b = n.args
    shape, dt = e.shape(a), e.dtype(a)
    scale = e("div", e("mul", dy, e.const(2, dt)), count(e, shape, range(len(shape)), dt))
    da = e("mul", e("sub", a, b), scale)
    return da, e("neg", da)


def _one_hot_infer(ts, attrs):
    return TensorType(attrs.get("dtype", "f32"), ts[0].shape + (attrs["classes"],))


register("cross_entropy", _ce_infer, cross_entropy_ref, _ce_vjp)
register("mse", _mse_infer, lambda a, b, attrs: np.asarray(((a - b) ** 2).mean(), dtype=a.dtype), _mse_vjp)
register("one_hot", _one_hot_infer,
         lambda y, attrs: np.eye(attrs["classes"], dtype=NP_DTYPES[attrs.get("dtype", "f32")])[y], dtypes=ANY)
