"""Pooling: maxpool2d, avgpool2d and adaptive_avgpool2d and their gradients (maxpool2d_grad,
avgpool2d_grad, adaptive_avgpool2d_grad), in parallel over images (each thread takes whole
images, every channel plane of them in turn).

Windows (`odc.ir.ops.pool.Window`): kernel (kh, kw), stride (sh, sw), padding (ph, pw); an
output has (H + 2ph - kh) // sh + 1 rows and (W + 2pw - kw) // sw + 1 columns, and inputs past
the last window are not read. Padding is never read either: max pooling pads with -inf and
average pooling with 0 (its divisor is kh * kw all the same), so a window's padding changes
nothing that its inputs give, and the kernels leave it out.

Forward, windows of at most `UNROLL` inputs whose row segment fits `SEGMENT` vectors: each output
row is computed a vector of VW output columns at a time (the last vector masked). For each window
row ki, `_window_row` loads the input row segment those windows cover as whole vectors, masked
past the last input they need, and deinterleaves it with shuffles into kw vectors, one per window
column kj; the kh * kw vectors are combined with an IEEE maximum (a NaN propagates) or summed and
divided by kh * kw. With padding, the masks also leave out the columns left and right of the input
(computed at run time from the first column) and whole rows above and below it, and a masked lane
of a max pooling reads as -inf. Larger windows, and adaptive_avgpool2d's windows of varying size,
take `_window_loop`: for each output, a loop over the window's rows (clamped to the input) that
reads each row as masked vectors and folds them into one accumulator, reduced across its lanes
at the end (sums reassociate).

Gradients: maxpool2d_grad(dy, x) sends each window's gradient to its first maximum in row-major
order (never to padding; the first input of a window whose inputs are all -inf), avgpool2d_grad(dy)
spreads it evenly (dy / (kh * kw)) over the window's inputs. Both take VW windows of an output row
at a time, as the forward does. Windows that tile the input without padding (kernel == stride)
write each input position once, after zeroing the plane when H or W is not a multiple of the
kernel (the inputs outside every window get 0). Other geometries (overlapping windows, gaps
between them, padding) zero the plane, then `_add_row` interleaves each window row's kw gradient
vectors with shuffles into the input row segment those windows cover and adds them to it (a
masked load, add and store per vector, leaving out padding), window row by window row. Larger
windows, and adaptive_avgpool2d_grad, take scalar loops over each window clamped to the input.
"""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from odc.codegen.builder import F32, I1, I32, I64, VW, KernelBuilder, vec
from odc.codegen.kernels.gemm import col_tiles
from odc.codegen.kernel import Kernel, lowering
from odc.ir.graph import Graph
from odc.ir.ops.pool import Window, adaptive_bounds

UNROLL = 64  # most inputs of a window computed in unrolled code
SEGMENT = 8  # most vectors of an input row segment deinterleaved into window columns
NEG_INF = float("-inf")


def vector_path(win: Window) -> bool:
    """Whether the forward kernel computes vectors of output columns in unrolled code."""
    (kh, kw), sw = win.kernel, win.stride[1]
    return kh * kw <= UNROLL and (VW - 1) * sw + kw <= SEGMENT * VW


