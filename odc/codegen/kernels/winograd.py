"""3x3 convolutions of stride 1 by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray,
"Fast Algorithms for Convolutional Neural Networks", 2016): the forward pass and the gradient
with respect to the input (the same convolution over dy, with the weight flipped and its
channel axes exchanged) of dense layers with enough channels.

A 2x2 block of output pixels of one output channel reads a 4x4 tile d of each input channel;
with the 3x3 weight g of the channel pair,

    y = A^T [ (G g G^T) ⊙ (B^T d B) ] A,   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
    G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],   A^T = [1 1 1 0; 0 1 -1 -1],

so that summed over the input channels, each of the 16 positions ξ of the 4x4 products is a
matrix product M[ξ] = U[ξ] @ V[ξ] with U[ξ][o, c] = (G g[o, c] G^T)[ξ] and V[ξ][c, t] =
(B^T d[c, t] B)[ξ] for the tiles t: 16 multiply-adds per channel pair for 4 outputs, where the
direct convolution does 36 (2.25 times fewer). The transforms add and subtract only (the
halves of G are exact), so the result differs from the direct sum by float32 rounding of a
few terms.

Each thread transforms the whole weight into U (its scratch) once per call, then takes its
images in blocks of tiles: a band of tile rows of one image, or whole images side by side when
one has few tiles, so that V[ξ] and M[ξ] of a block stay in the L2 cache. For a block: the
images are copied into two planes of even and odd columns (`shifted_copy` with a column
stride of 2, zero where the 4x4 tiles reach into the padding or past the last row or
column), from which each of the four columns of a tile row is one contiguous vector load over
consecutive tiles; the input transform writes V; 16 register-tiled products (the
`outer_product` tile of the direct convolution) write M; the output transform adds the bias
and stores the 2x2 blocks, the two columns of a block interleaved by a shuffle, the last row
or column dropped where the output's side is odd.

The weight gradient is the same identity differentiated: dw[o, c] = G^T (Σ_t Z_t ⊙ V_t) G with
Z = A dy A^T of each 2x2 block of dy (`winograd_grad_weight`), 16 products that sum over the
tiles, run with vectors along the input channels.

A layer runs this way when it has a vector's worth of channels on each side (8 with AVX2, 16
with AVX-512: below that the direct kernels are as fast) and at most 512 x 512 of them (U is
16 MiB a thread then); its weight gradient needs whole vectors of input channels and 32 of
them at least. Measured alone at batch 128 on 2 threads, against the direct kernels: AVX2
forward and input gradient 1.2-1.9x, weight gradient 1.1-1.5x; AVX-512 1.1-2.3x, weight
gradient 0.95-1.4x.
"""
from __future__ import annotations

from llvmlite import ir

from odc.codegen.builder import I32, VW, KernelBuilder, vec
from odc.codegen.kernel import Kernel
from odc.codegen.kernels.copies import shifted_copy, transpose_copy, zero_fill
from odc.codegen.kernels.gemm import (channels_last_tile, col_tiles, contiguous_b, conv_tile, outer_product,
                                      row_tiles, store_tile)

MIN_CHANNELS = VW  # input and output channels (a vector's worth) from which a 3x3 convolution runs as F(2x2, 3x3)
MAX_WEIGHT = 512 * 512  # ... and at most this many channel pairs (U is 16 floats per pair: 16 MiB per thread)
BLOCK_FLOATS = 64 * 1024  # V and M of a block of tiles together: 256 KiB
SKEW = 16  # floats
WEIGHT_GRADIENT_MIN = 32  # input channels (and at least two vectors of them: two threads' blocks)


def applies(kernel, geo, cin: int, cout: int, weight_gradient: bool = False) -> bool:
    """Whether a convolution with these attributes (its forward form) runs as F(2x2, 3x3); its
    weight gradient also needs whole vectors of input channels and `WEIGHT_GRADIENT_MIN` of
    them (with 16 channels the direct kernel is faster)."""
    return (tuple(kernel) == (3, 3) and geo.stride == (1, 1) and geo.dilation == (1, 1) and geo.groups == 1
            and min(cin, cout) >= MIN_CHANNELS and cin * cout <= MAX_WEIGHT
            and (not weight_gradient or (cin % VW == 0 and cin >= WEIGHT_GRADIENT_MIN)))


