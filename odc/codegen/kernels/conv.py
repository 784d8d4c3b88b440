"""Convolutions: forward, and the gradients with respect to the input and the weight, with any
per-axis stride, asymmetric padding (top, bottom, left, right), dilation and groups (the
attributes are read through `odc.ir.ops.conv.Geometry`). Dense 3x3 layers of stride 1 with
enough channels run their forward pass and input gradient as Winograd F(2x2, 3x3) instead
(`odc.codegen.kernels.winograd`, 2.25 times fewer multiply-adds); the rest is below.

The forward pass is a direct convolution ("implicit GEMM") over the output pixels of an image
taken as one flat axis p = i*wo + j. The image is first copied into kw *shifted planes*, one
per kernel column b, each as wide as the output: plane_b[c, y, j] = x[c, y - top, j*sw + b*dw -
left], zero where that falls into the padding (the zeros are written once per call: every image
fills the same positions). In them every tap (c, a, b) reads the pixels p of a tile at one
constant offset, so a register tile of MR output channels × NV vectors of consecutive pixels
(crossing output rows where the image is narrower than a vector: an 8x8 image fills whole
16-float vectors) accumulates broadcast weights times contiguous vector loads, whatever the
padding or the column stride (strided columns are gathered once, while copying, by contiguous
loads and a shuffle). For a row stride sh > 1 each plane keeps its rows grouped by y % sh, so
that kernel row a reads consecutive rows again (at phase a*dh % sh). The copy is kw times the
image, read by MR output channels per load, so it costs a few percent of the multiply-adds.
Images of fewer than 64 output pixels (the 4x4 and 2x2 layers of a VGG) go in chunks, side by
side in every row of the planes, so that a vector spans images too; their outputs are computed
into the scratch and copied out image by image. The tiles walk the pixels outermost, each
reading the weight anew, unless the weight is the larger operand (deep layers on few pixels):
then channel blocks go outermost.
With groups, the same kernel runs once per group (a loop) on that group's input channels,
weight rows and output channels. Where each output channel reads one input channel
(depthwise, with or without a channel multiplier) `plane_conv` takes over, on a zero-bordered
copy of one channel: a tile of output rows of one channel that loads each input vector once
for all the kernel rows that read it, with the kh*kw weights broadcast once per channel, and a
column stride read as contiguous vectors and one shuffle instead of a gather.

The gradient with respect to the input is the same kernel run on the output gradient spread
by the stride (the shifted planes are filled from it directly: dy[o, i, j] lands at row
top' + i*sh, column left' + j*sw, with top' = dilation*(kernel-1) - pad), with the weight read
flipped and with its two channel axes exchanged, group by group — an address pattern, not a
copy (`plane_conv` on a spread, bordered copy for a depthwise convolution without multiplier).
With a row stride sh > 1 the rows are not spread: the output rows of each phase y % sh read
only the kernel rows whose spread row is one of dy's, so they are computed phase by phase
(into the scratch, then copied to their rows) over planes of dy's own rows, spread along the
columns only; half the multiply-adds of a stride of 2 then meet a zero, not three quarters.
At a row stride of 1, where the zero border holds a tenth of the multiply-adds or more (a
large kernel on a small image: LeNet-5's second layer), the output rows go in bands that
read only the kernel rows reaching dy's rows (`conv_bands`; the forward pass alike).

The gradient with respect to the weight of a layer with at least a vector's worth of input
channels per group runs channels last (`_grad_weight_channels_last`): a chunk of images is
copied with the channels innermost (VW x VW blocks transposed in registers) inside a zero
border, and a register tile of MR output channels × NB kernel columns × NV vectors of input
channels accumulates, pixel by pixel, one broadcast dy value per output channel times one
contiguous vector load per column and channel vector, over all pixels of the chunk: no
horizontal sums, and about 0.4 loads per multiply-add, mostly from the L1 cache. With fewer
channels (the first layer of an RGB image, depthwise) it is a sum over images and output
pixels p of ``dy[n, o, p] * plane_b[n, c, a*dh % sh, p + (a*dh // sh)*wo]``, over the same shifted planes
as the forward pass, in which both operands are contiguous along p: for a block of MR output
channels (inside one group) and all kw of one (c, a), a register tile of MR×KW vector
accumulators runs along the pixels (whole vectors, also for an 8x8 image or a stride of 2) and
is summed horizontally at the end of a chunk of images. The images of a chunk lie side by
side in every row of the planes and of a copy of dy, so that the pixels of the whole chunk
are one flat axis: a 2x2 or 4x4 image alone would fill a quarter of a vector, or one vector
per horizontal sum. A chunk (a divisor of the batch) holds at most 1024 output pixels (a
tile's rows stay in the L1 cache) and 1 MiB of dy (in the L2 cache). Work items
(c, channel block, a) are independent, so they are split across threads, c outermost: each
thread copies the planes of its own input channels only.
"""
from __future__ import annotations

