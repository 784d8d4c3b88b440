"""The ops of the image input (`odc.ir.ops.augment`): warp and per_channel (from_u8 is
elementwise).

warp, in parallel over images: for each output pixel (row v, column u) the K maps are applied,
the last first, in f32 arithmetic as the op defines it ((m0*u + m1*v) + m2, rounded half to
even by llvm.rint); the pixel is inside while every position lies in [0, W-1] x [0, H-1]. Its
channels are then copied from the position reached (converted from u8 to f32 / 255), or 0
outside. The maps are the same for all pixels of an image, so their loads leave the loops.
"""
from __future__ import annotations

from odc.codegen.builder import F32, I64, KernelBuilder, llvm_type
from odc.codegen.kernel import Kernel, lowering
from odc.ir.graph import Graph


@lowering("warp")
def warp(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    x, *maps = node.args
    n, c, h, w = node.type.shape
    u8 = g.type(x).dtype == "u8"
    ty = llvm_type(g.type(x).dtype)

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        with kb.loop(lo, hi) as img:
            m = [[kb.load(kb.ptr(mk), kb.add(kb.mul(img, 6), i)) for i in range(6)] for mk in maps]
            src = kb.mul(img, c * h * w)
            with kb.loop(0, h, name="v") as v, kb.loop(0, w, name="u") as u:
                pu, pv = b.sitofp(u, F32), b.sitofp(v, F32)
                inside = None
                for a in reversed(m):
                    pu, pv = (kb.unary_math("rint", b.fadd(b.fadd(b.fmul(a[0], pu), b.fmul(a[1], pv)), a[2])),
                              kb.unary_math("rint", b.fadd(b.fadd(b.fmul(a[3], pu), b.fmul(a[4], pv)), a[5])))
                    ok = b.and_(b.and_(b.fcmp_ordered(">=", pu, kb.const(0.0)), b.fcmp_ordered("<=", pu, kb.const(w - 1.0))),
                                b.and_(b.fcmp_ordered(">=", pv, kb.const(0.0)), b.fcmp_ordered("<=", pv, kb.const(h - 1.0))))
                    inside = ok if inside is None else b.and_(inside, ok)
                at = b.add(b.mul(b.fptosi(b.select(inside, pv, kb.const(0.0)), I64), kb.i64(w)),
                           b.fptosi(b.select(inside, pu, kb.const(0.0)), I64))
                out = kb.add(kb.mul(img, c * h * w), kb.add(kb.mul(v, w), u))
                for ch in range(c):
                    value = kb.load(kb.ptr(x), kb.add(kb.add(src, ch * h * w), at), ty)
                    value = b.fdiv(b.uitofp(value, F32), kb.const(255.0)) if u8 else value
                    kb.store(b.select(inside, value, kb.const(0.0)), kb.ptr(nid), kb.add(out, ch * h * w))

    return Kernel([x, *maps, nid], n, n * h * w * (8 * len(maps) + 2 * c), emit, names=["warp"])


@lowering("per_channel")
def per_channel(g: Graph, nid: int) -> Kernel:
    values = g.node(nid).attrs["values"]

    def emit(kb: KernelBuilder, lo, hi):
        for i, v in enumerate(values):
            kb.store(kb.const(float(v)), kb.ptr(nid), i)

    return Kernel([nid], 1, len(values), emit, names=["per_channel"])
