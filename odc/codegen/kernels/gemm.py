"""Matrix products with register-blocked micro-kernels in explicit vectors of the target's width
(`VW` floats: 512 bits with AVX-512, 256 with AVX2).

Two register tiles cover the products a training step needs:
- `outer_product`: ``acc[r][v] += A[r, k] * B[k, v-th vector of columns]`` — MR rows of A
  broadcast against NV vectors of a row of B, for B contiguous along the output columns
  (``matmul``, and the direct convolution in `conv`, whose "B" is the image's shifted planes).
- `dot_tile`: ``acc[r][c] += A[r, j:j+VW] * B[c, j:j+VW]`` then a horizontal sum — for two
  operands contiguous along the reduction, as in ``linear`` (x @ w.T with w stored [out, in]),
  which needs no transposed copy of the weight this way.
Tiles are sized to keep all accumulators in the vector registers with enough of them
independent to hide FMA latency. Partial vectors use masked loads and stores (no reads past
a buffer). A kernel's parallel range is the rows of its result; each thread walks its rows
in full MR-row blocks, then single rows.
"""
from __future__ import annotations

from llvmlite import ir

from odc.codegen.builder import ACCUMULATORS, REGISTERS, VW, KernelBuilder, vec
from odc.codegen.kernel import Kernel, lowering
from odc.codegen.kernels.elementwise import broadcast_strides, contiguous_strides, loop_nest
from odc.ir.graph import Graph


def outer_product(kb: KernelBuilder, a_ptrs, loops, b_load, nv: int):
    """Σ over the loop nest ``loops`` of ``splat(a_ptrs[r][a_off]) * b_load(v, b_off)``: MR×NV
    vector accumulators. Each level of the nest is a loop ``(extent, a_step, b_step)``, or a
    list of constant ``(a_off, b_off)`` pairs, unrolled."""
    zero = ir.Constant(vec(VW), None)
    accs = [[kb.var(vec(VW), zero, "acc") for _ in range(nv)] for _ in a_ptrs]

    def nest(level, a_off, b_off):
        if level == len(loops):
            bs = [b_load(v, b_off) for v in range(nv)]
            for r, ap in enumerate(a_ptrs):
                a = kb.splat(kb.load(ap, a_off))
                for v in range(nv):
                    kb.set(accs[r][v], kb.fma(a, bs[v], kb.get(accs[r][v])))
        elif isinstance(loops[level], list):
            for a_o, b_o in loops[level]:
                nest(level + 1, kb.add(a_off, a_o), kb.add(b_off, b_o))
        else:
            extent, a_step, b_step = loops[level]
            with kb.loop(0, extent, name="k") as k:
                nest(level + 1, kb.add(a_off, kb.mul(k, a_step)), kb.add(b_off, kb.mul(k, b_step)))
    nest(0, 0, 0)
    return [[kb.get(acc) for acc in row] for row in accs]


def dot_tile(kb: KernelBuilder, a_ptrs, b_ptrs, length: int):
    """``Σ_j a_ptrs[r][j] * b_ptrs[c][j]`` for j < length: MR×NR scalars."""
    zero = ir.Constant(vec(VW), None)
    accs = [[kb.var(vec(VW), zero, "acc") for _ in b_ptrs] for _ in a_ptrs]

    def step(j, mask):
        av = [kb.vload(p, j, mask=mask) for p in a_ptrs]
        bv = [kb.vload(p, j, mask=mask) for p in b_ptrs]
        for r in range(len(a_ptrs)):
            for c in range(len(b_ptrs)):
                kb.set(accs[r][c], kb.fma(av[r], bv[c], kb.get(accs[r][c])))

    full = length // VW
    if full:
        with kb.loop(0, full * VW, VW, name="j") as j:
            step(j, None)
    if length % VW:
        step(full * VW, kb.mask(VW, length % VW))
    return [[kb.hsum(kb.get(acc)) for acc in row] for row in accs]


def row_blocks(kb: KernelBuilder, lo, hi, mr: int, tile) -> None:
    """Calls ``tile(first row, rows)`` on full blocks of `mr` rows of [lo, hi), then on
    single rows."""
    b = kb.b
    span = b.sub(hi, lo)
    full = b.sub(span, b.srem(span, kb.i64(mr)))
    with kb.loop(0, b.sdiv(full, kb.i64(mr)), name="rb") as blk:
        tile(kb.add(lo, kb.mul(blk, mr)), mr)
    with kb.loop(kb.add(lo, full), hi, name="r") as r:
        tile(r, 1)


