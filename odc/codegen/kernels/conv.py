"""Convolutions: forward, and the gradients with respect to the input and the weight.

The forward pass is a direct convolution ("implicit GEMM"): for each output row, a register
tile of MR output channels × NV vectors of output columns accumulates, over (input channel,
kh, kw), a broadcast weight times a vector of input pixels — read straight from the image,
so there is no im2col matrix. Padding comes from a zero-bordered copy of the image in this
thread's scratch memory (skipped when the padding is 0). A stride above 1 reads the input
pixels of a vector with a gather.

The gradient with respect to the input is the same kernel run on the output gradient, which
is first spread into a zero-filled scratch image (dilated by the stride and bordered by
kernel-1-pad), with the weight read flipped and with its two channel axes exchanged — an
address pattern, not a copy.

The gradient with respect to the weight is a sum over images and output pixels of
``dy[n, o, i, j] * x[n, c, i*s+kh-pad, j*s+kw-pad]``: for a block of MR output channels
and all kw of one (c, kh), a register tile of MR×KW vector accumulators runs along the
output columns j (contiguous in dy and, for stride 1, in x) and is summed horizontally at
the end. Columns that fall into the padding are masked off (constant masks), rows are
skipped by the loop bounds, so no padded copy is needed. Work items (channel block, c, kh)
are independent, so they are split across threads; the batch is walked in chunks that stay
in the core's cache while every item of the thread reads them.
"""
from __future__ import annotations

from llvmlite import ir

from odc.codegen.builder import ACCUMULATORS, I32, REGISTERS, VW, KernelBuilder, vec
from odc.codegen.kernels.gemm import col_tiles, contiguous_b, outer_product, store_tile
from odc.codegen.kernel import Kernel, lowering
from odc.ir.graph import Graph

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


def copy_spread(kb: KernelBuilder, src, channels, h, w, dst, hb, wb, top, left, step) -> None:
    """dst[c, top + i*step, left + j*step] = src[c, i, j] in a zeroed [channels, hb, wb]
    buffer; positions outside the buffer are dropped."""
    with kb.loop(0, channels * hb * wb) as t:
        kb.store(kb.const(0.0), dst, t)
    rows = [i for i in range(h) if 0 <= top + i * step < hb]
    cols = [j for j in range(w) if 0 <= left + j * step < wb]
    if not rows or not cols:
        return
    i0, i1, j0, j1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    with kb.loop(0, channels) as c:
        with kb.loop(i0, i1) as i:
            s_row = kb.add(kb.mul(c, h * w), kb.mul(i, w))
            d_row = kb.add(kb.mul(c, hb * wb), kb.mul(kb.add(top, kb.mul(i, step)), wb))
            with kb.loop(j0, j1) as j:
                kb.store(kb.load(src, kb.add(s_row, j)), dst, kb.add(kb.add(d_row, left), kb.mul(j, step)))


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
               dst, ho, wo, bias=None) -> None:
    """dst[o, i, j] = Σ_{c, a, b} weight(o; c, a, b) * src[c, i*stride + a, j*stride + b]
    (+ bias[o]) for one image; `weight_row(o)` points at weight(o; 0, 0, 0) and `w_steps`
    are the weight's element steps along c, a, b. A register tile covers `mr` channels ×
    `rows` output rows × `nv` vectors of columns."""
    mr, rows, nv_max = conv_tile(m, ho, wo)
    loops = [(cin, w_steps[0], hs * ws), (kh, w_steps[1], ws), (kw, w_steps[2], 1)]

    def block(o0, nm, i0, nrows, c0, nv, lanes):
        a_ptrs = [weight_row(kb.add(o0, r)) for r in range(nm)]
        bases = [kb.gep(src, kb.add(kb.mul(kb.mul(kb.add(i0, rr), stride), ws), kb.mul(c0, stride)))
                 for rr in range(nrows)]
        loads = [(contiguous_b if stride == 1 else strided_b)(kb, base, *((stride,) if stride > 1 else ()),
                                                              lanes, nv) for base in bases]
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