@lowering("maxpool2d", "avgpool2d")
def pool2d(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    (x,) = node.args
    n, c, h, w = g.type(x).shape
    _, _, ho, wo = node.type.shape
    win = Window.of(node.attrs)
    (kh, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.pad
    is_max = node.op == "maxpool2d"
    cost = node.type.numel * kh * kw / 4

    if not vector_path(win):
        def emit(kb: KernelBuilder, lo, hi):
            def clamp(i, size, k, s, p):
                start = kb.add(kb.mul(i, s), -p)
                return (kb.smax(start, 0) if p else start), (kb.smin(kb.add(start, k), size) if p else kb.add(start, k))
            _window_loop(kb, kb.mul(lo, c), kb.mul(hi, c), x, nid, (h, w, ho, wo), is_max,
                         lambda i: clamp(i, h, kh, sh, ph), lambda j: clamp(j, w, kw, sw, pw), kw,
                         lambda r0, r1, c0, c1: kb.const(float(kh * kw)))
        return Kernel([x, nid], n, cost * 2, emit, names=[node.op])

    fill = NEG_INF if is_max else 0.0

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        with kb.loop(kb.mul(lo, c), kb.mul(hi, c)) as plane:
            src = kb.gep(kb.ptr(x), kb.mul(plane, h * w))
            dst = kb.gep(kb.ptr(nid), kb.mul(plane, ho * wo))
            with kb.loop(0, ho) as i:
                def tile(j0, _, lanes):
                    vals = [v for ki in range(kh) for v in _window_row(kb, src, i, j0, ki, win, h, w, lanes, fill)]
                    acc = vals[0]
                    for v in vals[1:]:
                        acc = kb.maximum(acc, v) if is_max else b.fadd(acc, v)
                    if not is_max:
                        acc = b.fdiv(acc, kb.splat(kb.const(float(kh * kw))))
                    kb.vstore(acc, dst, kb.add(kb.mul(i, wo), j0), mask=kb.tail_mask(lanes))
                col_tiles(kb, wo, 1, tile)

    return Kernel([x, nid], n, cost, emit, names=[node.op])


def _iota(start: int = 0, step: int = 1) -> ir.Constant:
    return ir.Constant(vec(VW, I64), list(range(start, start + step * VW, step)))


def _within(kb: KernelBuilder, v, size: int):
    """0 <= v < size, for an i64 scalar (an int too) or vector."""
    b = kb.b
    v = kb.i64(v)
    if isinstance(v.type, ir.VectorType):
        return b.and_(b.icmp_signed(">=", v, ir.Constant(v.type, None)), b.icmp_signed("<", v, kb.splat(kb.i64(size))))
    return b.and_(b.icmp_signed(">=", v, kb.i64(0)), b.icmp_signed("<", v, kb.i64(size)))


def _window_row(kb: KernelBuilder, src, i, j0, ki: int, win: Window, h: int, w: int, lanes: int,
                fill: float) -> list:
    """For the VW windows (i, j0 + l), l < lanes: one vector per kj < kw holding input
    (i*sh - ph + ki, (j0 + l)*sw - pw + kj), or `fill` where that is padding. Loads the row
    segment as whole vectors (masked past the last needed input, and outside the input) and
    deinterleaves it with shuffles."""
    b = kb.b
    (_, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.pad
    need = (lanes - 1) * sw + kw  # inputs of the row segment that the windows use
    row = kb.add(kb.mul(i, sh), ki - ph)
    col = kb.add(kb.mul(j0, sw), -pw)
    base = kb.gep(src, kb.add(kb.mul(row, w), col))
    parts = []
    for t in range(-(-need // VW)):
        mask = _segment_mask(kb, row, col, t, need, win, h, w)
        v = kb.vload(base, t * VW, mask=mask)  # a masked lane reads 0
        parts.append(b.select(mask, v, kb.splat(kb.const(fill))) if fill and (ph or pw) else v)
    wide = _concat(kb, parts)
    return [b.shuffle_vector(wide, wide, _lanes([min(l * sw + kj, need - 1) for l in range(VW)]))
            for kj in range(kw)]


def _segment_mask(kb: KernelBuilder, row, col, t: int, need: int, win: Window, h: int, w: int):
    """The mask of vector t of the row segment of `need` inputs from (row, col): its lanes
    before `need`, and with padding those inside the input."""
    b = kb.b
    mask = kb.tail_mask(need - t * VW)
    if win.pad == (0, 0):
        return mask
    mask = mask if mask is not None else kb.mask(VW, VW)
    if win.pad[1]:
        mask = b.and_(mask, _within(kb, b.add(kb.splat(kb.i64(kb.add(col, t * VW))), _iota()), w))
    if win.pad[0]:
        mask = b.and_(mask, kb.splat(_within(kb, row, h)))
    return mask


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


def _window_loop(kb: KernelBuilder, lo, hi, x, y, dims, is_max: bool, rows, cols, widest: int, divisor) -> None:
    """Planes [lo, hi): each output (i, j) the maximum or the sum / divisor(r0, r1, c0, c1) of
    the inputs of rows [r0, r1) = rows(i) and columns [c0, c1) = cols(j) (r0 < r1, c0 < c1, and
    c1 - c0 <= widest), each row read as masked vectors."""
    h, w, ho, wo = dims
    b = kb.b
    fill = kb.splat(kb.const(NEG_INF if is_max else 0.0))
    acc = kb.var(vec(VW), name="acc")
    with kb.loop(lo, hi) as plane:
        src = kb.gep(kb.ptr(x), kb.mul(plane, h * w))
        dst = kb.gep(kb.ptr(y), kb.mul(plane, ho * wo))
        with kb.loop(0, ho) as i:
            r0, r1 = rows(i)
            with kb.loop(0, wo) as j:
                c0, c1 = cols(j)
                width = kb.splat(kb.i64(b.sub(kb.i64(c1), kb.i64(c0))))
                kb.set(acc, fill)
                with kb.loop(r0, r1) as r:
                    at = kb.gep(src, kb.add(kb.mul(r, w), c0))
                    for t in range(-(-widest // VW)):
                        mask = b.icmp_signed("<", _iota(t * VW), width)
                        v = kb.vload(at, t * VW, mask=mask)
                        if is_max:
                            kb.set(acc, kb.maximum(kb.get(acc), b.select(mask, v, fill)))
                        else:
                            kb.set(acc, b.fadd(kb.get(acc), v))
                if is_max:
                    out = kb.hmax(kb.get(acc))
                else:
                    out = b.fdiv(kb.hsum(kb.get(acc)), divisor(r0, r1, c0, c1))
                kb.store(out, dst, kb.add(kb.mul(i, wo), j))


def _adaptive_bounds(kb: KernelBuilder, i, size: int, out: int):
    """PyTorch's adaptive window along an axis at run time: [i*size // out, ceil((i+1)*size / out))."""
    b = kb.b
    start = b.sdiv(kb.i64(kb.mul(i, size)), kb.i64(out))
    stop = b.sdiv(kb.i64(kb.add(kb.mul(i, size), size + out - 1)), kb.i64(out))
    return start, stop


def _area(kb: KernelBuilder, r0, r1, c0, c1):
    b = kb.b
    return b.sitofp(b.mul(b.sub(r1, r0), b.sub(c1, c0)), F32)


@lowering("adaptive_avgpool2d")
def adaptive_avgpool2d(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    (x,) = node.args
    n, c, h, w = g.type(x).shape
    _, _, ho, wo = node.type.shape
    widest = max(c1 - c0 for c0, c1 in adaptive_bounds(w, wo))
    tallest = max(r1 - r0 for r0, r1 in adaptive_bounds(h, ho))

    def emit(kb: KernelBuilder, lo, hi):
        _window_loop(kb, kb.mul(lo, c), kb.mul(hi, c), x, nid, (h, w, ho, wo), False,
                     lambda i: _adaptive_bounds(kb, i, h, ho), lambda j: _adaptive_bounds(kb, j, w, wo), widest,
                     lambda r0, r1, c0, c1: _area(kb, r0, r1, c0, c1))

    return Kernel([x, nid], n, node.type.numel * tallest * -(-widest // VW) * 2, emit, names=[node.op])


@lowering("maxpool2d_grad", "avgpool2d_grad")
def pool2d_grad(g: Graph, nid: int) -> Kernel:
    """The gradient of a pooling: maxpool2d's goes, per window, to its first maximum in
    row-major order, avgpool2d's is spread evenly. Windows that tile the input without padding
    (kernel == stride, the usual case) are computed a vector of windows at a time, writing each
    input position once; other geometries (overlapping windows, gaps between them, padding) take
    a scalar loop that accumulates."""
    node = g.node(nid)
    dy = node.args[0]
    n, c, ho, wo = g.type(dy).shape
    _, _, h, w = node.type.shape
    win = Window.of(node.attrs)
    (kh, kw) = win.kernel
    is_max = node.op == "maxpool2d_grad"
    x = node.args[1] if is_max else None
    if win.kernel == win.stride and win.pad == (0, 0) and vector_path(win):
        body = _tiled_grad
    elif vector_path(win):
        body = _scattered_grad
    else:
        body = _looped_grad
    values = [dy, nid] + ([x] if is_max else [])
    return Kernel(values, n, n * c * (h * w + ho * wo * kh * kw) / 4,
                  lambda kb, lo, hi: body(kb, kb.mul(lo, c), kb.mul(hi, c), dy, x, nid, (h, w, ho, wo), win),
                  names=[node.op])


def _zero(kb: KernelBuilder, dst, count: int) -> None:
    with kb.loop(0, count) as t:
        kb.store(kb.const(0.0), dst, t)


@contextmanager
def _planes(kb: KernelBuilder, lo, hi, dy, x, dx, dims):
    """A loop over planes [lo, hi): yields the plane's dx, dy and x (None) pointers."""
    h, w, ho, wo = dims
    with kb.loop(lo, hi) as plane:
        yield (kb.gep(kb.ptr(dx), kb.mul(plane, h * w)), kb.gep(kb.ptr(dy), kb.mul(plane, ho * wo)),
               kb.gep(kb.ptr(x), kb.mul(plane, h * w)) if x is not None else None)


def _tiled_grad(kb: KernelBuilder, lo, hi, dy, x, dx, dims, win: Window) -> None:
    h, w, ho, wo = dims
    kh, kw = win.kernel
    b = kb.b
    zero = ir.Constant(vec(VW), None)
    with _planes(kb, lo, hi, dy, x, dx, dims) as (dst, grad, src):
        if ho * kh != h or wo * kw != w:  # inputs outside every window get no gradient
            _zero(kb, dst, h * w)
        with kb.loop(0, ho) as i:
            def tile(j0, _, lanes):
                mask = kb.tail_mask(lanes)
                gv = kb.vload(grad, kb.add(kb.mul(i, wo), j0), mask=mask)
                if src is None:
                    share = b.fdiv(gv, kb.splat(kb.const(float(kh * kw))))
                    out = [[share] * kw for _ in range(kh)]
                else:
                    vals = [_window_row(kb, src, i, j0, ki, win, h, w, lanes, 0.0) for ki in range(kh)]
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
                for ki in range(kh):
                    wide = _concat(kb, out[ki])
                    order = _lanes(q * VW + lane for lane in range(VW) for q in range(kw))
                    inter = b.shuffle_vector(wide, wide, order)
                    row = kb.gep(dst, kb.add(kb.mul(kb.add(kb.mul(i, kh), ki), w), kb.mul(j0, kw)))
                    for t in range(kw):
                        part = b.shuffle_vector(inter, inter, _lanes(range(t * VW, (t + 1) * VW)))
                        valid = lanes * kw - t * VW
                        if valid > 0:
                            kb.vstore(part, row, t * VW, mask=kb.tail_mask(valid))
            col_tiles(kb, wo, 1, tile)


def _scattered_grad(kb: KernelBuilder, lo, hi, dy, x, dx, dims, win: Window) -> None:
    """Any geometry of the unrolled forward code: for VW windows of an output row at a time, the
    gradient each of the kh * kw window positions receives (a vector each: the whole share of
    an average, or dy where the position is its window's first maximum), added row by row of
    the window into the input row segment those windows cover (`_add_row`)."""
    h, w, ho, wo = dims
    kh, kw = win.kernel
    b = kb.b
    zero = ir.Constant(vec(VW), None)
    with _planes(kb, lo, hi, dy, x, dx, dims) as (dst, grad, src):
        _zero(kb, dst, h * w)
        with kb.loop(0, ho) as i:
            def tile(j0, _, lanes):
                gv = kb.vload(grad, kb.add(kb.mul(i, wo), j0), mask=kb.tail_mask(lanes))  # 0 past `lanes`
                if src is None:
                    share = b.fdiv(gv, kb.splat(kb.const(float(kh * kw))))
                    out = [[share] * kw for _ in range(kh)]
                else:
                    vals = [_window_row(kb, src, i, j0, ki, win, h, w, lanes, NEG_INF) for ki in range(kh)]
                    m = vals[0][0]
                    for v in [v for row in vals for v in row][1:]:
                        m = kb.maximum(m, v)
                    inside = _inside(kb, i, j0, win, h, w)
                    found = ir.Constant(vec(VW, I1), None)
                    out = []
                    for ki, row in enumerate(vals):
                        out.append([])
                        for kj, v in enumerate(row):
                            take = b.and_(b.fcmp_ordered("==", v, m), b.not_(found))
                            if inside[ki][kj] is not None:  # padding is never a maximum
                                take = b.and_(take, inside[ki][kj])
                            found = b.or_(found, take)
                            out[-1].append(b.select(take, gv, zero))
                for ki in range(kh):
                    _add_row(kb, dst, i, j0, ki, out[ki], win, h, w, lanes)
            col_tiles(kb, wo, 1, tile)


def _inside(kb: KernelBuilder, i, j0, win: Window, h: int, w: int) -> list:
    """[ki][kj]: for the VW windows (i, j0 + l), whether position (ki, kj) lies inside the input
    (an i1 vector; None where it always does)."""
    b = kb.b
    (kh, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.pad
    rows = [kb.splat(_within(kb, kb.add(kb.mul(i, sh), ki - ph), h)) if ph else None for ki in range(kh)]
    first = kb.splat(kb.i64(kb.add(kb.mul(j0, sw), -pw)))
    cols = [_within(kb, b.add(first, _iota(kj, sw)), w) if pw else None for kj in range(kw)]
    return [[r if c is None else c if r is None else b.and_(r, c) for c in cols] for r in rows]


def _add_row(kb: KernelBuilder, dst, i, j0, ki: int, parts: list, win: Window, h: int, w: int, lanes: int) -> None:
    """Adds parts[kj] lane l, for l < lanes, into input (i*sh - ph + ki, (j0 + l)*sw - pw + kj):
    the kw vectors are interleaved with shuffles into the row segment those windows cover, which
    is loaded, summed and stored a vector at a time, masked past its end and outside the input."""
    b = kb.b
    (_, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.pad
    need = (lanes - 1) * sw + kw
    row = kb.add(kb.mul(i, sh), ki - ph)
    col = kb.add(kb.mul(j0, sw), -pw)
    base = kb.gep(dst, kb.add(kb.mul(row, w), col))
    for t in range(-(-need // VW)):
        seg = None
        for kj, v in enumerate(parts):
            # segment position p = l*sw + kj takes lane l; other positions lane VW of [v, 0] (zero)
            idx = [(p - kj) // sw if (p - kj) % sw == 0 and 0 <= (p - kj) // sw < lanes else VW
                   for p in range(t * VW, (t + 1) * VW)]
            if all(q == VW for q in idx):
                continue
            spread = b.shuffle_vector(v, ir.Constant(v.type, None), _lanes(idx))
            seg = spread if seg is None else b.fadd(seg, spread)
        if seg is None:
            continue
        mask = _segment_mask(kb, row, col, t, need, win, h, w)
        kb.vstore(b.fadd(kb.vload(base, t * VW, mask=mask), seg), base, t * VW, mask=mask)


def _looped_grad(kb: KernelBuilder, lo, hi, dy, x, dx, dims, win: Window) -> None:
    """Large windows: loops over each window clamped to the input."""
    (kh, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.pad

    def clamp(i, size, k, s, p):
        start = kb.add(kb.mul(i, s), -p)
        return kb.smax(start, 0), kb.smin(kb.add(start, k), size)
    _accumulate_grad(kb, lo, hi, dy, x, dx, dims, lambda i: clamp(i, dims[0], kh, sh, ph),
                     lambda j: clamp(j, dims[1], kw, sw, pw), lambda r0, r1, c0, c1: kb.const(float(kh * kw)))


def _accumulate_grad(kb: KernelBuilder, lo, hi, dy, x, dx, dims, rows, cols, divisor) -> None:
    """Zeroes each plane of dx, then, for each output (i, j) and its window, rows [r0, r1) =
    rows(i) and columns [c0, c1) = cols(j): adds dy / divisor(r0, r1, c0, c1) to each input
    (x None), or dy to the first maximum of x."""
    h, w, ho, wo = dims
    b = kb.b
    with _planes(kb, lo, hi, dy, x, dx, dims) as (dst, grad, src):
        _zero(kb, dst, h * w)
        with kb.loop(0, ho) as i:
            r0, r1 = rows(i)
            with kb.loop(0, wo) as j:
                c0, c1 = cols(j)
                gv = kb.load(grad, kb.add(kb.mul(i, wo), j))
                if src is None:
                    share = b.fdiv(gv, divisor(r0, r1, c0, c1))
                    with kb.loop(r0, r1) as r, kb.loop(c0, c1, name="c") as col:
                        at = kb.add(kb.mul(r, w), col)
                        kb.store(b.fadd(kb.load(dst, at), share), dst, at)
                else:
                    best = kb.var(F32, kb.const(NEG_INF), "best")
                    where = kb.var(I64, kb.i64(kb.add(kb.mul(r0, w), c0)), "where")
                    with kb.loop(r0, r1) as r, kb.loop(c0, c1, name="c") as col:
                        at = kb.add(kb.mul(r, w), col)
                        v = kb.load(src, at)
                        better = b.fcmp_ordered(">", v, kb.get(best))
                        kb.set(best, b.select(better, v, kb.get(best)))
                        kb.set(where, b.select(better, at, kb.get(where)))
                    at = kb.get(where)
                    kb.store(b.fadd(kb.load(dst, at), gv), dst, at)


@lowering("adaptive_avgpool2d_grad")
def adaptive_avgpool2d_grad(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    (dy,) = node.args
    n, c, ho, wo = g.type(dy).shape
    _, _, h, w = node.type.shape
    area = max(r1 - r0 for r0, r1 in adaptive_bounds(h, ho)) * max(c1 - c0 for c0, c1 in adaptive_bounds(w, wo))

    def emit(kb: KernelBuilder, lo, hi):
        _accumulate_grad(kb, kb.mul(lo, c), kb.mul(hi, c), dy, None, nid, (h, w, ho, wo),
                         lambda i: _adaptive_bounds(kb, i, h, ho), lambda j: _adaptive_bounds(kb, j, w, wo),
                         lambda r0, r1, c0, c1: _area(kb, r0, r1, c0, c1))

    return Kernel([dy, nid], n, n * c * (h * w + ho * wo * area) / 4, emit, names=[node.op])