from llvmlite import ir

from odc.codegen.builder import REGISTERS, VW, KernelBuilder, vec
from odc.codegen.kernels import winograd
from odc.codegen.kernels.copies import shifted_copy, strided_vector, transpose_copy, zero_fill
from odc.codegen.kernels.gemm import (channels_last_tile, col_tiles, contiguous_b, conv_tile, outer_product,
                                      row_tiles, store_tile)
from odc.codegen.kernel import Kernel, lowering
from odc.ir.graph import Graph
from odc.ir.ops.conv import Geometry

CHUNK_OUTPUTS = 64  # the direct convolution puts images of fewer output pixels side by side
CHANNELS_LAST_MIN = VW  # input channels per group from which the weight gradient runs channels last
CHUNK_PIXELS, CHUNK_BYTES = 1024, 1024 * 1024  # the weight gradient's chunks of images: at most this many
# output pixels (a tile's rows stay in the L1 cache) and this many bytes of dy (in the L2 cache)


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


def conv_bands(kb: KernelBuilder, planes, cin, rows, dilation, weight_row, w_steps, m, kh, kw, dst, ho, pitch,
               filled, bias=None) -> None:
    """`conv_flat` at a row stride of 1 where the planes hold data only in rows [filled) and
    zeros around them (padding, or the border of a spread output gradient): the output rows
    go in bands that read the same kernel rows, each band with only the kernel rows that
    reach data, where that skips a tenth of the products or more: LeNet-5's input gradient
    (10x10 spread to 18x18, 5x5) skips 2 of 7, a 3x3 layer with padding 1 on 32x32 only 1 in 48."""
    dh = dilation[0]
    bands = []  # [first row, end row, the kernel rows that reach data]
    for i in range(ho):
        live = tuple(a for a in range(kh) if filled[0] <= i + a * dh < filled[1])
        if bands and bands[-1][2] == live:
            bands[-1][1] = i + 1
        else:
            bands.append([i, i + 1, live])
    if sum((i1 - i0) * len(live) for i0, i1, live in bands) > 0.9 * ho * kh:  # not worth the code
        bands = [[0, ho, tuple(range(kh))]]
    for i0, i1, live in bands:  # the live kernel rows are a run [a0, a0 + len(live))
        a0 = live[0] if live else 0
        conv_flat(kb, kb.gep(planes, (i0 + a0 * dh) * pitch), cin, rows, (1, 1), dilation,
                  lambda o, a0=a0: kb.gep(weight_row(o), a0 * w_steps[1]), w_steps, m, len(live), kw,
                  kb.gep(dst, i0 * pitch), i1 - i0, pitch, bias, out_stride=ho * pitch)


