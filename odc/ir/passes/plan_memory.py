"""Memory planning: place every intermediate value in one arena, reusing memory by liveness.

Code generation runs the kernels of `fuse.groups` in order; a stored value is defined at the
step of its kernel and live until the last step that reads it (reads through ``reshape``
views count; a value copied into a returned array at the end is live to the end). Function
arguments and returned values live in the caller's arrays; every other stored value gets a
byte offset in an arena that the executable allocates once.

1. Blocks. Each value starts in its own block. A kernel's elementwise part reads every
   operand at the index it writes, so a value it stores may take over, in place, the block of
   an operand of the same type whose block dies at this step and which the anchor does not
   read (e.g. ``relu(conv2d(x))`` writes the ReLU over the convolution's result). Such
   values share one block, whose lifetime is the union of theirs.
2. Offsets. Blocks are placed largest first, each at the lowest 64-byte aligned offset where
   it overlaps no already placed block that is live at the same time (greedy by size, as in
   TFLite's arena planner).

The arena may hold at most `MAX_ARENA_BYTES`; a plan that needs more is a `CompileError` at the
line that computes its largest value. The result is an annotation: ``arena=OFFSET`` on every value kept in the arena, and
``graph.meta["arena_bytes"]``. `storage` tells code generation where any value lives. A graph
with symbolic sizes is returned unannotated: placing values needs their sizes, so code
generation plans each specialised graph.
"""
from __future__ import annotations

from odc.errors import CompileError, Diagnostic
from odc.ir import dtypes
from odc.ir.graph import ARG_OPS, Graph
from odc.ir.passes.fuse import ALIASES, base_of, groups, inlined_const, is_elementwise

name = "plan-memory"
summary = "place intermediate values in one arena by liveness (arena=OFFSET; concrete shapes only)"

ALIGN = 64
MAX_ARENA_BYTES = 2 ** 35
"""The most memory one compiled graph may need for its intermediate values (32 GiB): VGG-11's
training step on 224x224 images at batch 256 needs 9.6 GB; LeNet-5's at batch 1,000,000, 42 GB."""


def nbytes(g: Graph, nid: int) -> int:
    t = g.type(nid)
    return t.numel * dtypes.TABLE[t.dtype].size


def output_owners(g: Graph) -> dict[int, str]:
    """Values that kernels write straight into a returned array: the first output naming a
    value computed by a kernel. Other outputs are copied at the end of the step."""
    owners: dict[int, str] = {}
    for out, v in g.outputs:
        n = g.node(v)
        if n.op not in ARG_OPS and n.op not in ALIASES and v not in owners:
            owners[v] = out
    return owners


def storage(g: Graph, nid: int):
    """Where a value lives: ("arg", name), ("out", name), ("arena", offset), ("const", value),
    or None for a value that only exists inside a fused kernel."""
    base = base_of(g, nid)
    n = g.node(base)
    if n.op in ARG_OPS:
        return "arg", n.name
    if inlined_const(g, base):
        return "const", n.attrs["value"]
    if "arena" in n.attrs:
        return "arena", n.attrs["arena"]
    owner = output_owners(g).get(base)
    return ("out", owner) if owner is not None else None


def run(g: Graph) -> Graph:
    g = g.copy()
    for nid in g.nx.nodes:
        g.node(nid).attrs.pop("arena", None)
    g.meta.pop("arena_bytes", None)
    if not all(n.type.is_concrete for n in g.nodes()):
        return g
    kernels = groups(g)
    step = {m: i for i, k in enumerate(kernels) for m in k.nodes}
    end = len(kernels)
    owners = output_owners(g)
    copied = {base_of(g, v) for out, v in g.outputs if owners.get(v) != out}

    def last_use(v: int) -> int:
        last = end if v in copied else step.get(v, 0)
        stack = [v]
        while stack:
            for u in g.users(stack.pop()):
                if g.node(u).op in ALIASES:
                    stack.append(u)
                elif u in step:
                    last = max(last, step[u])
        return last

    block: dict[int, int] = {}  # value -> block id (the first value placed in it)
    start: dict[int, int] = {}
    stop: dict[int, int] = {}
    for i, k in enumerate(kernels):
        taken = set()
        member = set(k.nodes)
        anchor_reads = {base_of(g, a) for a in g.node(k.anchor).args} if k.anchor is not None else set()
        operands = None  # of the elementwise part, once needed
        for v in k.stored:
            if v in owners:
                continue
            b = v
            if is_elementwise(g, v):
                operands = _elementwise_operands(g, k, member) if operands is None else operands
                for operand in operands:
                    src = base_of(g, operand)
                    cand = block.get(src)
                    if (cand is not None and cand not in taken and stop[cand] == i
                            and src not in anchor_reads and g.type(operand) == g.type(v)):
                        b = cand
                        taken.add(cand)
                        break
            block[v] = b
            start.setdefault(b, i)
            stop[b] = max(stop.get(b, i), last_use(v))

    size = {b: max(ALIGN, align(nbytes(g, b))) for b in set(block.values())}
    placed: list[tuple[int, int, int]] = []  # (offset, size, block)
    offset_of: dict[int, int] = {}
    for b in sorted(size, key=lambda b: (-size[b], start[b], b)):
        busy = sorted((o, s) for o, s, c in placed if start[c] <= stop[b] and start[b] <= stop[c])
        off = 0
        for o, s in busy:
            if off + size[b] <= o:
                break
            off = max(off, o + s)
        placed.append((off, size[b], b))
        offset_of[b] = off
    total = max((o + s for o, s, _ in placed), default=0)
    if total > MAX_ARENA_BYTES:
        largest = max(size, key=lambda b: (size[b], g.node(b).span is not None, -b))
        raise CompileError(Diagnostic(
            f"{g.name} would need {total / 1e9:.1f} GB of memory for its intermediate values; "
            f"odc allows at most {MAX_ARENA_BYTES / 1e9:.1f} GB (the largest, {g.type(largest)} of "
            f"{size[largest] / 1e9:.1f} GB, is computed here)", g.node(largest).span,
            "train with a smaller batch, or use fewer channels or smaller images"))
    for v, b in block.items():
        g.node(v).attrs["arena"] = offset_of[b]
    g.meta["arena_bytes"] = total
    return g


def _elementwise_operands(g: Graph, k, member: set[int]) -> list[int]:
    """Operands the kernel's elementwise part reads from memory, in a deterministic order."""
    out = []
    for m in k.epilogue:
        if not is_elementwise(g, m):
            continue
        for a in g.node(m).args:
            if (a not in member or a == k.anchor) and not inlined_const(g, a) and a not in out:
                out.append(a)
    return out


def align(n: int) -> int:
    """`n` bytes rounded up to a multiple of ALIGN (a cache line, and a 512-bit vector)."""
    return (n + ALIGN - 1) // ALIGN * ALIGN
