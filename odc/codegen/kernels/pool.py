"""Pooling: maxpool2d and avgpool2d and their gradients (maxpool2d_grad, avgpool2d_grad), in
parallel over images (each thread takes whole images, every channel plane of them in turn).

The windows are square (`kernel` k) with any `stride` s (default k); there is no padding:
the ops have no padding attribute, an output has (H - k) // s + 1 rows and (W - k) // s + 1
columns, and inputs past the last window are not read.

Forward: each output row is computed a vector of VW output columns at a time (the last vector
masked). For each window row ki, `_window_row` loads the input row segment those windows cover
as whole vectors, masked past the last input they need, and deinterleaves it with shuffles
into k vectors, one per window column kj; the k * k vectors are combined with an IEEE maximum
(a NaN propagates) or summed and divided by k * k.

Gradients (`pool2d_grad`): maxpool2d_grad(dy, x) sends each window's gradient to its first
maximum in row-major order, avgpool2d_grad(dy) spreads it evenly (dy / (k * k)) over the
window. Windows that tile the input (k == s) are computed a vector of VW windows at a time,
each input position written once, after zeroing the plane when H or W is not a multiple of k
(the inputs outside every window get 0); any other stride (overlapping windows, s < k, or gaps
between them, s > k) takes a scalar loop that zeroes the plane and accumulates window by
window.
"""
from __future__ import annotations

from llvmlite import ir

from odc.codegen.builder import F32, I1, I32, VW, KernelBuilder, vec
from odc.codegen.kernels.gemm import col_tiles
from odc.codegen.kernel import Kernel, lowering
from odc.ir.graph import Graph


