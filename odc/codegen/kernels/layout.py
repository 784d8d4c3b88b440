"""Data movement: transpose and slice (strided copies), concat (a copy of each branch into its
part of the result), pad (rows of the fill value around a copy) and one_hot."""
from __future__ import annotations

from contextlib import ExitStack

from llvmlite import ir

from odc.codegen.builder import I32, KernelBuilder, llvm_type
from odc.codegen.kernels.elementwise import collapse, contiguous_strides, loop_nest
from odc.codegen.kernel import Kernel, lowering
from odc.ir.graph import Graph
from odc.ir.ops import normalize_axis
from odc.ir.ops.tensor import pad_pairs, slice_range


@lowering("transpose")
def transpose(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    (x,) = node.args
    perm = node.attrs["perm"]
    in_strides = contiguous_strides(g.type(x).shape)
    shape = node.type.shape
    cshape, (si, so) = collapse(shape, [[in_strides[p] for p in perm], contiguous_strides(shape)], False)
    ty = llvm_type(node.type.dtype)

    def emit(kb: KernelBuilder, lo, hi):
        loop_nest(kb, cshape, [si, so], lo, hi, None,
                  lambda off: kb.store(kb.load(kb.ptr(x), off[0], ty), kb.ptr(nid), off[1]))

    return Kernel([x, nid], cshape[0] if cshape else 1, node.type.numel, emit, names=["transpose"])


@lowering("one_hot")
def one_hot(g: Graph, nid: int) -> Kernel:
    """Rows of zeros with a one at the label; a label outside [0, classes) sets status 1."""
    node = g.node(nid)
    (y,) = node.args
    classes = node.attrs["classes"]
    rows = g.type(y).numel
    ty, lty = llvm_type(node.type.dtype), llvm_type(g.type(y).dtype)

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        with kb.loop(lo, hi) as r:
            with kb.loop(0, classes) as c:
                kb.store(kb.const(0.0, ty), kb.ptr(nid), kb.add(kb.mul(r, classes), c))
            label = kb.to_i64(kb.load(kb.ptr(y), r, lty))
            ok = b.and_(b.icmp_signed(">=", label, kb.i64(0)), b.icmp_signed("<", label, kb.i64(classes)))
            with b.if_else(ok) as (then, other):
                with then:
                    kb.store(kb.const(1.0, ty), kb.ptr(nid), kb.add(kb.mul(r, classes), label))
                with other:
                    kb.store(kb.const(1, I32), kb.status, 0)

    return Kernel([y, nid], rows, rows * classes, emit, status=True, names=["one_hot"])


@lowering("slice")
def slice_(g: Graph, nid: int) -> Kernel:
    """x[..., first + i*step, ...]: a strided copy."""
    node = g.node(nid)
    (x,) = node.args
    xs, shape = g.type(x).shape, node.type.shape
    ax = normalize_axis(node.attrs["axis"], len(xs))
    step = node.attrs.get("step", 1)
    first, _ = slice_range(xs[ax], node.attrs["start"], node.attrs["stop"], step)
    in_strides = contiguous_strides(xs)
    base = first * in_strides[ax]
    in_strides[ax] *= step
    cshape, (si, so) = collapse(shape, [in_strides, contiguous_strides(shape)], False)
    ty = llvm_type(node.type.dtype)

    def emit(kb: KernelBuilder, lo, hi):
        loop_nest(kb, cshape, [si, so], lo, hi, None,
                  lambda off: kb.store(kb.load(kb.ptr(x), kb.add(off[0], base), ty), kb.ptr(nid), off[1]))

    return Kernel([x, nid], cshape[0] if cshape else 1, node.type.numel, emit, names=["slice"])


@lowering("concat")
def concat(g: Graph, nid: int) -> Kernel:
    """Each branch copied into its part of the result. The parallel range is dim 0 of the result:
    along another axis every branch copies rows [lo, hi) of its own; along axis 0 a branch copies
    the part of [lo, hi) that falls in its rows."""
    node = g.node(nid)
    shape = node.type.shape
    ax = normalize_axis(node.attrs["axis"], len(shape))
    out_strides = contiguous_strides(shape)
    ty = llvm_type(node.type.dtype)
    parts, first = [], 0  # (branch, loop shape, its strides, the result's strides, first index on ax, size)
    for x in node.args:
        xs = g.type(x).shape
        cshape, (si, so) = collapse(xs, [contiguous_strides(xs), out_strides], True)
        parts.append((x, cshape, si, so, first, xs[ax]))
        first += xs[ax]

    def emit(kb: KernelBuilder, lo, hi):
        for x, cshape, si, so, start, size in parts:
            out = kb.gep(kb.ptr(nid), start * out_strides[ax], ty)
            if ax == 0:
                rlo = kb.smin(kb.smax(kb.add(lo, -start), 0), size)
                rhi = kb.smin(kb.smax(kb.add(hi, -start), 0), size)
            else:
                rlo, rhi = lo, hi
            loop_nest(kb, cshape, [si, so], rlo, rhi, None,
                      lambda off, x=x, out=out: kb.store(kb.load(kb.ptr(x), off[0], ty), out, off[1]))

    return Kernel(list(dict.fromkeys(node.args)) + [nid], shape[0], 2 * node.type.numel, emit, names=["concat"])


@lowering("pad")
def pad(g: Graph, nid: int) -> Kernel:
    """Result index i of a padded axis holds x[i - before] where that exists, else the fill
    value (a negative `before` or `after` crops). Loops over the rows of the last axis: a row
    whose other indices fall outside x is all fill; any other is fill, a contiguous copy, fill."""
    node = g.node(nid)
    (x,) = node.args
    xs, shape = list(g.type(x).shape), list(node.type.shape)
    before = [b for b, _ in pad_pairs(node.attrs["pads"], len(shape))]
    while len(shape) < 2:  # a leading axis of 1 gives the row loop an outer loop
        xs, shape, before = [1] + xs, [1] + shape, [0] + before
    in_strides, out_strides = contiguous_strides(xs), contiguous_strides(shape)
    dtype = node.type.dtype
    ty = llvm_type(dtype)
    fill = ir.Constant(ty, float(node.attrs.get("value", 0.0)) if dtype.startswith("f")
                       else int(node.attrs.get("value", 0)))
    width, src_width, shift = shape[-1], xs[-1], before[-1]
    left = min(max(shift, 0), width)  # fill [0, left), copy [left, right), fill [right, width)
    right = max(min(src_width + shift, width), left)

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b

        def fill_row(dst, start, stop):
            if stop > start:
                with kb.loop(start, stop, name="f") as t:
                    kb.store(fill, kb.ptr(nid), kb.add(dst, t))

        def row(src, dst):
            fill_row(dst, 0, left)
            if right > left:
                with kb.loop(left, right, name="c") as t:
                    kb.store(kb.load(kb.ptr(x), kb.add(src, kb.add(t, -shift)), ty), kb.ptr(nid), kb.add(dst, t))
            fill_row(dst, right, width)

        with ExitStack() as stack:
            inside, src, dst = None, 0, 0
            for d in range(len(shape) - 1):
                i = stack.enter_context(kb.loop(lo if d == 0 else 0, hi if d == 0 else shape[d], name=f"i{d}"))
                dst = kb.add(dst, kb.mul(i, out_strides[d]))
                j = kb.add(i, -before[d])  # the index into x
                if before[d] or shape[d] != xs[d]:
                    ok = b.and_(b.icmp_signed(">=", j, kb.i64(0)), b.icmp_signed("<", j, kb.i64(xs[d])))
                    inside = ok if inside is None else b.and_(inside, ok)
                src = kb.add(src, kb.mul(j, in_strides[d]))
            if inside is None:
                row(src, dst)
            else:
                with b.if_else(inside) as (then, other):
                    with then:
                        row(src, dst)
                    with other:
                        fill_row(dst, 0, width)

    return Kernel([x, nid], shape[0], 2 * node.type.numel, emit, names=["pad"])