@lowering("conv2d")
def conv2d(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    x, w = node.args[:2]
    bias = node.args[2] if len(node.args) == 3 else None
    n, c, h, wd = g.type(x).shape
    o, _, kh, kw = g.type(w).shape
    _, _, ho, wo = node.type.shape
    s, p = node.attrs.get("stride", 1), node.attrs.get("pad", 0)
    hp, wp = h + 2 * p, wd + 2 * p
    scratch = c * hp * wp * 4 if p else 0

    def emit(kb: KernelBuilder, lo, hi):
        with kb.loop(lo, hi, name="n") as img:
            src = kb.gep(kb.ptr(x), kb.mul(img, c * h * wd))
            if p:
                copy_spread(kb, src, c, h, wd, kb.scratch, hp, wp, p, p, 1)
                src = kb.scratch
            conv_image(kb, src, c, hp, wp, s, lambda oo: kb.gep(kb.ptr(w), kb.mul(oo, c * kh * kw)),
                       (kh * kw, kw, 1), o, kh, kw, kb.gep(kb.ptr(nid), kb.mul(img, o * ho * wo)), ho, wo,
                       kb.ptr(bias) if bias is not None else None)

    values = [x, w, nid] + ([bias] if bias is not None else [])
    return Kernel(values, n, n * o * ho * wo * c * kh * kw / 24, emit, scratch, names=["conv2d"])


@lowering("conv2d_grad_input")
def conv2d_grad_input(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    dy, w = node.args
    n, o, ho, wo = g.type(dy).shape
    _, c, kh, kw = g.type(w).shape
    h, wd = node.attrs["size"]
    s, p = node.attrs.get("stride", 1), node.attrs.get("pad", 0)
    hb, wb = h + kh - 1, wd + kw - 1

    def emit(kb: KernelBuilder, lo, hi):
        with kb.loop(lo, hi, name="n") as img:
            copy_spread(kb, kb.gep(kb.ptr(dy), kb.mul(img, o * ho * wo)), o, ho, wo, kb.scratch,
                        hb, wb, kh - 1 - p, kw - 1 - p, s)
            flipped = (kh - 1) * kw + kw - 1  # weight(c; o, a, b) = w[o, c, kh-1-a, kw-1-b]
            conv_image(kb, kb.scratch, o, hb, wb, 1,
                       lambda cc: kb.gep(kb.ptr(w), kb.add(kb.mul(cc, kh * kw), flipped)),
                       (c * kh * kw, -kw, -1), c, kh, kw,
                       kb.gep(kb.ptr(nid), kb.mul(img, c * h * wd)), h, wd)

    return Kernel([dy, w, nid], n, n * o * h * wd * c * kh * kw / 24, emit, o * hb * wb * 4,
                  names=["conv2d_grad_input"])


@lowering("conv2d_grad_weight")
def conv2d_grad_weight(g: Graph, nid: int) -> Kernel:
    node = g.node(nid)
    dy, x = node.args
    n, o, ho, wo = g.type(dy).shape
    _, c, h, wd = g.type(x).shape
    kh, kw = node.attrs["kernel"]
    s, p = node.attrs.get("stride", 1), node.attrs.get("pad", 0)
    mr = max(1, min(o, (REGISTERS - 2 - kw) // (kw + 1)))  # mr*kw accumulators, mr + 1 operands
    blocks = -(-o // mr)
    segments = [(j0, min(VW, wo - j0)) for j0 in range(0, wo, VW)]
    chunk = max(1, min(n, CHUNK_BYTES // (4 * (o * ho * wo + c * h * wd))))

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        with kb.loop(0, n, chunk, name="chunk") as n0, kb.loop(lo, hi, name="item") as t:
            ob = b.sdiv(t, kb.i64(c * kh))
            cc = b.srem(b.sdiv(t, kb.i64(kh)), kb.i64(c))
            a = b.srem(t, kb.i64(kh))
            o0 = kb.mul(ob, mr)
            # rows of dy with an input row inside the image: 0 <= i*s + a - p < h
            i_lo = b.sdiv(kb.smax(kb.add(b.sub(kb.i64(p), a), s - 1), 0), kb.i64(s))
            i_hi = kb.smin(b.sdiv(kb.add(b.sub(kb.i64(h - 1 + p), a), s), kb.i64(s)), ho)
            dims = (n, o, ho, wo, c, h, wd, kh, kw, s, p)
            images = (n0, kb.smin(kb.add(n0, chunk), n))
            if o % mr == 0:
                _grad_weight_tile(kb, dy, x, nid, o0, mr, cc, a, i_lo, i_hi, images, dims, segments)
            else:
                with b.if_else(b.icmp_signed("<", ob, kb.i64(blocks - 1))) as (full, last):
                    with full:
                        _grad_weight_tile(kb, dy, x, nid, o0, mr, cc, a, i_lo, i_hi, images, dims, segments)
                    with last:
                        _grad_weight_tile(kb, dy, x, nid, o0, o % mr, cc, a, i_lo, i_hi, images, dims,
                                          segments)

    return Kernel([dy, x, nid], blocks * c * kh, n * o * ho * wo * c * kh * kw / 20, emit,
                  names=["conv2d_grad_weight"])


def _grad_weight_tile(kb, dy, x, dw, o0, rows, cc, a, i_lo, i_hi, images, dims, segments) -> None:
    """Adds this tile's sums over the images [images[0], images[1]) to dw (stores them for the
    first chunk)."""
    n, o, ho, wo, c, h, wd, kh, kw, s, p = dims
    zero = ir.Constant(vec(VW), None)
    accs = [[kb.var(vec(VW), zero, "acc") for _ in range(kw)] for _ in range(rows)]
    with kb.loop(images[0], images[1], name="img") as img:
        with kb.loop(i_lo, i_hi, name="i") as i:
            dy_rows = [kb.gep(kb.ptr(dy), kb.add(kb.mul(kb.add(kb.mul(img, o), kb.add(o0, r)), ho * wo),
                                                 kb.mul(i, wo))) for r in range(rows)]
            x_row = kb.gep(kb.ptr(x), kb.add(kb.mul(kb.add(kb.mul(img, c), cc), h * wd),
                                             kb.mul(kb.add(kb.add(kb.mul(i, s), -p), a), wd)))
            for j0, lanes in segments:
                dmask = kb.tail_mask(lanes)
                dv = [kb.vload(ptr, j0, mask=dmask) for ptr in dy_rows]
                for q in range(kw):
                    valid = [l < lanes and 0 <= (j0 + l) * s + q - p < wd for l in range(VW)]
                    if not any(valid):
                        continue
                    if s == 1:
                        xv = kb.vload(x_row, j0 + q - p, mask=None if all(valid) else kb.lane_mask(valid))
                    else:
                        xv = zero
                        for l in range(VW):
                            if valid[l]:
                                xv = kb.b.insert_element(xv, kb.load(x_row, (j0 + l) * s + q - p),
                                                         ir.Constant(I32, l))
                    for r in range(rows):
                        kb.set(accs[r][q], kb.fma(dv[r], xv, kb.get(accs[r][q])))
    first = kb.b.icmp_signed("==", images[0], kb.i64(0))
    for r in range(rows):
        base = kb.add(kb.mul(kb.add(kb.mul(kb.add(o0, r), c), cc), kh * kw), kb.mul(a, kw))
        for q in range(kw):
            at = kb.add(base, q)
            total = kb.hsum(kb.get(accs[r][q]))
            before = kb.b.select(first, kb.const(0.0), kb.load(kb.ptr(dw), at))
            kb.store(kb.b.fadd(before, total), kb.ptr(dw), at)