@lowering("maxpool2d", "avgpool2d")
def pool2d(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    (x,) = node.args
    n, c, h, w = g.type(x).shape
    _, _, ho, wo = node.type.shape
    k = node.attrs["kernel"]
    s = node.attrs.get("stride", k)
    is_max = node.op == "maxpool2d"

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        with kb.loop(kb.mul(lo, c), kb.mul(hi, c)) as plane:
            src = kb.gep(kb.ptr(x), kb.mul(plane, h * w))
            dst = kb.gep(kb.ptr(nid), kb.mul(plane, ho * wo))
            with kb.loop(0, ho) as i:
                def tile(j0, _, lanes):
                    vals = [v for ki in range(k) for v in _window_row(kb, src, i, j0, ki, k, s, w, lanes)]
                    acc = vals[0]
                    for v in vals[1:]:
                        acc = kb.maximum(acc, v) if is_max else b.fadd(acc, v)
                    if not is_max:
                        acc = b.fdiv(acc, kb.splat(kb.const(float(k * k))))
                    kb.vstore(acc, dst, kb.add(kb.mul(i, wo), j0), mask=kb.tail_mask(lanes))
                col_tiles(kb, wo, 1, tile)

    return Kernel([x, nid], n, node.type.numel * k * k / 4, emit, names=[node.op])


def _window_row(kb: KernelBuilder, src, i, j0, ki: int, k: int, s: int, w: int, lanes: int) -> list:
    """For the VW windows (i, j0 + l), l < lanes: one vector per kj < k holding input
    (i*s + ki, (j0 + l)*s + kj). Loads the row segment as whole vectors (masked past the
    last needed input) and deinterleaves it with shuffles."""
    need = (lanes - 1) * s + k  # inputs of the row segment that the windows use
    base = kb.gep(src, kb.add(kb.mul(kb.add(kb.mul(i, s), ki), w), kb.mul(j0, s)))
    parts = [kb.vload(base, t * VW, mask=kb.tail_mask(need - t * VW))
             for t in range(-(-need // VW))]
    wide = _concat(kb, parts)
    return [kb.b.shuffle_vector(wide, wide, _lanes([min(l * s + kj, need - 1) for l in range(VW)]))
            for kj in range(k)]


def _concat(kb: KernelBuilder, parts: list):
    """One vector holding `parts` end to end (padded with zero vectors to a power of two)."""
    while len(parts) & (len(parts) - 1):
        parts = parts + [ir.Constant(parts[0].type, None)]
    while len(parts) > 1:
        n = parts[0].type.count
        parts = [kb.b.shuffle_vector(a, b_, _lanes(range(2 * n))) for a, b_ in zip(parts[::2], parts[1::2])]
    return parts[0]


def _lanes(idx) -> ir.Constant:
    idx = list(idx)
    return ir.Constant(vec(len(idx), I32), idx)


@lowering("maxpool2d_grad", "avgpool2d_grad")
def pool2d_grad(g: Graph, nid: int) -> Kernel:
    """The gradient of a pooling: maxpool2d's goes, per window, to its first maximum in
    row-major order, avgpool2d's is spread evenly. Windows that tile the input (kernel ==
    stride, the usual case) are computed a vector of windows at a time, writing each input
    position once; other strides (overlapping windows, or gaps between them) take a scalar
    loop that accumulates."""
    node = g.node(nid)
    dy = node.args[0]
    n, c, ho, wo = g.type(dy).shape
    _, _, h, w = node.type.shape
    k = node.attrs["kernel"]
    s = node.attrs.get("stride", k)
    is_max = node.op == "maxpool2d_grad"
    x = node.args[1] if is_max else None
    body = _tiled_grad if k == s else _overlapping_grad
    values = [dy, nid] + ([x] if is_max else [])
    return Kernel(values, n, n * c * (h * w + ho * wo * k * k) / 4,
                  lambda kb, lo, hi: body(kb, kb.mul(lo, c), kb.mul(hi, c), dy, x, nid, (h, w, ho, wo, k, s)),
                  names=[node.op])


def _zero(kb: KernelBuilder, dst, count: int) -> None:
    with kb.loop(0, count) as t:
        kb.store(kb.const(0.0), dst, t)


def _tiled_grad(kb: KernelBuilder, lo, hi, dy, x, dx, dims) -> None:
    h, w, ho, wo, k, _ = dims
    b = kb.b
    zero = ir.Constant(vec(VW), None)
    with kb.loop(lo, hi) as plane:
        dst = kb.gep(kb.ptr(dx), kb.mul(plane, h * w))
        grad = kb.gep(kb.ptr(dy), kb.mul(plane, ho * wo))
        src = kb.gep(kb.ptr(x), kb.mul(plane, h * w)) if x is not None else None
        if ho * k != h or wo * k != w:  # inputs outside every window get no gradient
            _zero(kb, dst, h * w)
        with kb.loop(0, ho) as i:
            def tile(j0, _, lanes):
                mask = kb.tail_mask(lanes)
                gv = kb.vload(grad, kb.add(kb.mul(i, wo), j0), mask=mask)
                if src is None:
                    share = b.fdiv(gv, kb.splat(kb.const(float(k * k))))
                    out = [[share] * k for _ in range(k)]
                else:
                    vals = [_window_row(kb, src, i, j0, ki, k, k, w, lanes) for ki in range(k)]
                    m = vals[0][0]
                    for v in [v for row in vals for v in row][1:]:
                        m = kb.maximum(m, v)
                    found = ir.Constant(vec(VW, I1), None)
                    out = []
                    for row in vals:
                        out.append([])
                        for v in row:
                            take = b.and_(b.fcmp_ordered("==", v, m), b.not_(found))
                            found = b.or_(found, take)
                            out[-1].append(b.select(take, gv, zero))
                for ki in range(k):
                    wide = _concat(kb, out[ki])
                    order = _lanes(q * VW + lane for lane in range(VW) for q in range(k))
                    inter = b.shuffle_vector(wide, wide, order)
                    row = kb.gep(dst, kb.add(kb.mul(kb.add(kb.mul(i, k), ki), w), kb.mul(j0, k)))
                    for t in range(k):
                        part = b.shuffle_vector(inter, inter, _lanes(range(t * VW, (t + 1) * VW)))
                        valid = lanes * k - t * VW
                        if valid > 0:
                            kb.vstore(part, row, t * VW, mask=kb.tail_mask(valid))
            col_tiles(kb, wo, 1, tile)


def _overlapping_grad(kb: KernelBuilder, lo, hi, dy, x, dx, dims) -> None:
    h, w, ho, wo, k, s = dims
    b = kb.b
    with kb.loop(lo, hi) as plane:
        dst = kb.gep(kb.ptr(dx), kb.mul(plane, h * w))
        grad = kb.gep(kb.ptr(dy), kb.mul(plane, ho * wo))
        src = kb.gep(kb.ptr(x), kb.mul(plane, h * w)) if x is not None else None
        _zero(kb, dst, h * w)
        with kb.loop(0, ho) as i:
            with kb.loop(0, wo) as j:
                first = kb.add(kb.mul(kb.mul(i, s), w), kb.mul(j, s))
                gv = kb.load(grad, kb.add(kb.mul(i, wo), j))
                if src is None:
                    share = b.fdiv(gv, kb.const(float(k * k)))
                    for at in [kb.add(first, ki * w + kj) for ki in range(k) for kj in range(k)]:
                        kb.store(b.fadd(kb.load(dst, at), share), dst, at)
                else:
                    best = kb.var(F32, kb.load(src, first), "best")
                    where = kb.var(first.type, first, "where")
                    for ki in range(k):
                        for kj in range(k):
                            off = kb.add(first, ki * w + kj)
                            v = kb.load(src, off)
                            better = b.fcmp_ordered(">", v, kb.get(best))
                            kb.set(best, b.select(better, v, kb.get(best)))
                            kb.set(where, b.select(better, off, kb.get(where)))
                    at = kb.get(where)
                    kb.store(b.fadd(kb.load(dst, at), gv), dst, at)
