"""Copies that put an image where a kernel reads it with contiguous vector loads: the shifted
planes of the direct convolution (`shifted_copy`, also the even and odd columns of the Winograd
kernels), and images transposed to channels last in VW x VW register blocks (`transpose_copy`)."""
from __future__ import annotations

from llvmlite import ir

from odc.codegen.builder import I32, I64, VW, KernelBuilder, vec


def zero_fill(kb: KernelBuilder, dst, count: int) -> None:
    with kb.loop(0, count) as t:
        kb.store(kb.const(0.0), dst, t)


def shifted_copy(kb: KernelBuilder, src, channels, h, w, dst, rows, wo, kw, top, left,
                 stride=(1, 1), dilation_w=1, spread=(1, 1), some=None, pitch=None) -> None:
    """The planes that `conv_flat` reads, one per kernel column b, `wo` wide:
    dst[b, c, y % sh, y // sh, j] = src[c, (y - top) / th, (j*sw + b*dw - left) / tw] for
    y < rows (a multiple of sh), j < wo, where both divisions are exact and land inside src.
    (sh, sw) = `stride`, dw = `dilation_w`, (th, tw) = `spread` (the output gradient spread by
    the stride, for the input gradient). Other positions are not written: the caller zeroes
    dst once, and every image writes the same positions. `some` = (first, end) copies only
    those channels; `pitch` (default wo) is the step from one row of a plane to the next."""
    (sh, sw), (th, tw) = stride, spread
    pitch = pitch or wo
    plane, hq = rows * pitch, rows // sh
    i_lo, i_hi = max(0, -(top // th)), min(h, (rows - 1 - top) // th + 1)  # rows of src used
    runs = []  # per b: (first j, first source column, j step, source step, count)
    for b in range(kw):
        pairs = [(j, (j * sw + b * dilation_w - left) // tw) for j in range(wo)
                 if (j * sw + b * dilation_w - left) % tw == 0 and 0 <= (j * sw + b * dilation_w - left) // tw < w]
        if pairs:
            steps = (pairs[1][0] - pairs[0][0], pairs[1][1] - pairs[0][1]) if len(pairs) > 1 else (1, 1)
            runs.append((b, *pairs[0], *steps, len(pairs)))
    if i_lo >= i_hi or not runs:
        return
    with kb.loop(*(some or (0, channels))) as c, kb.loop(i_lo, i_hi) as i:
        y = kb.add(top, kb.mul(i, th))
        if sh > 1:  # the rows of one phase y % sh are consecutive
            y = kb.add(kb.mul(kb.b.srem(y, kb.i64(sh)), hq), kb.b.sdiv(y, kb.i64(sh)))
        s_row = kb.gep(src, kb.add(kb.mul(c, h * w), kb.mul(i, w)))
        d_row = kb.add(kb.mul(c, plane), kb.mul(y, pitch))
        for b, j0, s0, dj, ds, count in runs:
            d = kb.add(d_row, b * channels * plane + j0)
            if dj == 1:  # contiguous stores of (strided) loads
                for k in range(0, count, VW):
                    lanes = min(VW, count - k)
                    kb.vstore(strided_vector(kb, s_row, s0 + k * ds, ds, lanes), dst, kb.add(d, k),
                              mask=kb.tail_mask(lanes))
            else:
                with kb.loop(0, count) as k:
                    kb.store(kb.load(s_row, kb.add(s0, kb.mul(k, ds))), dst, kb.add(d, kb.mul(k, dj)))


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


def transpose16(kb: KernelBuilder, rows: list) -> list:
    """The transpose of a VW x VW matrix held as VW row vectors: log2(VW) stages, each
    exchanging the off-diagonal s x s blocks of every 2s x 2s block with one two-vector shuffle
    per row (s = VW/2, ..., 1)."""
    m, s = list(rows), VW // 2
    while s:
        for i in [i for i in range(VW) if not i & s]:
            lo = [q if not q & s else VW + q - s for q in range(VW)]
            hi = [q + s if not q & s else VW + q for q in range(VW)]
            m[i], m[i + s] = (kb.b.shuffle_vector(m[i], m[i + s], ir.Constant(vec(VW, I32), lo)),
                              kb.b.shuffle_vector(m[i], m[i + s], ir.Constant(vec(VW, I32), hi)))
        s //= 2
    return m


def transpose_copy(kb: KernelBuilder, src, pixels: int, channels, dst, pixel) -> None:
    """dst[pixel(q) + ch] = src[ch * pixels + q] for ch in [channels[0], channels[1]) and q <
    pixels: an image copied channels last, VW x VW blocks transposed in registers (masked at
    the edges)."""
    b = kb.b
    lo, hi = channels
    with kb.loop(lo, hi, VW, name="cb") as c0:
        count = kb.smin(VW, b.sub(hi, c0))
        with kb.loop(0, pixels, VW, name="qb") as q0:
            lanes = kb.smin(VW, b.sub(kb.i64(pixels), q0))
            in_lanes = b.icmp_signed("<", ir.Constant(vec(VW, I64), list(range(VW))), kb.splat(lanes))
            rows = []
            for r in range(VW):
                valid = b.icmp_signed("<", kb.i64(r), count)
                row = kb.add(kb.mul(kb.add(c0, r), pixels), q0)
                mask = b.and_(in_lanes, kb.splat(valid))
                rows.append(kb.vload(src, row, mask=mask))
            cols = transpose16(kb, rows)
            out_mask = b.icmp_signed("<", ir.Constant(vec(VW, I64), list(range(VW))), kb.splat(count))
            for q in range(VW):
                with b.if_then(b.icmp_signed("<", kb.i64(q), lanes)):
                    kb.vstore(cols[q], dst, kb.add(pixel(kb.add(q0, q)), c0), mask=out_mask)
