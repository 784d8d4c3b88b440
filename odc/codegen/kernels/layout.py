"""Data movement: transpose (a strided copy) and one_hot."""
from __future__ import annotations

from odc.codegen.builder import I32, KernelBuilder, llvm_type
from odc.codegen.kernels.elementwise import collapse, contiguous_strides, loop_nest
from odc.codegen.kernel import Kernel, lowering
from odc.ir.graph import Graph


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