def col_tiles(kb: KernelBuilder, n: int, nv: int, tile) -> None:
    """Calls ``tile(first column, vectors, lanes in the last vector)`` over n columns: full
    tiles of nv vectors in a loop, then the remainder."""
    width = nv * VW
    if n // width:
        with kb.loop(0, n // width * width, width, name="ct") as c0:
            tile(c0, nv, VW)
    rest = n % width
    if rest:
        tile(n // width * width, -(-rest // VW), rest % VW or VW)


def row_tiles(kb: KernelBuilder, m: int, mr: int, tile) -> None:
    """Calls ``tile(first row, rows)`` over m rows: full blocks of mr rows in a loop, then the
    remainder as one block."""
    if m // mr:
        with kb.loop(0, m // mr * mr, mr, name="ob") as r0:
            tile(r0, mr)
    if m % mr:
        tile(m // mr * mr, m % mr)


def contiguous_b(kb: KernelBuilder, ptr, lanes_last: int, nv: int):
    """A `b_load` for rows of B contiguous along the columns; masks the last partial vector."""
    mask = kb.tail_mask(lanes_last)
    return lambda v, off: kb.vload(ptr, kb.add(off, v * VW), mask=mask if v == nv - 1 else None)


def store_tile(kb: KernelBuilder, accs, c_ptrs, lanes_last: int, bias=None):
    """Stores accumulator rows (adding a per-row scalar `bias[r]` if given)."""
    nv = len(accs[0])
    for r, row in enumerate(accs):
        for v, acc in enumerate(row):
            if bias is not None:
                acc = kb.b.fadd(acc, kb.splat(bias[r]))
            kb.vstore(acc, c_ptrs[r], v * VW, mask=kb.tail_mask(lanes_last) if v == nv - 1 else None)


def conv_tile(m: int, n: int) -> tuple[int, int]:
    """(channels, vectors of pixels) of a register tile over m channels and n pixels: as many
    accumulators as fit (`ACCUMULATORS`) after discounting the channels of partial tiles, then
    the fewest loads per FMA."""
    best = None
    for nv in range(1, min(4, -(-n // VW)) + 1):
        for mr in range(1, min(m, ACCUMULATORS // nv) + 1):
            useful = m / (-(-m // mr) * mr)
            score = (mr * nv * useful, -(mr + nv) / (mr * nv))
            if best is None or score > best[0]:
                best = (score, (mr, nv))
    return best[1]


def channels_last_tile(og: int, cg: int, kw: int) -> tuple[int, int, int]:
    """(output channels MR, vectors of input channels NV, kernel columns NB) of a register tile
    of the channels-last weight gradient: MR*NV*NB accumulators (`ACCUMULATORS` at most) and the
    NV*NB vectors of xt and one broadcast in registers too, MR broadcast and NV*NB vector loads
    per pixel; the most useful multiply-adds per load (the channels of partial blocks
    discounted)."""
    best = None
    for nb in sorted({1, kw}):
        for nv in range(1, min(4, -(-cg // VW)) + 1):
            mr = min(og, ACCUMULATORS // (nv * nb))
            if mr < 1 or mr * nv * nb + nv * nb + 1 > REGISTERS:  # accumulators, xt vectors, a broadcast
                continue
            useful = og / (-(-og // mr) * mr) * cg / (-(-cg // (nv * VW)) * nv * VW)
            score = mr * nv * nb * useful / (mr + nv * nb)
            if best is None or score > best[0]:
                best = (score, (mr, nv, nb))
    return best[1]


def tile_shape(m: int, n: int) -> tuple[int, int]:
    """(MR, NV) for an outer-product tile over m rows and n columns."""
    nv = 1 if n <= VW else 2
    mr = min(m, ACCUMULATORS // nv)
    blocks = -(-m // mr)
    return -(-m // blocks), nv


def gemm_rows(kb: KernelBuilder, a, b, c, lo, hi, k: int, n: int, mr: int, nv_max: int) -> None:
    """Rows [lo, hi) of C = A[., k] @ B[k, n], all three row-major from the pointers given."""
    def tile(r0, rows):
        a_ptrs = [kb.gep(a, kb.mul(kb.add(r0, r), k)) for r in range(rows)]
        c_ptrs = [kb.gep(c, kb.mul(kb.add(r0, r), n)) for r in range(rows)]

        def cols(c0, nv, lanes):
            b_load = contiguous_b(kb, kb.gep(b, c0), lanes, nv)
            accs = outer_product(kb, a_ptrs, [(k, 1, n)], b_load, nv)
            store_tile(kb, accs, [kb.gep(p, c0) for p in c_ptrs], lanes)
        col_tiles(kb, n, nv_max, cols)

    row_blocks(kb, lo, hi, mr, tile)


@lowering("matmul")
def matmul(g: Graph, nid: int) -> Kernel:
    """C[..., M, N] = A[..., M, K] @ B[..., K, N], the batch axes broadcast. With one right
    matrix (B 2-D, or its batch axes all 1) A's leading axes are rows of one product; else each
    matrix of the batch is a product of its own, A and B read at their broadcast strides. The
    parallel range is dim 0 of C."""
    node = g.node(nid)
    a, bm = node.args
    sa, sb, out = g.type(a).shape, g.type(bm).shape, node.type.shape
    k, n = sb[-2:]
    m = out[-2]
    if all(d == 1 for d in sb[:-2]):
        rows_per = 1
        for d in out[1:-1]:
            rows_per *= d
        mr, nv_max = tile_shape(out[0] * rows_per, n)

        def emit(kb: KernelBuilder, lo, hi):
            gemm_rows(kb, kb.ptr(a), kb.ptr(bm), kb.ptr(nid), kb.mul(lo, rows_per), kb.mul(hi, rows_per),
                      k, n, mr, nv_max)
    else:
        mr, nv_max = tile_shape(m, n)
        batch = out[:-2]
        strides = [[s * m * k for s in broadcast_strides(sa[:-2], batch)],
                   [s * k * n for s in broadcast_strides(sb[:-2], batch)],
                   [s * m * n for s in contiguous_strides(batch)]]

        def emit(kb: KernelBuilder, lo, hi):
            def product(offsets):
                pa, pb, pc = (kb.gep(kb.ptr(v), o) for v, o in zip((a, bm, nid), offsets))
                gemm_rows(kb, pa, pb, pc, kb.i64(0), kb.i64(m), k, n, mr, nv_max)
            loop_nest(kb, batch, strides, lo, hi, None, product)

    numel = 1
    for d in out[:-1]:
        numel *= d
    return Kernel([a, bm, nid], out[0], numel * n * k / 24, emit, names=["matmul"])


@lowering("linear")
def linear(g: Graph, nid: int) -> Kernel:
    """y[B, O] = x[B, I] @ w[O, I].T (+ b): dot tiles along I. A 3-D x [B, T, I] is B*T rows;
    the parallel range is B."""
    node = g.node(nid)
    x, w = node.args[:2]
    bias = node.args[2] if len(node.args) == 3 else None
    xs = g.type(x).shape
    inner, rows_per = xs[-1], 1
    for d in xs[1:-1]:
        rows_per *= d
    rows = xs[0] * rows_per
    outs = g.type(w).shape[0]
    mr = nr = 4 if REGISTERS == 32 else 3  # mr*nr accumulators, mr + nr operands

    def emit(kb: KernelBuilder, lo, hi):
        def tile(r0, nrows):
            x_ptrs = [kb.gep(kb.ptr(x), kb.mul(kb.add(r0, r), inner)) for r in range(nrows)]
            y_ptrs = [kb.gep(kb.ptr(nid), kb.mul(kb.add(r0, r), outs)) for r in range(nrows)]

            def block(o0, ncols):
                w_ptrs = [kb.gep(kb.ptr(w), kb.mul(kb.add(o0, c), inner)) for c in range(ncols)]
                sums = dot_tile(kb, x_ptrs, w_ptrs, inner)
                for r in range(nrows):
                    for c in range(ncols):
                        s = sums[r][c]
                        if bias is not None:
                            s = kb.b.fadd(s, kb.load(kb.ptr(bias), kb.add(o0, c)))
                        kb.store(s, y_ptrs[r], kb.add(o0, c))

            if outs // nr:
                with kb.loop(0, outs // nr * nr, nr, name="o") as o0:
                    block(o0, nr)
            if outs % nr:
                block(outs // nr * nr, outs % nr)

        row_blocks(kb, kb.mul(lo, rows_per), kb.mul(hi, rows_per), mr, tile)

    values = [x, w, nid] + ([bias] if bias is not None else [])
    return Kernel(values, xs[0], rows * outs * inner / 24, emit, names=["linear"])

