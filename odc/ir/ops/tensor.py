"""Function arguments, constants, shape manipulation, products, reductions, softmax, losses."""
from __future__ import annotations

import math

import numpy as np

from odc.ir.dtypes import NP_DTYPES
from odc.ir.graph import TensorType
from odc.ir.ops.core import (Arg, ShapeError, axes_of, broadcast_shapes, builtin, count, expand, keep_reduced,
                             normalize_axis, register, require_float, require_rank, symbolic_numel, unbroadcast)

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
def swap_last(rank: int) -> list[int]:
    """The permutation that swaps the last two of `rank` axes (a batch of matrices transposed)."""
    return list(range(rank - 2)) + [rank - 1, rank - 2]


def _matmul_infer(ts, attrs):
    """[..., m, k] @ [..., k, n] -> [..., m, n]; the batch axes (all but the last two) broadcast
    like NumPy's, as torch.matmul on operands of two axes or more."""
    a, b = ts
    require_float(a, "matmul")
    if a.dtype != b.dtype:
        raise ShapeError(f"matmul of different element types: {a} @ {b}",
                         "both operands need the same element type")
    if a.rank < 2 or b.rank < 2:
        raise ShapeError(f"matmul expects matrices or batches of them, [..., m, k] @ [..., k, n], got {a} @ {b}",
                         "make a vector a matrix first, e.g. reshape(v, [1, k])")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul inner dimensions differ: {a} @ {b} ({a.shape[-1]} vs {b.shape[-2]})",
                         "the last dimension of the left operand must equal the "
                         f"{'first' if b.rank == 2 else 'second-to-last'} of the right")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if batch is None:
        raise ShapeError(f"matmul batch dimensions do not broadcast: {a} @ {b} "
                         f"([{', '.join(map(str, a.shape[:-2]))}] vs [{', '.join(map(str, b.shape[:-2]))}])",
                         "the axes before the last two broadcast as in NumPy: from the right, equal sizes "
                         "or 1 on one side")
    return TensorType(a.dtype, batch + (a.shape[-2], b.shape[-1]))


def _matmul_vjp(e, n, y, dy):
    """dA = dY @ B^T and dB = A^T @ dY, each summed over the batch axes its operand was
    broadcast along. With one right matrix and known sizes, A's leading axes fold into rows,
    so that dB is one product."""
    a, b = n.args
    sa, sb = e.shape(a), e.shape(b)
    da = unbroadcast(e, e("matmul", dy, e("transpose", b, perm=swap_last(len(sb)))), sa)
    lead = sa[:-1]
    if len(sb) == 2 and (len(lead) == 1 or all(isinstance(d, int) for d in lead)):
        if len(lead) > 1:
            a = e("reshape", a, shape=[-1, sa[-1]])
            dy = e("reshape", dy, shape=[-1, e.shape(dy)[-1]])
        return da, e("matmul", e("transpose", a, perm=[1, 0]), dy)
    return da, unbroadcast(e, e("matmul", e("transpose", a, perm=swap_last(len(sa))), dy), sb)


register("matmul", _matmul_infer, lambda a, b, attrs: np.matmul(a, b), _matmul_vjp, codegen="anchor")
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


# -- concat, pad, slice: data movement, each its own kernel (odc/codegen/kernels/layout.py) ------
def _axis(op: str, attrs: dict, rank: int) -> int:
    try:
        return normalize_axis(attrs["axis"], rank)
    except ShapeError as err:
        raise ShapeError(f"{op}: {err.message}") from None