def winograd(name: str, values, dims, src, weight, dst, bias=None) -> Kernel:
    """The kernel of out[n, o, i, j] = Σ_{c, a, b} weight(o, c, a, b) * x[n, c, i + a - top,
    j + b - left] (+ bias[o]), x zero outside its h x w. dims = (n, cin, h, w, cout, ho, wo,
    top, left); src(kb, image) and dst(kb, image) point at an image of x and of out;
    weight(kb, o, c) = (pointer to weight(o, c, 0, 0), step along a, step along b); `bias` a
    value id or None; `name` the op's."""
    n, cin, h, w, cout, ho, wo, top, left = dims
    th, tw = -(-ho // 2), -(-wo // 2)  # tile rows and columns of an image
    chunk, band = _block(n, th, tw, cin, cout, whole=False)
    tb = chunk * band * tw  # tiles of a block: the columns of V and M
    rows, pw = 2 * th + 2, tw + 1  # the planes' rows, and the columns of one image in them
    pitch = chunk * pw
    planes = 2 * cin * rows * pitch
    # the 16 matrices of V and of M, a cache line apart from a multiple of 4 KiB: the
    # transforms read or write all 16 at once
    vs, ms = cin * tb + SKEW, cout * tb + SKEW
    u_size, v_size = 16 * cout * cin, 16 * vs
    mr, nv_max = conv_tile(cout, tb)

    def emit(kb: KernelBuilder, lo, hi):
        u = kb.gep(kb.scratch, planes)
        v = kb.gep(u, u_size)
        m = kb.gep(v, v_size)
        zero_fill(kb, kb.scratch, planes)  # every image fills the same positions
        _weight_transform(kb, weight, u, cout, cin)
        with kb.loop(lo, hi, chunk, name="n") as n0:
            images = 1 if chunk == 1 else kb.smin(chunk, kb.b.sub(hi, n0))
            with kb.loop(0, images, name="k") as k:
                shifted_copy(kb, src(kb, kb.add(n0, k)), cin, h, w, kb.gep(kb.scratch, kb.mul(k, pw)), rows, pw,
                             2, top, left, stride=(1, 2), pitch=pitch)
            with kb.loop(0, th, band, name="band") as ti0:
                with kb.loop(0, images, name="k") as k, kb.loop(0, band, name="ti") as ti:
                    _input_transform(kb, kb.gep(kb.scratch, kb.add(kb.mul(kb.add(ti0, ti), 2 * pitch), kb.mul(k, pw))),
                                     kb.gep(v, kb.mul(kb.add(kb.mul(k, band), ti), tw)), cin, rows * pitch,
                                     cin * rows * pitch, pitch, tw, tb, vs)
                with kb.loop(0, 16, name="xi") as xi:
                    _product(kb, kb.gep(u, kb.mul(xi, cout * cin)), kb.gep(v, kb.mul(xi, vs)),
                             kb.gep(m, kb.mul(xi, ms)), cout, cin, tb, mr, nv_max)
                with kb.loop(0, images, name="k") as k, kb.loop(0, band, name="ti") as ti:
                    _output_transform(kb, kb.gep(m, kb.mul(kb.add(kb.mul(k, band), ti), tw)),
                                      dst(kb, kb.add(n0, k)), kb.add(ti0, ti), bias, cout, ho, wo, tw, tb, ms)

    scratch = planes + u_size + v_size + 16 * ms
    values = list(values) + ([bias] if bias is not None else [])
    return Kernel(values, n, n * cout * ho * wo * cin * 9 / 48, emit, scratch * 4, names=[name])


def _block(n: int, th: int, tw: int, cin: int, cout: int, whole: bool) -> tuple[int, int]:
    """(images, tile rows) of a block of tiles, so that V and M (16 floats a tile per channel)
    fill about `BLOCK_FLOATS`: a band of tile rows (a divisor of th) of one image, or whole
    images side by side when one has fewer tiles; with `whole` their count divides n."""
    target = max(2 * VW, BLOCK_FLOATS // (16 * (cin + cout)))  # tiles of a block
    tiles = th * tw
    if tiles > target:
        return 1, max(d for d in range(1, th + 1) if th % d == 0 and (d == 1 or d * tw <= target))
    if whole:
        return max(k for k in range(1, n + 1) if n % k == 0 and k * tiles <= max(target, tiles)), th
    return max(1, min(n, target // tiles)), th


def _weight_transform(kb: KernelBuilder, weight, u, cout: int, cin: int) -> None:
    """u[ξ, o, c] = (G g G^T)[ξ] for the 3x3 weight g of every channel pair."""
    b, half = kb.b, kb.const(0.5)

    def spread(g0, g1, g2):  # G times a column of three
        return [g0, b.fmul(b.fadd(b.fadd(g0, g1), g2), half), b.fmul(b.fadd(b.fsub(g0, g1), g2), half), g2]
    with kb.loop(0, cout, name="o") as o, kb.loop(0, cin, name="c") as c:
        ptr, sa, sb = weight(kb, o, c)
        g = [[kb.load(ptr, a * sa + bb * sb) for bb in range(3)] for a in range(3)]
        rows = list(zip(*[spread(*col) for col in zip(*g)]))  # G g: 4 rows of 3
        for i, row in enumerate(rows):
            for j, value in enumerate(spread(*row)):
                kb.store(value, u, kb.add((4 * i + j) * cout * cin, kb.add(kb.mul(o, cin), c)))


def _input_transform(kb: KernelBuilder, planes, v, cin: int, plane: int, odd: int, pitch: int, tw: int,
                     tb: int, vs: int) -> None:
    """v[ξ, c, t] = (B^T d B)[ξ] for the tiles t < tw of one tile row, whose first input row
    is at `planes` (even columns; the odd ones `odd` floats on)."""
    b = kb.b
    with kb.loop(0, cin, name="c") as c:
        row0 = kb.gep(planes, kb.mul(c, plane))
        for t0 in range(0, tw, VW):
            mask = kb.tail_mask(min(VW, tw - t0))
            d = [[kb.vload(row0, r * pitch + t0 + (s // 2) + (s % 2) * odd, mask=mask) for s in range(4)]
                 for r in range(4)]
            rows = _bt(b, d)
            for i in range(4):
                for j, value in enumerate(_bt(b, rows[i])):
                    kb.vstore(value, v, kb.add(kb.mul(c, tb), (4 * i + j) * vs + t0), mask=mask)


def _bt(b, d):
    """B^T d for four rows (or values) d."""
    def op(f, x, y):
        return [f(p, q) for p, q in zip(x, y)] if isinstance(x, list) else f(x, y)
    return [op(b.fsub, d[0], d[2]), op(b.fadd, d[1], d[2]), op(b.fsub, d[2], d[1]), op(b.fsub, d[1], d[3])]


def _product(kb: KernelBuilder, u, v, m, cout: int, cin: int, tb: int, mr: int, nv_max: int) -> None:
    """m[o, t] = Σ_c u[o, c] * v[c, t]: register tiles of mr output channels x nv vectors of
    tiles."""
    def block(o0, nm, p0, nv, lanes):
        accs = outer_product(kb, [kb.gep(u, kb.mul(kb.add(o0, r), cin)) for r in range(nm)], [(cin, 1, tb)],
                             contiguous_b(kb, kb.gep(v, p0), lanes, nv), nv)
        store_tile(kb, accs, [kb.gep(m, kb.add(kb.mul(kb.add(o0, r), tb), p0)) for r in range(nm)], lanes)

    col_tiles(kb, tb, nv_max, lambda p0, nv, ln: row_tiles(kb, cout, mr, lambda o0, nm: block(o0, nm, p0, nv, ln)))


def _output_transform(kb: KernelBuilder, m, out, ti, bias, cout: int, ho: int, wo: int, tw: int, tb: int,
                      ms: int) -> None:
    """out[o, 2ti + i, 2t + j] = (A^T m A)[i, j] (+ bias[o]) for the tiles t < tw of tile row ti,
    whose products start at `m`; rows and columns past the output are dropped."""
    b = kb.b
    lo = ir.Constant(vec(VW, I32), [l // 2 + (l % 2) * VW for l in range(VW)])
    hi = ir.Constant(vec(VW, I32), [VW // 2 + l // 2 + (l % 2) * VW for l in range(VW)])

    def at(x):  # A^T applied to four values
        return [b.fadd(b.fadd(x[0], x[1]), x[2]), b.fsub(b.fsub(x[1], x[2]), x[3])]

    def rows_of(o, last):  # output rows 2ti, 2ti + 1 (the second only unless `last` drops it)
        base = kb.gep(out, kb.add(kb.mul(o, ho * wo), kb.mul(ti, 2 * wo)))
        for t0 in range(0, tw, VW):
            lanes = min(VW, tw - t0)
            mask = kb.tail_mask(lanes)
            mv = [kb.vload(m, kb.add(kb.mul(o, tb), xi * ms + t0), mask=mask) for xi in range(16)]
            s = [[mv[4 * i + j] for j in range(4)] for i in range(4)]
            cols = list(zip(*s))  # columns of m
            a_rows = list(zip(*[at(col) for col in cols]))  # A^T m: 2 rows of 4
            for i in range(1 if last else 2):
                y = at(a_rows[i])  # (A^T m A)[i, 0] and [i, 1]
                if bias is not None:
                    y = [b.fadd(q, kb.splat(kb.load(kb.ptr(bias), o))) for q in y]
                width = min(2 * lanes, wo - 2 * t0)  # output columns of these tiles
                for part, pick in ((0, lo), (1, hi)):
                    count = min(VW, width - part * VW)
                    if count > 0:
                        kb.vstore(b.shuffle_vector(y[0], y[1], pick), base, i * wo + 2 * t0 + part * VW,
                                  mask=kb.tail_mask(count))

    with kb.loop(0, cout, name="o") as o:
        if ho % 2 == 0:
            rows_of(o, False)
        else:
            with b.if_else(b.icmp_signed("<", ti, kb.i64(ho // 2))) as (whole, last):
                with whole:
                    rows_of(o, False)
                with last:
                    rows_of(o, True)


def winograd_grad_weight(values, dims) -> Kernel:
    """The kernel of dw[o, c, a, b] = Σ_{n, i, j} dy[n, o, i, j] * x[n, c, i + a - top, j + b -
    left], the weight gradient of the F(2x2, 3x3) convolution: dw[o, c] = G^T dU[o, c] G with
    dU[ξ][o, c] = Σ_t Z[ξ][o, t] * V[ξ][t, c], Z = A dy A^T of each 2x2 block of dy (4x4,
    zero past dy's last row or column) and V = B^T d B of the tile it read. values = [dy, x,
    dw]; dims = (n, cout, ho, wo, cin, h, w, top, left); cin a multiple of the vector width.
    Each thread takes blocks of input channels (vectors along the channels: x is copied
    channels last, and V[ξ] is laid out [tile, channel]) and all images, so that it owns its dw
    rows whole: it transforms its channels of x and all of dy (the cheaper transform, done by
    every thread), then 16 register-tiled products of mr output channels x nv vectors of
    channels accumulate over the tiles of a block and add into dU."""
    dy, x, dw = values
    n, cout, ho, wo, cin, h, w, top, left = dims
    th, tw = -(-ho // 2), -(-wo // 2)
    mr, nv, _ = channels_last_tile(cout, cin, 1)
    nv = max(1, min(nv, cin // VW // 2))  # two blocks of channels at least, for two threads
    width = nv * VW
    cblocks = -(-cin // width)
    chunk, band = _block(n, th, tw, cin, cout, whole=True)  # full blocks: the sums take all their tiles
    tb = chunk * band * tw
    hp, wp = 2 * th + 2, 2 * tw + 2  # the rows and columns of a channels-last image, border included
    xt_size = chunk * hp * wp * cin
    dp = chunk * tw  # the row length of dy's planes of even and of odd columns
    dyp_size = 2 * cout * 2 * th * dp
    vs, zs = tb * cin + SKEW, cout * tb + SKEW
    du_size = 16 * cout * cin

    def emit(kb: KernelBuilder, lo, hi):
        b = kb.b
        xt, dyp = kb.scratch, kb.gep(kb.scratch, xt_size)
        v = kb.gep(dyp, dyp_size)
        z = kb.gep(v, 16 * vs)
        du = kb.gep(z, 16 * zs)
        c_lo, c_hi = kb.mul(lo, width), kb.smin(kb.mul(hi, width), cin)
        zero_fill(kb, xt, xt_size)  # the borders stay zero
        zero_fill(kb, dyp, dyp_size)
        with kb.loop(0, n, chunk, name="n") as n0:
            with kb.loop(0, chunk, name="k") as k:
                def pixel(q):  # where pixel q of image k starts in xt
                    y, xx = b.sdiv(q, kb.i64(w)), b.srem(q, kb.i64(w))
                    return kb.mul(kb.add(kb.mul(kb.add(kb.mul(k, hp), kb.add(y, top)), wp), kb.add(xx, left)), cin)
                transpose_copy(kb, kb.gep(kb.ptr(x), kb.mul(kb.add(n0, k), cin * h * w)), h * w, (c_lo, c_hi),
                                    xt, pixel)
                shifted_copy(kb, kb.gep(kb.ptr(dy), kb.mul(kb.add(n0, k), cout * ho * wo)), cout, ho, wo,
                                  kb.gep(dyp, kb.mul(k, tw)), 2 * th, tw, 2, 0, 0, stride=(1, 2),
                                  pitch=dp)
            with kb.loop(0, th, band, name="band") as ti0:
                first = b.and_(b.icmp_signed("==", n0, kb.i64(0)), b.icmp_signed("==", ti0, kb.i64(0)))
                # tile t of a block: (tile row, image, tile column), so that a tile row of all
                # the images is a run of consecutive tiles, as in dy's planes
                with kb.loop(0, chunk, name="k") as k, kb.loop(0, band, name="ti") as ti:
                    t0 = kb.mul(kb.add(kb.mul(ti, chunk), k), tw)
                    _input_transform_channels_last(
                        kb, kb.gep(xt, kb.mul(kb.add(kb.mul(k, hp), kb.mul(kb.add(ti0, ti), 2)), wp * cin)),
                        kb.gep(v, kb.mul(t0, cin)), c_lo, c_hi, wp, cin, tw, vs)
                with kb.loop(0, band, name="ti") as ti:
                    _dy_transform(kb, kb.gep(dyp, kb.mul(kb.add(ti0, ti), 2 * dp)), kb.gep(z, kb.mul(ti, dp)), cout,
                                  2 * th * dp, cout * 2 * th * dp, dp, dp, tb, zs)
                with kb.loop(0, 16, name="xi") as xi:
                    _accumulate(kb, kb.gep(z, kb.mul(xi, zs)), kb.gep(v, kb.mul(xi, vs)),
                                kb.gep(du, kb.mul(xi, cout * cin)), first, (lo, hi), cout, cin, tb, mr, nv)
        _weight_gradient(kb, du, kb.ptr(dw), c_lo, c_hi, cout, cin)

    scratch = xt_size + dyp_size + 16 * vs + 16 * zs + du_size
    return Kernel(list(values), cblocks, n * cout * ho * wo * cin * 9 / 48, emit, scratch * 4,
                  names=["conv2d_grad_weight"])


def _input_transform_channels_last(kb: KernelBuilder, xt, v, c_lo, c_hi, wp: int, cin: int, tw: int,
                                   vs: int) -> None:
    """v[ξ, t, c] = (B^T d B)[ξ] for the tiles t < tw of one tile row (first input row at
    `xt`, channels last, rows wp * cin long) and the channels [c_lo, c_hi), whole vectors."""
    b = kb.b
    with kb.loop(0, tw, name="t") as t, kb.loop(c_lo, c_hi, VW, name="c") as c:
        at = kb.add(kb.mul(t, 2 * cin), c)
        d = [[kb.vload(xt, kb.add(at, r * wp * cin + s * cin)) for s in range(4)] for r in range(4)]
        rows = _bt(b, d)
        for i in range(4):
            for j, value in enumerate(_bt(b, rows[i])):
                kb.vstore(value, v, kb.add(kb.mul(t, cin), kb.add(c, (4 * i + j) * vs)))


def _dy_transform(kb: KernelBuilder, planes, z, cout: int, plane: int, odd: int, pitch: int, tw: int, tb: int,
                  zs: int) -> None:
    """z[ξ, o, t] = (A e A^T)[ξ] for the 2x2 blocks e of dy of one tile row, `tw` tiles (of
    all the images of a chunk; its first row at `planes`: even columns, the odd ones `odd`
    floats on), A = [1 0; 1 1; 1 -1; 0 -1]."""
    b = kb.b

    def a(p, q):  # A times a column of two
        return [p, b.fadd(p, q), b.fsub(p, q), b.fneg(q)]
    with kb.loop(0, cout, name="o") as o:
        row0 = kb.gep(planes, kb.mul(o, plane))
        for t0 in range(0, tw, VW):
            mask = kb.tail_mask(min(VW, tw - t0))
            e = [[kb.vload(row0, i * pitch + t0 + j * odd, mask=mask) for j in range(2)] for i in range(2)]
            cols = [a(e[0][j], e[1][j]) for j in range(2)]  # A e: 4 rows of 2, by column
            for i in range(4):
                for j, value in enumerate(a(cols[0][i], cols[1][i])):
                    kb.vstore(value, z, kb.add(kb.mul(o, tb), (4 * i + j) * zs + t0), mask=mask)


def _accumulate(kb: KernelBuilder, z, v, du, first, blocks, cout: int, cin: int, tb: int, mr: int, nv: int) -> None:
    """du[o, c] (+)= Σ_t z[o, t] * v[t, c] for the channel blocks [blocks) of nv vectors (the
    last may be shorter): tiles of mr output channels x nv vectors; `first` stores instead."""
    b = kb.b
    lo, hi = blocks

    def tile(o0, rows, c0, vecs):
        accs = outer_product(kb, [kb.gep(z, kb.mul(kb.add(o0, r), tb)) for r in range(rows)], [(tb, 1, cin)],
                             contiguous_b(kb, kb.gep(v, c0), VW, vecs), vecs)
        for r in range(rows):
            for q in range(vecs):
                at = kb.add(kb.mul(kb.add(o0, r), cin), kb.add(c0, q * VW))
                before = b.select(first, ir.Constant(vec(VW), None), kb.vload(du, at))
                kb.vstore(b.fadd(before, accs[r][q]), du, at)

    def channel_block(c0, vecs):
        row_tiles(kb, cout, mr, lambda o0, rows: tile(o0, rows, c0, vecs))
    width, last = nv * VW, cin % (nv * VW) // VW  # vectors of the last block, if it is shorter
    with kb.loop(lo, hi, name="cb") as cb:
        c0 = kb.mul(cb, width)
        if not last:
            channel_block(c0, nv)
        else:
            with b.if_else(b.icmp_signed("<", kb.mul(kb.add(cb, 1), width), kb.i64(cin + 1))) as (whole, part):
                with whole:
                    channel_block(c0, nv)
                with part:
                    channel_block(c0, last)


def _weight_gradient(kb: KernelBuilder, du, dw, c_lo, c_hi, cout: int, cin: int) -> None:
    """dw[o, c] = G^T du[o, c] G (3x3 from 4x4) for the channels [c_lo, c_hi)."""
    b, half = kb.b, kb.const(0.5)

    def gt(p):  # G^T times a column of four
        return [b.fadd(p[0], b.fmul(b.fadd(p[1], p[2]), half)), b.fmul(b.fsub(p[1], p[2]), half),
                b.fadd(b.fmul(b.fadd(p[1], p[2]), half), p[3])]
    with kb.loop(0, cout, name="o") as o, kb.loop(c_lo, c_hi, name="c") as c:
        at = kb.add(kb.mul(o, cin), c)
        u = [[kb.load(du, kb.add(at, (4 * i + j) * cout * cin)) for j in range(4)] for i in range(4)]
        cols = [gt([u[i][j] for i in range(4)]) for j in range(4)]  # G^T u: 3 rows of 4, by column
        for a in range(3):
            for bb, value in enumerate(gt([cols[j][a] for j in range(4)])):
                kb.store(value, dw, kb.add(kb.mul(at, 9), 3 * a + bb))
