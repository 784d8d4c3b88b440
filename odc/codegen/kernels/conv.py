"""Convolutions: forward, and the gradients with respect to the input and the weight, with any
per-axis stride, asymmetric padding (top, bottom, left, right), dilation and groups (the
attributes are read through `odc.ir.ops.conv.Geometry`).

The forward pass is a direct convolution ("implicit GEMM"): for each output row, a register
tile of MR output channels × NV vectors of output columns accumulates, over (input channel,
kh, kw), a broadcast weight times a vector of input pixels — read straight from the image,
so there is no im2col matrix. Padding comes from a zero-bordered copy of the image in this
thread's scratch memory (skipped when the padding is 0). A column stride above 1 reads the
input pixels of a vector with a gather; a dilation only changes the steps of the kh and kw
loops. With groups, the same kernel runs once per group (a loop) on that group's input
channels, weight rows and output channels, and the padded copy is made a group at a time (so
it stays in the L1 cache; its border is zeroed once per call). Where each output channel
reads one input channel (depthwise, with or without a channel multiplier) `plane_conv` takes
over: a tile of output rows of one channel that loads each input vector once for all the
kernel rows that read it, with the kh*kw weights broadcast once per channel, and a column
stride read as contiguous vectors and one shuffle instead of a gather.

The gradient with respect to the input is the same kernel run on the output gradient, which
is first spread into a zero-filled scratch image (dilated by the stride and bordered by
dilation*(kernel-1) - pad at the top and left), with the weight read flipped and with its two
channel axes exchanged, group by group — an address pattern, not a copy (`plane_conv` for a
depthwise convolution without multiplier).

The gradient with respect to the weight is a sum over images and output pixels of
``dy[n, o, i, j] * x[n, c, i*sh + a*dh - top, j*sw + b*dw - left]``: for a block of MR
output channels (inside one group) and all kw of one (c, a), a register tile of MR×KW vector
accumulators runs along the output columns j (contiguous in dy and, for stride 1, in x) and
is summed horizontally at the end. Columns that fall into the padding are masked off
(constant masks), rows are skipped by the loop bounds, so no padded copy is needed. Work
items (channel block, c, a) are independent, so they are split across threads; the batch is
walked in chunks that stay in the core's cache while every item of the thread reads them.
"""
from __future__ import annotations

from llvmlite import ir

from odc.codegen.builder import ACCUMULATORS, I32, REGISTERS, VW, KernelBuilder, vec
from odc.codegen.kernels.gemm import col_tiles, contiguous_b, outer_product, store_tile
from odc.codegen.kernel import Kernel, lowering
from odc.ir.graph import Graph
from odc.ir.ops.conv import Geometry

CHUNK_BYTES = 256 * 1024  # the weight gradient walks the batch in chunks of about this much data


def strided_b(kb: KernelBuilder, ptr, stride: int, lanes_last: int, nv: int):
    """A `b_load` reading every `stride`-th element (lanes past `lanes_last` of the last
    vector are zero and not read)."""
    def load(v, off):
        lanes = lanes_last if v == nv - 1 else VW
        acc = ir.Constant(vec(VW), None)
        for lane in range(lanes):
            x = kb.load(ptr, kb.add(off, (v * VW + lane) * stride))
            acc = kb.b.insert_element(acc, x, ir.Constant(I32, lane))
        return acc
    return load


def copy_spread(kb: KernelBuilder, src, channels, h, w, dst, hb, wb, top, left, step=(1, 1),
                zero: bool = True) -> None:
    """dst[c, top + i*step[0], left + j*step[1]] = src[c, i, j] in a zeroed [channels, hb, wb]
    buffer (zeroed here unless `zero` is false); positions outside the buffer are dropped."""
    if zero:
        zero_fill(kb, dst, channels * hb * wb)
    rows = [i for i in range(h) if 0 <= top + i * step[0] < hb]
    cols = [j for j in range(w) if 0 <= left + j * step[1] < wb]
    if not rows or not cols:
        return
    i0, i1, j0, j1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    with kb.loop(0, channels) as c:
        with kb.loop(i0, i1) as i:
            s_row = kb.add(kb.mul(c, h * w), kb.mul(i, w))
            d_row = kb.add(kb.mul(c, hb * wb), kb.mul(kb.add(top, kb.mul(i, step[0])), wb))
            with kb.loop(j0, j1) as j:
                kb.store(kb.load(src, kb.add(s_row, j)), dst, kb.add(kb.add(d_row, left), kb.mul(j, step[1])))