def conv_flat(kb: KernelBuilder, planes, cin, rows, stride, dilation, weight_row, w_steps, m, kh, kw,
              dst, ho, pitch, bias=None, rows_of=None, out_stride=None) -> None:
    """dst[o, p] = Σ_{c, a, b} weight(o; c, a, b) * planes[b, c, a*dh % sh, i + a*dh // sh, j]
    (+ bias[o]) for the pixels p = i*pitch + j of the images of a chunk, over `shifted_copy`'s
    planes, whose rows are `pitch` long; `weight_row(o)` points at weight(o; 0, 0, 0) and
    `w_steps` are the weight's element steps along c, a, b. A register tile covers `mr`
    channels × `nv` vectors of consecutive pixels, which may span several output rows (and
    images): each (c, a, b) reads the planes at a constant offset. `rows_of` = [(a, plane row)]
    replaces the kernel rows and the plane rows they read (rows for i = 0); `out_stride` is
    dst's step from one channel to the next (default ho * pitch)."""
    (sh, _), (dh, _) = stride, dilation
    n, plane, hq = ho * pitch, rows * pitch, rows // sh
    mr, nv_max = conv_tile(m, n)
    if rows_of is not None:
        taps = [[(a * w_steps[1] + b * w_steps[2], row * pitch + b * cin * plane) for a, row in rows_of
                 for b in range(kw)]]
    elif sh == 1:
        taps = [(kh, w_steps[1], dh * pitch), (kw, w_steps[2], cin * plane)]
    else:  # kernel row a reads phase a*dh % sh
        taps = [[(a * w_steps[1] + b * w_steps[2], (a * dh % sh * hq + a * dh // sh) * pitch + b * cin * plane)
                 for a in range(kh) for b in range(kw)]]
    loops = [(cin, w_steps[0], plane)] + taps

    def block(o0, nm, p0, nv, lanes):
        a_ptrs = [weight_row(kb.add(o0, r)) for r in range(nm)]
        accs = outer_product(kb, a_ptrs, loops, contiguous_b(kb, kb.gep(planes, p0), lanes, nv), nv)
        out = [kb.gep(dst, kb.add(kb.mul(kb.add(o0, r), out_stride or n), p0)) for r in range(nm)]
        biases = [kb.load(bias, kb.add(o0, r)) for r in range(nm)] if bias is not None else None
        store_tile(kb, accs, out, lanes, biases)

    # the larger operand is read once, the other once per block of it: a few pixels and a
    # large weight (deep layers) take channel blocks outermost
    if m * cin * kh * kw > kw * cin * plane:
        row_tiles(kb, m, mr, lambda o0, nm: col_tiles(kb, n, nv_max, lambda p0, nv, ln: block(o0, nm, p0, nv, ln)))
    else:
        col_tiles(kb, n, nv_max, lambda p0, nv, ln: row_tiles(kb, m, mr, lambda o0, nm: block(o0, nm, p0, nv, ln)))


def conv_chunks(kb: KernelBuilder, lo, hi, chunk, groups, copy, convolve, out, outputs, channels, ho, wo,
                phases=1):
    """Images [lo, hi) in chunks of `chunk`, side by side in the planes (rows chunk*wo long),
    group by group: copy(image, slot, group) fills the planes of one image at the column
    offset slot*wo, then convolve(dst, group) computes the outputs of the chunk: of one image
    straight into out(image, group), of several into `outputs` (in the scratch), from where
    each image's `channels` x ho x wo are copied to out(image, group). With `phases` > 1,
    convolve(dst, group, r) computes the output rows r, r + phases, ... only (the input gradient
    of a row stride), always into `outputs`, and they are copied to their rows."""
    with kb.loop(lo, hi, chunk, name="n") as n0:
        images = 1 if chunk == 1 else kb.smin(chunk, kb.b.sub(hi, n0))

        def group(gr):
            for_groups(kb, images, lambda k: copy(kb.add(n0, k), k, gr))
            if chunk == 1 and phases == 1:
                convolve(out(n0, gr), gr, 0)
                return
            for r in range(phases):
                rows = len(range(r, ho, phases))
                if not rows:
                    continue
                convolve(outputs, gr, r)

                def copy_out(k):  # out[c, i*phases + r, j] = outputs[c, i*pitch + k*wo + j]
                    dst = out(kb.add(n0, k), gr)
                    with kb.loop(0, channels) as c, kb.loop(0, rows) as i:
                        s = kb.add(kb.mul(kb.add(kb.mul(c, rows), i), chunk * wo), kb.mul(k, wo))
                        d = kb.mul(kb.add(kb.mul(c, ho), kb.add(kb.mul(i, phases), r)), wo)
                        for j in range(0, wo, VW):
                            mask = kb.tail_mask(min(VW, wo - j))
                            kb.vstore(kb.vload(outputs, kb.add(s, j), mask=mask), dst, kb.add(d, j), mask=mask)
                for_groups(kb, images, copy_out)
        for_groups(kb, groups, group)


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
    (sh, _), (dh, dw) = geo.stride, geo.dilation
    top, _, left, _ = geo.pad
    if winograd.applies((kh, kw), geo, c, o):
        return winograd.winograd("conv2d", [x, w, nid], (n, c, h, wd, o, ho, wo, top, left),
                                 lambda kb, image: kb.gep(kb.ptr(x), kb.mul(image, c * h * wd)),
                                 lambda kb, oo, cc: (kb.gep(kb.ptr(w), kb.mul(kb.add(kb.mul(oo, c), cc), 9)), 3, 1),
                                 lambda kb, image: kb.gep(kb.ptr(nid), kb.mul(image, o * ho * wo)), bias)
    values = [x, w, nid] + ([bias] if bias is not None else [])
    if groups > 1 and cg == 1:  # depthwise: each output channel reads one input channel
        emit, scratch = _depthwise(x, w, bias, nid, (n, c, h, wd, o, kh, kw, ho, wo), geo)
        return Kernel(values, n, n * o * ho * wo * kh * kw / 24, emit, scratch, names=["conv2d"])
    # one group's shifted planes at a time (zeroed once: every copy fills the same positions),
    # of a chunk of images side by side when one image has fewer than CHUNK_OUTPUTS pixels
    rows = -(-((ho - 1) * sh + (kh - 1) * dh + 1) // sh) * sh
    chunk = max(1, min(n, CHUNK_OUTPUTS // (ho * wo)))
    size = kw * cg * rows * chunk * wo

    def emit(kb: KernelBuilder, lo, hi):
        zero_fill(kb, kb.scratch, size)

        def copy(image, slot, gr):  # input channels [gr*cg, +cg) of an image
            shifted_copy(kb, kb.gep(kb.ptr(x), kb.add(kb.mul(image, c * h * wd), kb.mul(gr, cg * h * wd))), cg,
                         h, wd, kb.gep(kb.scratch, kb.mul(slot, wo)), rows, wo, kw, top, left, geo.stride, dw,
                         pitch=chunk * wo)

        def convolve(dst, gr, _):  # -> output channels [gr*og, +og)
            def weight_row(oo):
                return kb.gep(kb.ptr(w), kb.mul(kb.add(kb.mul(gr, og), oo), cg * kh * kw))
            bias_g = kb.gep(kb.ptr(bias), kb.mul(gr, og)) if bias is not None else None
            if sh == 1:  # the input's rows are planes rows [top, top + h)
                conv_bands(kb, kb.scratch, cg, rows, geo.dilation, weight_row, (kh * kw, kw, 1), og, kh, kw, dst, ho,
                           chunk * wo, (top, top + h), bias_g)
            else:
                conv_flat(kb, kb.scratch, cg, rows, geo.stride, geo.dilation, weight_row, (kh * kw, kw, 1), og, kh,
                          kw, dst, ho, chunk * wo, bias_g)
        conv_chunks(kb, lo, hi, chunk, groups, copy, convolve,
                    lambda image, gr: kb.gep(kb.ptr(nid), kb.add(kb.mul(image, o * ho * wo), kb.mul(gr, og * ho * wo))),
                    kb.gep(kb.scratch, size), og, ho, wo)

    scratch = size + (og * ho * chunk * wo if chunk > 1 else 0)
    return Kernel(values, n, n * o * ho * wo * cg * kh * kw / 24, emit, scratch * 4, names=["conv2d"])


def _depthwise(x, w, bias, nid, dims, geo):
    """(emit, scratch bytes) of a depthwise conv2d (one input channel per output channel):
    `plane_conv` per channel, on a zero-bordered copy of its input channel (the border zeroed
    once)."""
    n, c, h, wd, o, kh, kw, ho, wo = dims
    groups, og = geo.groups, o // geo.groups
    top, bottom, left, right = geo.pad
    padded = any(geo.pad)
    hp, wp = h + top + bottom, wd + left + right

    def emit(kb: KernelBuilder, lo, hi):
        if padded:
            zero_fill(kb, kb.scratch, hp * wp)
        with kb.loop(lo, hi, name="n") as img:
            out = kb.gep(kb.ptr(nid), kb.mul(img, o * ho * wo))

            def group(gr):
                image = kb.gep(kb.ptr(x), kb.add(kb.mul(img, c * h * wd), kb.mul(gr, h * wd)))
                if padded:
                    copy_spread(kb, image, 1, h, wd, kb.scratch, hp, wp, top, left, zero=False)
                    image = kb.scratch

                def channel(oc):
                    plane_conv(kb, image, wp, geo.stride, geo.dilation, kb.gep(kb.ptr(w), kb.mul(oc, kh * kw)),
                               (kw, 1), kh, kw, kb.gep(out, kb.mul(oc, ho * wo)), ho, wo,
                               kb.gep(kb.ptr(bias), oc) if bias is not None else None)
                for_groups(kb, og, lambda k: channel(kb.add(kb.mul(gr, og), k)))
            for_groups(kb, groups, group)
    return emit, hp * wp * 4 if padded else 0


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
    top, left = dh * (kh - 1) - top, dw * (kw - 1) - left
    flipped = (kh - 1) * kw + kw - 1  # weight(c; o, a, b) = w[o, c, kh-1-a, kw-1-b]
    cost = n * o * h * wd * cg * kh * kw / 24

    def w0(kb, gr):  # weight(c; o, a, b) of group gr at c = o = a = b = 0
        return kb.gep(kb.ptr(w), kb.add(kb.mul(gr, og * cg * kh * kw), flipped))

    def out(kb, image, gr):  # input channels [gr*cg, +cg) of dx
        return kb.gep(kb.ptr(nid), kb.add(kb.mul(image, c * h * wd), kb.mul(gr, cg * h * wd)))

    if winograd.applies((kh, kw), geo, o, c):  # dx = dy convolved with weight(c, o, a, b) = w[o, c, 2-a, 2-b]
        return winograd.winograd("conv2d_grad_input", [dy, w, nid], (n, o, ho, wo, c, h, wd, top, left),
                                 lambda kb, image: kb.gep(kb.ptr(dy), kb.mul(image, o * ho * wo)),
                                 lambda kb, cc, oo: (kb.gep(kb.ptr(w), kb.add(kb.mul(kb.add(kb.mul(oo, c), cc), 9), 8)), -3, -1),
                                 lambda kb, image: out(kb, image, 0))
    if groups > 1 and og == 1 and cg == 1:  # depthwise: one channel plane, on a zero-bordered copy
        def emit(kb: KernelBuilder, lo, hi):
            zero_fill(kb, kb.scratch, hb * wb)  # every image fills the same positions
            with kb.loop(lo, hi, name="n") as img:
                def group(gr):
                    copy_spread(kb, kb.gep(kb.ptr(dy), kb.add(kb.mul(img, o * ho * wo), kb.mul(gr, ho * wo))), 1,
                                ho, wo, kb.scratch, hb, wb, top, left, geo.stride, zero=False)
                    plane_conv(kb, kb.scratch, wb, (1, 1), geo.dilation, w0(kb, gr), (-kw, -1), kh, kw,
                               out(kb, img, gr), h, wd)
                for_groups(kb, groups, group)
        return Kernel([dy, w, nid], n, cost, emit, hb * wb * 4, names=["conv2d_grad_input"])
    chunk = max(1, min(n, CHUNK_OUTPUTS // (h * wd)))
    # a row stride sh: the output rows y = Y*sh + r of each phase r read only the kernel rows a
    # with (r + a*dh - top) % sh == 0, at dy row Y + d, d = (r + a*dh - top) // sh; the planes
    # hold dy's rows (from row -r0 on), spread along the columns only
    sh = geo.stride[0]
    reads = {r: [(a, (r + a * dh - top) // sh) for a in range(kh) if (r + a * dh - top) % sh == 0]
             for r in range(sh)}
    if sh == 1:
        r0, hq = top, hb
    else:
        r0 = max([0] + [-d for taps in reads.values() for _, d in taps])
        hq = max([1] + [len(range(r, h, sh)) + d + r0 for r, taps in reads.items() for _, d in taps])
    size = kw * og * hq * chunk * wd  # one group's planes at a time

    def emit(kb: KernelBuilder, lo, hi):
        zero_fill(kb, kb.scratch, size)  # every image fills the same positions

        def copy(image, slot, gr):  # output channels [gr*og, +og) of dy
            shifted_copy(kb, kb.gep(kb.ptr(dy), kb.add(kb.mul(image, o * ho * wo), kb.mul(gr, og * ho * wo))), og,
                         ho, wo, kb.gep(kb.scratch, kb.mul(slot, wd)), hq, wd, kw, r0, left, dilation_w=dw,
                         spread=(1, geo.stride[1]), pitch=chunk * wd)

        def convolve(dst, gr, r):
            def weight_row(cc):
                return kb.gep(w0(kb, gr), kb.mul(cc, kh * kw))
            if sh == 1:  # dy's rows are plane rows [r0, r0 + ho)
                conv_bands(kb, kb.scratch, og, hq, geo.dilation, weight_row, (cg * kh * kw, -kw, -1), cg, kh, kw, dst,
                           h, chunk * wd, (r0, r0 + ho))
            else:
                conv_flat(kb, kb.scratch, og, hq, (1, 1), geo.dilation, weight_row, (cg * kh * kw, -kw, -1), cg, kh,
                          kw, dst, len(range(r, h, sh)), chunk * wd, rows_of=[(a, d + r0) for a, d in reads[r]])
        conv_chunks(kb, lo, hi, chunk, groups, copy, convolve, lambda image, gr: out(kb, image, gr),
                    kb.gep(kb.scratch, size), cg, h, wd, phases=sh)

    scratch = size + (cg * -(-h // sh) * chunk * wd if chunk > 1 or sh > 1 else 0)
    return Kernel([dy, w, nid], n, cost, emit, scratch * 4, names=["conv2d_grad_input"])


@lowering("conv2d_grad_weight")
def conv2d_grad_weight(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    dy, x = node.args
    n, o, ho, wo = g.type(dy).shape
    _, c, h, wd = g.type(x).shape
    kh, kw = node.attrs["kernel"]
    geo = Geometry.of(node.attrs)
    og, cg = o // geo.groups, c // geo.groups
    if winograd.applies((kh, kw), geo, c, o, weight_gradient=True):
        return winograd.winograd_grad_weight([dy, x, nid], (n, o, ho, wo, c, h, wd, geo.pad[0], geo.pad[2]))
    if cg >= CHANNELS_LAST_MIN:
        return _grad_weight_channels_last(dy, x, nid, (n, o, ho, wo, c, h, wd, kh, kw), geo)
    (sh, _), (dh, dw), (top, _, left, _) = geo.stride, geo.dilation, geo.pad
    mr = max(1, min(og, (REGISTERS - 1) // (kw + 1)))  # mr*kw accumulators, mr dy vectors and one x vector
    per_group = -(-og // mr)  # channel blocks per group (a block stays inside its group)
    rows = -(-((ho - 1) * sh + (kh - 1) * dh + 1) // sh) * sh
    # a chunk of images (a divisor of n) side by side in every row of the planes and of dy
    chunk = max(k for k in range(1, n + 1) if n % k == 0 and (k == 1 or (
        k * ho * wo <= CHUNK_PIXELS and 4 * k * o * ho * wo <= CHUNK_BYTES)))
    pitch = chunk * wo
    planes = kw * c * rows * pitch  # floats of the chunk's planes; its dy follows (chunk > 1)
    dims = (o, ho * pitch, c, rows * pitch, pitch, rows // sh, planes, cg, kh, kw, sh, dh, chunk)

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        zero_fill(kb, kb.scratch, planes)  # every chunk fills the same positions
        some = (b.sdiv(lo, kb.i64(per_group * kh)), kb.add(b.sdiv(kb.add(hi, -1), kb.i64(per_group * kh)), 1))
        with kb.loop(0, n, chunk, name="chunk") as n0:
            with kb.loop(0, chunk, name="img") as k:  # the planes of this thread's channels
                image = kb.add(n0, k)
                shifted_copy(kb, kb.gep(kb.ptr(x), kb.mul(image, c * h * wd)), c, h, wd,
                             kb.gep(kb.scratch, kb.mul(k, wo)), rows, wo, kw, top, left, geo.stride, dw,
                             some=some, pitch=pitch)
                if chunk > 1:
                    shifted_copy(kb, kb.gep(kb.ptr(dy), kb.mul(image, o * ho * wo)), o, ho, wo,
                                 kb.gep(kb.scratch, kb.add(planes, kb.mul(k, wo))), ho, wo, 1, 0, 0, pitch=pitch)
            with kb.loop(lo, hi, name="item") as t:
                cc = b.sdiv(t, kb.i64(per_group * kh))  # input channel
                obg = b.srem(b.sdiv(t, kb.i64(kh)), kb.i64(per_group))  # channel block in the group
                a = b.srem(t, kb.i64(kh))
                gr, ci = (0, cc) if geo.groups == 1 else (b.sdiv(cc, kb.i64(cg)), b.srem(cc, kb.i64(cg)))
                o0 = kb.add(kb.mul(gr, og), kb.mul(obg, mr))
                where = (o0, ci, cc, a, n0)
                if og % mr == 0:
                    _grad_weight_tile(kb, dy, nid, mr, where, dims)
                else:
                    with b.if_else(b.icmp_signed("<", obg, kb.i64(per_group - 1))) as (full, last):
                        with full:
                            _grad_weight_tile(kb, dy, nid, mr, where, dims)
                        with last:
                            _grad_weight_tile(kb, dy, nid, og % mr, where, dims)

    return Kernel([dy, x, nid], c * per_group * kh, n * o * ho * wo * cg * kh * kw / 20, emit,
                  (planes + (o * ho * pitch if chunk > 1 else 0)) * 4, names=["conv2d_grad_weight"])


def _grad_weight_tile(kb, dy, dw, rows, where, dims) -> None:
    """Adds this tile's sums over the chunk of images starting at n0 to dw (stores them for the
    first chunk): output channels [o0, o0 + rows), weight channel ci (input channel cc), kernel
    row a, every kernel column. The chunk's pixels are one flat axis of `length`, in the planes
    and in dy (copied after the planes; dy itself for a chunk of one image)."""
    o0, ci, cc, a, n0 = where
    o, length, c, plane, pitch, hq, planes, cg, kh, kw, sh, dh, chunk = dims
    b = kb.b
    zero = ir.Constant(vec(VW), None)
    accs = [[kb.var(vec(VW), zero, "acc") for _ in range(kw)] for _ in range(rows)]
    row = kb.mul(a, dh)  # the first plane row that kernel row a reads, in phase a*dh % sh
    if sh > 1:
        row = kb.add(kb.mul(b.srem(row, kb.i64(sh)), hq), b.sdiv(row, kb.i64(sh)))
    dys = kb.gep(kb.scratch, planes) if chunk > 1 else kb.gep(kb.ptr(dy), kb.mul(n0, o * length))
    dy_rows = [kb.gep(dys, kb.mul(kb.add(o0, r), length)) for r in range(rows)]
    x_row = kb.gep(kb.scratch, kb.add(kb.mul(cc, plane), kb.mul(row, pitch)))

    def step(p, mask):
        dv = [kb.vload(ptr, p, mask=mask) for ptr in dy_rows]
        for q in range(kw):
            xv = kb.vload(x_row, kb.add(p, q * c * plane), mask=mask)
            for r in range(rows):
                kb.set(accs[r][q], kb.fma(dv[r], xv, kb.get(accs[r][q])))
    if length // VW:
        with kb.loop(0, length // VW * VW, VW, name="p") as p:
            step(p, None)
    if length % VW:
        step(length // VW * VW, kb.tail_mask(length % VW))
    first = b.icmp_signed("==", n0, kb.i64(0))
    for r in range(rows):
        base = kb.add(kb.mul(kb.add(kb.mul(kb.add(o0, r), cg), ci), kh * kw), kb.mul(a, kw))
        for q in range(kw):
            at = kb.add(base, q)
            total = kb.hsum(kb.get(accs[r][q]))
            before = b.select(first, kb.const(0.0), kb.load(kb.ptr(dw), at))
            kb.store(b.fadd(before, total), kb.ptr(dw), at)


def _grad_weight_channels_last(dy: int, x: int, nid: int, dims: tuple, geo: Geometry) -> Kernel:
    """The weight gradient with vectors along the input channels: dw[o, c, a, b] =
    Σ_{n, i, j} dy[n, o, i, j] * xt[n, i*sh + a*dh, j*sw + b*dw, c], where xt is a chunk of images
    copied channels last (`transpose_copy`) into the scratch with its zero border. A work item is
    one kernel row a (all kw columns, or one), a block of MR output channels and NV vectors of
    input channels, inside one group (`channels_last_tile`); its accumulators run over all pixels
    of the chunk, each pixel one contiguous load per vector of xt and column, and one broadcast dy
    value per output channel (whose cache line serves the next pixels too), and are added into dw
    at the end of the chunk (stored for the first). Items go channel block outermost, so each
    thread copies only the channels of its own items."""
    n, o, ho, wo, c, h, wd, kh, kw = dims
    og, cg = o // geo.groups, c // geo.groups
    (sh, sw), (dh, dw_), (top, _, left, _) = geo.stride, geo.dilation, geo.pad
    mr, nv, nb = channels_last_tile(og, cg, kw)
    width = nv * VW  # input channels of a block
    cblocks, oblocks, bblocks = -(-cg // width), -(-og // mr), kw // nb  # per group
    hp = max(h + top, (ho - 1) * sh + (kh - 1) * dh + 1)  # rows and columns of xt
    wp = max(wd + left, (wo - 1) * sw + (kw - 1) * dw_ + 1)
    image = hp * wp * c
    chunk = max(k for k in range(1, n + 1) if n % k == 0 and (k == 1 or k * image * 4 <= CHUNK_BYTES))
    taps = kh * bblocks  # items of one channel block and output block
    per_block = oblocks * taps  # items of one channel block
    tile_dims = (o, ho, wo, c, cg, hp, wp, kh, kw, sh, sw, dh, dw_, chunk, nb)

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        zero_fill(kb, kb.scratch, chunk * image)  # the border stays zero
        first_block, end_block = b.sdiv(lo, kb.i64(per_block)), kb.add(b.sdiv(kb.add(hi, -1), kb.i64(per_block)), 1)

        def channel(blk):  # the first input channel of a channel block (counted over all groups)
            return kb.add(kb.mul(b.sdiv(blk, kb.i64(cblocks)), cg), kb.mul(b.srem(blk, kb.i64(cblocks)), width))
        last_group_end = kb.mul(kb.add(b.sdiv(kb.add(end_block, -1), kb.i64(cblocks)), 1), cg)
        c_range = (channel(first_block), kb.smin(kb.add(channel(kb.add(end_block, -1)), width), last_group_end))
        with kb.loop(0, n, chunk, name="chunk") as n0:
            with kb.loop(0, chunk, name="img") as k:
                def pixel(q):  # where pixel q of image k starts in xt
                    y, xx = b.sdiv(q, kb.i64(wd)), b.srem(q, kb.i64(wd))
                    return kb.mul(kb.add(kb.mul(kb.add(kb.mul(k, hp), kb.add(y, top)), wp), kb.add(xx, left)), c)
                transpose_copy(kb, kb.gep(kb.ptr(x), kb.mul(kb.add(n0, k), c * h * wd)), h * wd, c_range,
                               kb.scratch, pixel)
            with kb.loop(lo, hi, name="item") as t:
                blk = b.sdiv(t, kb.i64(per_block))
                ob = b.srem(b.sdiv(t, kb.i64(taps)), kb.i64(oblocks))
                tap = b.srem(t, kb.i64(taps))
                gr, cb = b.sdiv(blk, kb.i64(cblocks)), b.srem(blk, kb.i64(cblocks))
                where = (kb.add(kb.mul(gr, og), kb.mul(ob, mr)), kb.mul(cb, width), kb.add(kb.mul(gr, cg), kb.mul(cb, width)),
                         b.sdiv(tap, kb.i64(bblocks)), kb.mul(b.srem(tap, kb.i64(bblocks)), nb), n0)
                last_o, last_c = og % mr, cg % width  # rows of the last output block, lanes of the last channel block

                def tile(rows, lanes):
                    _channels_last_tile(kb, dy, nid, rows, lanes, where, tile_dims)

                def by_lanes(rows):
                    if not last_c:
                        tile(rows, width)
                        return
                    with b.if_else(b.icmp_signed("==", cb, kb.i64(cblocks - 1))) as (part, whole):
                        with part:
                            tile(rows, last_c)
                        with whole:
                            tile(rows, width)
                if not last_o:
                    by_lanes(mr)
                else:
                    with b.if_else(b.icmp_signed("==", ob, kb.i64(oblocks - 1))) as (part, whole):
                        with part:
                            by_lanes(last_o)
                        with whole:
                            by_lanes(mr)

    return Kernel([dy, x, nid], geo.groups * cblocks * per_block, n * o * ho * wo * cg * kh * kw / 24, emit,
                  (chunk * image + mr * nb * width) * 4, names=["conv2d_grad_weight"])


def _channels_last_tile(kb, dy, dw, rows, lanes, where, dims) -> None:
    """One work item of `_grad_weight_channels_last` over the chunk of images at n0: output
    channels [o0, o0 + rows), weight channels [ci0, ci0 + lanes) (input channels from cc0),
    kernel row a, columns [b0, b0 + nb)."""
    o0, ci0, cc0, a, b0, n0 = where
    o, ho, wo, c, cg, hp, wp, kh, kw, sh, sw, dh, dw_, chunk, nb = dims
    b = kb.b
    nv = -(-lanes // VW)
    masks = [kb.tail_mask(min(VW, lanes - v * VW)) for v in range(nv)]
    zero = ir.Constant(vec(VW), 0.0)
    accs = [[[kb.var(vec(VW), zero, "acc") for _ in range(nv)] for _ in range(nb)] for _ in range(rows)]
    with kb.loop(0, chunk, name="k") as k, kb.loop(0, ho, name="i") as i:
        xrow = kb.add(kb.mul(kb.add(kb.mul(kb.add(kb.mul(k, hp), kb.add(kb.mul(i, sh), kb.mul(a, dh))), wp),
                                    kb.mul(b0, dw_)), c), cc0)
        dyrow = kb.add(kb.mul(kb.add(kb.mul(kb.add(n0, k), o), o0), ho * wo), kb.mul(i, wo))
        with kb.loop(0, wo, name="j") as j:
            xo = kb.add(xrow, kb.mul(j, sw * c))
            xv = [[kb.vload(kb.scratch, kb.add(xo, q * dw_ * c + v * VW), mask=masks[v]) for v in range(nv)]
                  for q in range(nb)]
            for r in range(rows):
                d = kb.splat(kb.load(kb.ptr(dy), kb.add(dyrow, kb.add(j, r * ho * wo))))
                for q in range(nb):
                    for v in range(nv):
                        kb.set(accs[r][q][v], kb.fma(d, xv[q][v], kb.get(accs[r][q][v])))
    # the sums go through a buffer after xt into dw[o0 + r, ci0 + l, a, b0 + q] (a loop, not
    # rows * nb * lanes unrolled stores: LLVM's time grows with the code)
    buf = kb.gep(kb.scratch, chunk * hp * wp * c)
    for r in range(rows):
        for q in range(nb):
            for v in range(nv):
                kb.vstore(kb.get(accs[r][q][v]), buf, ((r * nb + q) * nv + v) * VW)
    first = b.icmp_signed("==", n0, kb.i64(0))
    with kb.loop(0, rows, name="r") as r, kb.loop(0, nb, name="q") as q, kb.loop(0, lanes, name="l") as lane:
        at = kb.add(kb.mul(kb.add(kb.mul(kb.add(o0, r), cg), kb.add(ci0, lane)), kh * kw), kb.add(kb.mul(a, kw), kb.add(b0, q)))
        total = kb.load(buf, kb.add(kb.mul(kb.add(kb.mul(r, nb), q), nv * VW), lane))
        kb.store(b.fadd(b.select(first, kb.const(0.0), kb.load(kb.ptr(dw), at)), total), kb.ptr(dw), at)