def _concat_infer(ts, attrs):
    """Branches of one element type and rank whose sizes agree except on `axis` (a symbol
    agrees with itself); that axis needs known sizes, which add up."""
    if not ts:
        raise ShapeError("concat needs at least one tensor")
    first = ts[0]
    ax = _axis("concat", attrs, first.rank)
    for i, t in enumerate(ts[1:], 2):
        why = ("they need the same element type" if t.dtype != first.dtype else
               "they need the same number of axes" if t.rank != first.rank else
               f"they may differ only on axis {ax}"
               if any(d != f for j, (d, f) in enumerate(zip(t.shape, first.shape)) if j != ax) else None)
        if why:
            raise ShapeError(f"concat: branch {i} is {t} but branch 1 is {first}; {why}",
                             f"bring the branches to the same sizes on every axis but {ax} (e.g. with pad, "
                             f"slice or pooling), or concatenate along another axis")
    if len(ts) == 1:
        return first
    sizes = [t.shape[ax] for t in ts]
    if not all(isinstance(d, int) for d in sizes):
        i = next(i for i, d in enumerate(sizes, 1) if not isinstance(d, int))
        raise ShapeError(f"concat along axis {ax} needs sizes known at compile time there, but branch {i} is "
                         f"{ts[i - 1]}", "concatenate along another axis (the batch size is known only at run time)")
    return first.with_shape(sum(sizes) if j == ax else d for j, d in enumerate(first.shape))


def _concat_ref(*arrays):
    *xs, attrs = arrays
    return np.concatenate(xs, axis=normalize_axis(attrs["axis"], xs[0].ndim))


def _concat_vjp(e, n, y, dy):
    """Each branch's gradient is its slice of dY."""
    if len(n.args) == 1:
        return (dy,)
    ax = normalize_axis(n.attrs["axis"], len(e.shape(dy)))
    grads, start = [], 0
    for a in n.args:
        size = e.shape(a)[ax]
        grads.append(e("slice", dy, axis=ax, start=start, stop=start + size, step=1))
        start += size
    return tuple(grads)


register("concat", _concat_infer, _concat_ref, _concat_vjp, dtypes=ANY)
builtin("concat", lambda b, a: b.node("concat", a["tensors"], {"axis": a["axis"]}), Arg("tensors", "tensors"),
        Arg("axis", "integer", 1))