def zero_fill(kb: KernelBuilder, dst, count: int) -> None:
    with kb.loop(0, count) as t:
        kb.store(kb.const(0.0), dst, t)


def conv_tile(m: int, ho: int, wo: int) -> tuple[int, int, int]:
    """(output channels, output rows, vectors per row) of a register tile: as many
    accumulators as fit (`ACCUMULATORS`) after discounting the waste of partial tiles, then
    the fewest loads per FMA."""
    nv = 1 if wo <= VW else 2
    best = None
    for mr in range(1, min(m, ACCUMULATORS) + 1):
        for rows in range(1, min(ho, ACCUMULATORS // (mr * nv)) + 1):
            useful = m * ho / (-(-m // mr) * mr * -(-ho // rows) * rows)
            score = (mr * rows * nv * useful, -(mr + rows * nv) / (mr * rows * nv))
            if best is None or score > best[0]:
                best = (score, (mr, rows, nv))
    return best[1]


def conv_image(kb: KernelBuilder, src, cin, hs, ws, stride, weight_row, w_steps, m, kh, kw,
               dst, ho, wo, bias=None, dilation=(1, 1)) -> None:
    """dst[o, i, j] = Σ_{c, a, b} weight(o; c, a, b) * src[c, i*sh + a*dh, j*sw + b*dw]
    (+ bias[o]) for one image, `stride` = (sh, sw), `dilation` = (dh, dw); `weight_row(o)`
    points at weight(o; 0, 0, 0) and `w_steps` are the weight's element steps along c, a, b.
    A register tile covers `mr` channels × `rows` output rows × `nv` vectors of columns."""
    (sh, sw), (dh, dw) = stride, dilation
    mr, rows, nv_max = conv_tile(m, ho, wo)
    loops = [(cin, w_steps[0], hs * ws), (kh, w_steps[1], dh * ws), (kw, w_steps[2], dw)]

    def block(o0, nm, i0, nrows, c0, nv, lanes):
        a_ptrs = [weight_row(kb.add(o0, r)) for r in range(nm)]
        bases = [kb.gep(src, kb.add(kb.mul(kb.mul(kb.add(i0, rr), sh), ws), kb.mul(c0, sw)))
                 for rr in range(nrows)]
        loads = [contiguous_b(kb, base, lanes, nv) if sw == 1 else strided_b(kb, base, sw, lanes, nv)
                 for base in bases]
        accs = outer_product(kb, a_ptrs, loops, lambda v, off: loads[v // nv](v % nv, off), nrows * nv)
        out, tiles, biases = [], [], []
        for r in range(nm):
            bias_r = kb.load(bias, kb.add(o0, r)) if bias is not None else None
            for rr in range(nrows):
                out.append(kb.gep(dst, kb.add(kb.add(kb.mul(kb.add(o0, r), ho * wo),
                                                     kb.mul(kb.add(i0, rr), wo)), c0)))
                tiles.append(accs[r][rr * nv:(rr + 1) * nv])
                biases.append(bias_r)
        store_tile(kb, tiles, out, lanes, biases if bias is not None else None)

    def row_block(i0, nrows):
        def cols(c0, nv, lanes):
            if m // mr:
                with kb.loop(0, m // mr * mr, mr, name="ob") as o0:
                    block(o0, mr, i0, nrows, c0, nv, lanes)
            if m % mr:
                block(m // mr * mr, m % mr, i0, nrows, c0, nv, lanes)
        col_tiles(kb, wo, nv_max, cols)

    if ho // rows:
        with kb.loop(0, ho // rows * rows, rows, name="oh") as i0:
            row_block(i0, rows)
    if ho % rows:
        row_block(ho // rows * rows, ho % rows)


def strided_vector(kb: KernelBuilder, base, off, stride: int, lanes: int):
    """Elements base[off + l*stride] for l < lanes (the other lanes unspecified): contiguous
    vector loads, masked past the last element needed, then one shuffle that picks the lanes."""
    if stride == 1:
        return kb.vload(base, off, mask=kb.tail_mask(lanes))
    span = (lanes - 1) * stride + 1
    parts = [kb.vload(base, kb.add(off, k * VW), mask=kb.tail_mask(min(VW, span - k * VW)))
             for k in range(-(-span // VW))]
    while len(parts) > 1:  # concatenate pairwise (an odd one out with zeros)
        width = parts[0].type.count
        if len(parts) % 2:
            parts.append(ir.Constant(vec(width), None))
        parts = [kb.b.shuffle_vector(parts[k], parts[k + 1], ir.Constant(vec(2 * width, I32), list(range(2 * width))))
                 for k in range(0, len(parts), 2)]
    pick = [l * stride if l < lanes else 0 for l in range(VW)]
    return kb.b.shuffle_vector(parts[0], ir.Constant(parts[0].type, None), ir.Constant(vec(VW, I32), pick))


def plane_conv(kb: KernelBuilder, src, ws, stride, dilation, weight, w_steps, kh, kw, dst, ho, wo,
               bias=None) -> None:
    """One channel plane: dst[i, j] = Σ_{a, b} weight[a*w_steps[0] + b*w_steps[1]] *
    src[i*sh + a*dh, j*sw + b*dw] (+ bias[0]), src `ws` wide: a depthwise convolution. The
    kh*kw weights are broadcast once; a register tile of `rows` output rows × `nv` vectors
    loads each input row vector it needs once and uses it for every (output row, kernel row)
    that reads it — (rows*sh + (kh-1)*dh) * kw loads per rows * kh * kw FMAs, where the
    general kernel has one load per FMA. The sums run in the same order as `conv_image`'s."""
    (sh, sw), (dh, dw) = stride, dilation
    taps = [[kb.splat(kb.load(weight, a * w_steps[0] + b * w_steps[1])) for b in range(kw)] for a in range(kh)]
    bias_s = kb.load(bias, 0) if bias is not None else None
    nv_max = 1 if wo <= VW else 2
    most = max(1, (REGISTERS - min(kh * kw, REGISTERS // 3) - 2) // nv_max)  # accumulators beside the weights
    rows = -(-ho // -(-ho // most))  # the fewest blocks, evened out
    zero = ir.Constant(vec(VW), None)

    def block(i0, nrows, c0, nv, lanes):
        readers = {}  # input row (from the tile's first) -> the (output row, kernel row) pairs reading it
        for rr in range(nrows):
            for a in range(kh):
                readers.setdefault(rr * sh + a * dh, []).append((rr, a))
        accs = [[zero] * nv for _ in range(nrows)]
        first = kb.gep(src, kb.add(kb.mul(kb.mul(i0, sh), ws), kb.mul(c0, sw)))
        for row in sorted(readers):
            for b in range(kw):
                for v in range(nv):
                    x = strided_vector(kb, first, row * ws + b * dw + v * VW * sw, sw, lanes if v == nv - 1 else VW)
                    for rr, a in readers[row]:
                        accs[rr][v] = kb.fma(taps[a][b], x, accs[rr][v])
        out = [kb.gep(dst, kb.add(kb.mul(kb.add(i0, rr), wo), c0)) for rr in range(nrows)]
        store_tile(kb, accs, out, lanes, [bias_s] * nrows if bias is not None else None)

    def row_block(i0, nrows):
        col_tiles(kb, wo, nv_max, lambda c0, nv, lanes: block(i0, nrows, c0, nv, lanes))

    if ho // rows:
        with kb.loop(0, ho // rows * rows, rows, name="oh") as i0:
            row_block(i0, rows)
    if ho % rows:
        row_block(ho // rows * rows, ho % rows)


@lowering("conv2d")
def conv2d(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    x, w = node.args[:2]
    bias = node.args[2] if len(node.args) == 3 else None
    n, c, h, wd = g.type(x).shape
    o, cg, kh, kw = g.type(w).shape
    _, _, ho, wo = node.type.shape
    geo = Geometry.of(node.attrs)
    groups, og = geo.groups, o // geo.groups
    depthwise = groups > 1 and cg == 1
    top, bottom, left, right = geo.pad
    padded = any(geo.pad)
    hp, wp = h + top + bottom, wd + left + right
    # the padded copy: of the whole image, or with groups of one group's channels at a time
    # (which stay in the L1 cache; the border is zeroed once, every copy fills the same inside)
    scratch = (c if groups == 1 else cg) * hp * wp * 4 if padded else 0

    def emit(kb: KernelBuilder, lo, hi):
        if padded and groups > 1:
            zero_fill(kb, kb.scratch, cg * hp * wp)
        with kb.loop(lo, hi, name="n") as img:
            src = kb.gep(kb.ptr(x), kb.mul(img, c * h * wd))
            if padded and groups == 1:
                copy_spread(kb, src, c, h, wd, kb.scratch, hp, wp, top, left)
                src = kb.scratch
            out = kb.gep(kb.ptr(nid), kb.mul(img, o * ho * wo))

            def group(gr):  # input channels [gr*cg, +cg) -> output channels [gr*og, +og)
                image = kb.gep(src, kb.mul(gr, cg * h * wd))  # src is x when groups > 1
                if padded and groups > 1:
                    copy_spread(kb, image, cg, h, wd, kb.scratch, hp, wp, top, left, zero=False)
                    image = kb.scratch
                if depthwise:  # each output channel reads one input channel
                    def channel(oc):
                        plane_conv(kb, image, wp, geo.stride, geo.dilation, kb.gep(kb.ptr(w), kb.mul(oc, kh * kw)),
                                   (kw, 1), kh, kw, kb.gep(out, kb.mul(oc, ho * wo)), ho, wo,
                                   kb.gep(kb.ptr(bias), oc) if bias is not None else None)
                    for_groups(kb, og, lambda k: channel(kb.add(kb.mul(gr, og), k)))
                    return
                conv_image(kb, image, cg, hp, wp, geo.stride,
                           lambda oo: kb.gep(kb.ptr(w), kb.mul(kb.add(kb.mul(gr, og), oo), cg * kh * kw)),
                           (kh * kw, kw, 1), og, kh, kw, kb.gep(out, kb.mul(gr, og * ho * wo)), ho, wo,
                           kb.gep(kb.ptr(bias), kb.mul(gr, og)) if bias is not None else None, geo.dilation)
            for_groups(kb, groups, group)

    values = [x, w, nid] + ([bias] if bias is not None else [])
    return Kernel(values, n, n * o * ho * wo * cg * kh * kw / 24, emit, scratch, names=["conv2d"])


def for_groups(kb: KernelBuilder, groups: int, body) -> None:
    """body(group index) for every group: inline for one group, else in a loop."""
    if groups == 1:
        body(0)
    else:
        with kb.loop(0, groups, name="g") as gr:
            body(gr)


@lowering("conv2d_grad_input")
def conv2d_grad_input(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    dy, w = node.args
    n, o, ho, wo = g.type(dy).shape
    _, cg, kh, kw = g.type(w).shape
    h, wd = node.attrs["size"]
    geo = Geometry.of(node.attrs)
    groups, og, c = geo.groups, o // geo.groups, cg * geo.groups
    (dh, dw), (top, _, left, _) = geo.dilation, geo.pad
    # dx[c, y, x] = Σ dy spread by the stride at (y + a'*dh, x + b'*dw) times the weight
    # flipped (a' = kh-1-a): the spread image starts dilation*(kernel-1) - pad before dx's
    hb, wb = h + dh * (kh - 1), wd + dw * (kw - 1)
    spread = dict(top=dh * (kh - 1) - top, left=dw * (kw - 1) - left, step=geo.stride)
    flipped = (kh - 1) * kw + kw - 1  # weight(c; o, a, b) = w[o, c, kh-1-a, kw-1-b]

    def emit(kb: KernelBuilder, lo, hi):
        if groups > 1:  # one group's channels at a time, as the forward pass
            zero_fill(kb, kb.scratch, og * hb * wb)
        with kb.loop(lo, hi, name="n") as img:
            dy_img = kb.gep(kb.ptr(dy), kb.mul(img, o * ho * wo))
            if groups == 1:
                copy_spread(kb, dy_img, o, ho, wo, kb.scratch, hb, wb, **spread)
            dst = kb.gep(kb.ptr(nid), kb.mul(img, c * h * wd))

            def group(gr):  # output channels [gr*og, +og) -> input channels [gr*cg, +cg)
                if groups > 1:
                    copy_spread(kb, kb.gep(dy_img, kb.mul(gr, og * ho * wo)), og, ho, wo, kb.scratch, hb, wb,
                                **spread, zero=False)
                w0 = kb.gep(kb.ptr(w), kb.add(kb.mul(gr, og * cg * kh * kw), flipped))
                if groups > 1 and og == 1 and cg == 1:  # depthwise: one channel plane
                    plane_conv(kb, kb.scratch, wb, (1, 1), geo.dilation, w0, (-kw, -1), kh, kw,
                               kb.gep(dst, kb.mul(gr, h * wd)), h, wd)
                    return
                conv_image(kb, kb.scratch, og, hb, wb, (1, 1), lambda cc: kb.gep(w0, kb.mul(cc, kh * kw)),
                           (cg * kh * kw, -kw, -1), cg, kh, kw,
                           kb.gep(dst, kb.mul(gr, cg * h * wd)), h, wd, dilation=geo.dilation)
            for_groups(kb, groups, group)

    return Kernel([dy, w, nid], n, n * o * h * wd * cg * kh * kw / 24, emit,
                  (o if groups == 1 else og) * hb * wb * 4,
                  names=["conv2d_grad_input"])


@lowering("conv2d_grad_weight")
def conv2d_grad_weight(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    dy, x = node.args
    n, o, ho, wo = g.type(dy).shape
    _, c, h, wd = g.type(x).shape
    kh, kw = node.attrs["kernel"]
    geo = Geometry.of(node.attrs)
    og, cg = o // geo.groups, c // geo.groups
    (sh, _), (dh, _), top = geo.stride, geo.dilation, geo.pad[0]
    mr = max(1, min(og, (REGISTERS - 2 - kw) // (kw + 1)))  # mr*kw accumulators, mr + 1 operands
    per_group = -(-og // mr)  # channel blocks per group (a block stays inside its group)
    blocks = geo.groups * per_group
    segments = [(j0, min(VW, wo - j0)) for j0 in range(0, wo, VW)]
    chunk = max(1, min(n, CHUNK_BYTES // (4 * (o * ho * wo + c * h * wd))))
    dims = (n, o, ho, wo, c, h, wd, cg, kh, kw, geo)

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        with kb.loop(0, n, chunk, name="chunk") as n0, kb.loop(lo, hi, name="item") as t:
            ob = b.sdiv(t, kb.i64(cg * kh))
            ci = b.srem(b.sdiv(t, kb.i64(kh)), kb.i64(cg))  # weight channel (within the group)
            a = b.srem(t, kb.i64(kh))
            if geo.groups == 1:
                gr, obg = 0, ob
            else:
                gr, obg = b.sdiv(ob, kb.i64(per_group)), b.srem(ob, kb.i64(per_group))
            o0 = kb.add(kb.mul(gr, og), kb.mul(obg, mr))
            cc = kb.add(kb.mul(gr, cg), ci)  # input channel
            # rows of dy with an input row inside the image: 0 <= i*sh + a*dh - top < h
            ad = kb.mul(a, dh)
            i_lo = b.sdiv(kb.smax(kb.add(b.sub(kb.i64(top), ad), sh - 1), 0), kb.i64(sh))
            i_hi = kb.smin(b.sdiv(kb.add(b.sub(kb.i64(h - 1 + top), ad), sh), kb.i64(sh)), ho)
            images = (n0, kb.smin(kb.add(n0, chunk), n))
            where = (o0, ci, cc, a, i_lo, i_hi, images)
            if og % mr == 0:
                _grad_weight_tile(kb, dy, x, nid, mr, where, dims, segments)
            else:
                with b.if_else(b.icmp_signed("<", obg, kb.i64(per_group - 1))) as (full, last):
                    with full:
                        _grad_weight_tile(kb, dy, x, nid, mr, where, dims, segments)
                    with last:
                        _grad_weight_tile(kb, dy, x, nid, og % mr, where, dims, segments)

    return Kernel([dy, x, nid], blocks * cg * kh, n * o * ho * wo * cg * kh * kw / 20, emit,
                  names=["conv2d_grad_weight"])


def _grad_weight_tile(kb, dy, x, dw, rows, where, dims, segments) -> None:
    """Adds this tile's sums over the images [images[0], images[1]) to dw (stores them for the
    first chunk): output channels [o0, o0 + rows), weight channel ci (input channel cc), kernel
    row a, dy rows [i_lo, i_hi)."""
    o0, ci, cc, a, i_lo, i_hi, images = where
    n, o, ho, wo, c, h, wd, cg, kh, kw, geo = dims
    (sh, sw), (dh, dil_w), top, left = geo.stride, geo.dilation, geo.pad[0], geo.pad[2]
    zero = ir.Constant(vec(VW), None)
    accs = [[kb.var(vec(VW), zero, "acc") for _ in range(kw)] for _ in range(rows)]
    with kb.loop(images[0], images[1], name="img") as img:
        with kb.loop(i_lo, i_hi, name="i") as i:
            dy_rows = [kb.gep(kb.ptr(dy), kb.add(kb.mul(kb.add(kb.mul(img, o), kb.add(o0, r)), ho * wo),
                                                 kb.mul(i, wo))) for r in range(rows)]
            x_row = kb.gep(kb.ptr(x), kb.add(kb.mul(kb.add(kb.mul(img, c), cc), h * wd),
                                             kb.mul(kb.add(kb.add(kb.mul(i, sh), -top), kb.mul(a, dh)), wd)))
            for j0, lanes in segments:
                dmask = kb.tail_mask(lanes)
                dv = [kb.vload(ptr, j0, mask=dmask) for ptr in dy_rows]
                for q in range(kw):
                    valid = [l < lanes and 0 <= (j0 + l) * sw + q * dil_w - left < wd for l in range(VW)]
                    if not any(valid):
                        continue
                    if sw == 1:
                        xv = kb.vload(x_row, j0 + q * dil_w - left, mask=None if all(valid) else kb.lane_mask(valid))
                    else:
                        xv = zero
                        for l in range(VW):
                            if valid[l]:
                                xv = kb.b.insert_element(xv, kb.load(x_row, (j0 + l) * sw + q * dil_w - left),
                                                         ir.Constant(I32, l))
                    for r in range(rows):
                        kb.set(accs[r][q], kb.fma(dv[r], xv, kb.get(accs[r][q])))
    first = kb.b.icmp_signed("==", images[0], kb.i64(0))
    for r in range(rows):
        base = kb.add(kb.mul(kb.add(kb.mul(kb.add(o0, r), cg), ci), kh * kw), kb.mul(a, kw))
        for q in range(kw):
            at = kb.add(base, q)
            total = kb.hsum(kb.get(accs[r][q]))
            before = kb.b.select(first, kb.const(0.0), kb.load(kb.ptr(dw), at))
            kb.store(kb.b.fadd(before, total), kb.ptr(dw), at)