def pad_pairs(pads, rank: int) -> list[tuple[int, int]]:
    """(before, after) for each of `rank` axes from F.pad's list, which starts at the last axis."""
    pairs = [(0, 0)] * rank
    for i in range(len(pads) // 2):
        pairs[rank - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    return pairs


def _pad_infer(ts, attrs):
    """F.pad(x, pads, value=v), mode "constant": a negative amount crops, as in PyTorch, which
    refuses a pair whose crops exceed the axis, and odc an empty result."""
    x, pads = ts[0], list(attrs["pads"])
    if len(pads) % 2:
        raise ShapeError(f"pad takes pairs [before, after, ...] starting at the last axis, got {len(pads)} numbers "
                         f"{pads}", "give an even number of paddings: [left, right] or [left, right, top, bottom]")
    if len(pads) > 2 * x.rank:
        raise ShapeError(f"pad {pads} pads {len(pads) // 2} axes, but {x} has {x.rank}",
                         "one pair [before, after] per axis, the last axis first (as torch.nn.functional.pad)")
    shape = list(x.shape)
    for ax, (before, after) in enumerate(pad_pairs(pads, x.rank)):
        if before == after == 0:
            continue
        if not isinstance(shape[ax], int):
            raise ShapeError(f"pad {pads} pads axis {ax} of {x}, whose size is known only at run time",
                             "pad only the axes of known size: give 0, 0 for this one")
        crop = -min(before, 0) - min(after, 0)
        if crop > shape[ax]:
            raise ShapeError(f"pad {pads} crops {crop} elements from axis {ax} of {x}, which has {shape[ax]}",
                             "F.pad crops before it pads, so the negative amounts of a pair may remove at most "
                             "the whole axis")
        size = shape[ax] + before + after
        if size < 1:
            terms = "".join(f" {'-' if p < 0 else '+'} {abs(p)}" for p in (before, after))
            raise ShapeError(f"pad {pads} leaves axis {ax} of {x} with {size} elements ({shape[ax]}{terms})",
                             "a negative padding crops: crop less than the axis holds")
        shape[ax] = size
    return x.with_shape(shape)


def _pad_ref(x, attrs):
    pairs = pad_pairs(attrs["pads"], x.ndim)
    shape = [d + b + a for d, (b, a) in zip(x.shape, pairs)]
    out = np.full(shape, attrs.get("value", 0.0), dtype=x.dtype)
    # result index i holds x[i - before] where that exists
    dst = tuple(slice(max(b, 0), max(min(s, d + b), max(b, 0))) for s, d, (b, a) in zip(shape, x.shape, pairs))
    src = tuple(slice(o.start - b, o.stop - b) for o, (b, a) in zip(dst, pairs))
    out[dst] = x[src]
    return out


register("pad", _pad_infer, _pad_ref,
         # the adjoint of padding by p is padding (cropping) by -p with zeros
         lambda e, n, y, dy: (e("pad", dy, pads=[-p for p in n.attrs["pads"]], value=0.0),), dtypes=ANY)
builtin("pad", lambda b, a: b.node("pad", [a["x"]], {"pads": a["pads"], "value": float(a["value"])}),
        Arg("x", "tensor"), Arg("pads", "ints"), Arg("value", "number", 0))


def slice_range(size: int, start: int, stop: int, step: int) -> tuple[int, int]:
    """(first index, count) of Python's x[start:stop:step] on an axis of `size`: negative
    indices count from the end, and both are clamped to the axis."""
    first, last, step = slice(start, stop, step).indices(size)
    return first, len(range(first, last, step))


def _slice_infer(ts, attrs):
    x = ts[0]
    ax = _axis("slice", attrs, x.rank)
    start, stop, step = attrs["start"], attrs["stop"], attrs.get("step", 1)
    if not isinstance(step, int) or step < 1:
        raise ShapeError(f"slice: step must be a positive integer, got {step}")
    size = x.shape[ax]
    if not isinstance(size, int):
        raise ShapeError(f"slice of axis {ax} of {x}, whose size is known only at run time",
                         "slice an axis of known size")
    first, n = slice_range(size, start, stop, step)
    if n == 0:
        where = f"{start}:{stop}" + (f":{step}" if step != 1 else "")
        raise ShapeError(f"slice [{where}] of axis {ax} of {x} is empty (that axis has {size} elements)",
                         f"start must come before stop; a negative index counts from the end, so the valid "
                         f"indices are 0 to {size - 1} and -{size} to -1")
    return x.with_shape(n if j == ax else d for j, d in enumerate(x.shape))


def _slice_ref(x, attrs):
    ax = normalize_axis(attrs["axis"], x.ndim)
    index = (slice(None),) * ax + (slice(attrs["start"], attrs["stop"], attrs.get("step", 1)),)
    return np.ascontiguousarray(x[index])


def axis_pads(rank: int, axis: int, before: int, after: int) -> list[int]:
    """F.pad's list that pads only `axis` of `rank` axes."""
    return [0, 0] * (rank - 1 - axis) + [before, after]


def _slice_vjp(e, n, y, dy):
    """dY placed back at its indices, zeros elsewhere: a pad of dY; with a step, each element of
    dY first gets step - 1 zeros after it (a pad of a new axis of size 1, merged back), and
    the pad after the last may be negative (a crop)."""
    shape = e.shape(n.args[0])
    rank, step = len(shape), n.attrs.get("step", 1)
    ax = normalize_axis(n.attrs["axis"], rank)
    first, count = slice_range(shape[ax], n.attrs["start"], n.attrs["stop"], step)
    if step > 1:
        ds = list(e.shape(dy))
        dy = e("reshape", dy, shape=ds[:ax + 1] + [1] + ds[ax + 1:])
        dy = e("pad", dy, pads=axis_pads(rank + 1, ax + 1, 0, step - 1), value=0.0)
        dy = e("reshape", dy, shape=ds[:ax] + [count * step] + ds[ax + 1:])
        count *= step
    if first == 0 and count == shape[ax]:
        return (dy,)
    return (e("pad", dy, pads=axis_pads(rank, ax, first, shape[ax] - first - count), value=0.0),)


register("slice", _slice_infer, _slice_ref, _slice_vjp, dtypes=ANY)
builtin("slice", lambda b, a: b.node("slice", [a["x"]], {"axis": a["axis"], "start": a["start"], "stop": a["stop"],
                                                         "step": a["step"]}),
        Arg("x", "tensor"), Arg("axis", "axis"), Arg("start", "integer"), Arg("stop", "integer"),
        Arg("step", "int", 1))


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
