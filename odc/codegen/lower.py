"""Graph → LLVM module: one kernel function per fused group, one entry point per graph.

The entry point is ``i32 @odc_step(ptr %bufs, i32 %nthreads)``. ``bufs`` holds the base
pointers ``[arena, status, arguments..., outputs...]`` (arguments in `Graph.args_of` order,
outputs in `Graph.outputs` order); it returns 0, or a nonzero status set by a kernel that
found bad input (a label out of range).

Every kernel is ``void @kN(ptr noalias %buf..., i64 %lo, i64 %hi, ptr %scratch)``: one
pointer per distinct memory region it touches (so ``noalias`` holds: values sharing memory
in place share the parameter), and it computes iterations ``[lo, hi)`` of its outermost,
parallel loop. The entry point calls it once over the whole range, or, when its estimated
work is above `PARALLEL_COST` and more than one thread is asked for, it starts libgomp
threads with ``GOMP_parallel`` on an outlined ``@kN.ompEXTENT(ptr %ctx)`` that splits the range
evenly by thread number (how clang lowers ``#pragma omp parallel``). Each thread gets its
own slice of the scratch area at the end of the arena. Kernels whose code is the same (layers
of the same shape, as in a ResNet's stages) share one function, so LLVM optimises and emits
each distinct kernel once.

With ``profile=True`` the entry point reads ``clock_gettime(CLOCK_MONOTONIC)`` before and
after each kernel (all its threads included) and adds the nanoseconds to the kernel's slot of
the global ``i64 odc_profile[kernels]``, in `Layout.kernels` order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from llvmlite import ir

from odc.codegen import kernels
from odc.codegen.builder import I32, I64, PTR, VOID, KernelBuilder
from odc.codegen.kernel import Kernel
from odc.errors import OdcError
from odc.ir.graph import Graph
from odc.ir.passes import fuse, plan_memory

PARALLEL_COST = 40_000  # estimated cycles below which a kernel stays on the calling thread
ENTRY = "odc_step"
PROFILE = "odc_profile"


@dataclass
class Layout:
    """What the executable needs to know to call the entry point."""
    args: list[tuple[str, str, tuple[int, ...]]]  # (name, dtype, shape)
    outputs: list[tuple[str, str, tuple[int, ...]]]
    arena_bytes: int  # planned values; scratch follows
    scratch_bytes: int  # per thread
    kernels: list[str] = field(default_factory=list)  # names of the timed kernels (with profile=True)


def prepare(g: Graph) -> Graph:
    """`g`, checked to be ready: concrete shapes, fused and planned by the pipeline."""
    for n in g.nodes():
        if not n.type.is_concrete:
            raise OdcError(f"cannot compile @{g.name}: %{n.name or n.id} has the symbolic type {n.type}; "
                           "bind every size symbol first (shape-infer{N=...})")
    if "arena_bytes" not in g.meta:
        raise OdcError(f"cannot compile @{g.name}: its memory is not planned; run it through a pipeline "
                       "(odc.ir.passes.PIPELINES), or at least dce, fuse and plan-memory")
    return g


def build_module(g: Graph, triple: str = "", data_layout: str = "",
                 threads: bool = True, profile: bool = False) -> tuple[ir.Module, Layout]:
    module = ir.Module(name=g.name)
    module.triple = triple
    module.data_layout = data_layout
    args = g.args_of()
    ext = {("arg", a.name): 2 + i for i, a in enumerate(args)}
    ext.update({("out", name): 2 + len(args) + i for i, (name, _) in enumerate(g.outputs)})

    lowered = [kernels.lower_group(g, grp) for grp in fuse.groups(g)]
    lowered += kernels.output_copies(g)
    scratch = max([plan_memory.align(k.scratch) for k in lowered], default=0)
    arena_bytes = plan_memory.align(g.meta["arena_bytes"])

    step = ir.Function(module, ir.FunctionType(I32, [PTR, I32]), ENTRY)
    sb = KernelBuilder(step)
    bufs, nthreads = step.args
    nthreads.name, bufs.name = "nthreads", "bufs"
    base = {}

    def base_ptr(i):
        if i not in base:
            base[i] = sb.b.load(sb.b.gep(bufs, [ir.Constant(I64, i)], source_etype=PTR), typ=PTR)
        return base[i]

    def region(key):
        if key[0] == "arena":
            return sb.gep(base_ptr(0), key[1], ir.IntType(8))
        return base_ptr(ext[key])

    scratch_base = sb.gep(base_ptr(0), arena_bytes, ir.IntType(8))
    ctx = sb.var(PTR, name="ctx", count=2 + max([len(k.values) for k in lowered], default=0))
    gomp = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR, I32, I32]), "GOMP_parallel")
    names = []
    if profile:
        timers = ir.GlobalVariable(module, ir.ArrayType(I64, len(lowered)), PROFILE)
        timers.initializer = ir.Constant(timers.value_type, None)
        timespec = sb.var(I64, name="timespec", count=2)

        def now():  # nanoseconds
            sb.call("clock_gettime", I32, [ir.Constant(I32, 1), timespec])  # CLOCK_MONOTONIC
            sec, nsec = sb.get(timespec), sb.load(timespec, 1, I64)
            return sb.b.add(sb.b.mul(sec, ir.Constant(I64, 1_000_000_000)), nsec)
    bodies: dict[str, ir.Function] = {}  # a kernel's code (its name left out) -> its function
    outlined: dict[tuple[str, int], ir.Function] = {}
    for n, k in enumerate(lowered):
        keys = []
        for v in k.values:
            key = _key(g, v)
            if key is not None and key[0] != "const" and key not in keys:
                keys.append(key)
        if k.status:
            keys.append(("status",))
        names.append(f"k{n}." + ".".join(k.names))
        fn = _kernel_function(module, g, k, keys, names[-1])
        body = str(fn).replace(f'@"{fn.name}"', "@").replace(f"@{fn.name}(", "@(")
        if body in bodies:  # the same code as an earlier kernel (layers of the same shape): share it
            del module.globals[fn.name]
            fn = bodies[body]
        bodies.setdefault(body, fn)
        ptrs = [base_ptr(1) if key == ("status",) else region(key) for key in keys]
        lo, hi = ir.Constant(I64, 0), ir.Constant(I64, k.extent)
        start = now() if profile else None
        if not threads or k.cost < PARALLEL_COST or k.extent < 2:
            sb.b.call(fn, ptrs + [lo, hi, scratch_base])
        else:
            if (fn.name, k.extent) not in outlined:
                outlined[fn.name, k.extent] = _outlined(module, fn, len(ptrs), k.extent, scratch)
            omp = outlined[fn.name, k.extent]
            nt = sb.b.select(sb.b.icmp_signed("<", nthreads, ir.Constant(I32, k.extent)),
                             nthreads, ir.Constant(I32, k.extent))
            with sb.b.if_else(sb.b.icmp_signed(">", nt, ir.Constant(I32, 1))) as (par, seq):
                with par:
                    for i, p in enumerate(ptrs + [scratch_base]):
                        sb.b.store(p, sb.gep(ctx, i, PTR))
                    sb.b.call(gomp, [omp, ctx, nt, ir.Constant(I32, 0)])
                with seq:
                    sb.b.call(fn, ptrs + [lo, hi, scratch_base])
        if profile:
            slot = sb.b.gep(timers, [ir.Constant(I64, 0), ir.Constant(I64, n)])  # an i64*
            sb.b.store(sb.b.add(sb.b.load(slot, typ=I64), sb.b.sub(now(), start)), slot)
    sb.b.ret(sb.b.load(base_ptr(1), typ=I32))

    layout = Layout(
        [(a.name, a.type.dtype, a.type.shape) for a in args],
        [(name, g.type(v).dtype, g.type(v).shape) for name, v in g.outputs],
        arena_bytes, scratch, names if profile else [])
    return module, layout


def _kernel_function(module, g, k: Kernel, keys, name) -> ir.Function:
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * len(keys) + [I64, I64, PTR]), name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")  # keeps the entry point small and each kernel's noalias
    for i in range(len(keys)):
        fn.args[i].add_attribute("noalias")
    kb = KernelBuilder(fn)
    for v in k.values:
        key = _key(g, v)
        if key is None:
            continue
        if key[0] == "const":
            kb.consts[v] = key[1]
        else:
            kb.pointers[v] = fn.args[keys.index(key)]
    if k.status:
        kb.status = fn.args[keys.index(("status",))]
    kb.scratch = fn.args[len(keys) + 2]
    k.emit(kb, fn.args[len(keys)], fn.args[len(keys) + 1])
    kb.b.ret_void()
    return fn


def _key(g: Graph, v):
    """The memory region of a value id, or a region named directly (an ("out", name) key)."""
    return v if isinstance(v, tuple) else plan_memory.storage(g, v)


def _outlined(module, fn: ir.Function, nptrs: int, extent: int, scratch: int) -> ir.Function:
    """``void fn.ompEXTENT(ptr ctx)``: this thread's share of [0, extent) and of the scratch area."""
    omp = ir.Function(module, ir.FunctionType(VOID, [PTR]), f"{fn.name}.omp{extent}")
    omp.linkage = "internal"
    kb = KernelBuilder(omp)
    b = kb.b
    tid = b.sext(kb.call("omp_get_thread_num", I32, []), I64)
    nt = b.sext(kb.call("omp_get_num_threads", I32, []), I64)
    lo = b.sdiv(b.mul(tid, ir.Constant(I64, extent)), nt)
    hi = b.sdiv(b.mul(b.add(tid, ir.Constant(I64, 1)), ir.Constant(I64, extent)), nt)
    ctx = omp.args[0]
    ptrs = [b.load(b.gep(ctx, [ir.Constant(I64, i)], source_etype=PTR), typ=PTR) for i in range(nptrs + 1)]
    scratch_ptr = b.gep(ptrs[-1], [b.mul(tid, ir.Constant(I64, scratch))], source_etype=ir.IntType(8))
    with b.if_then(b.icmp_signed("<", lo, hi)):
        b.call(fn, ptrs[:-1] + [lo, hi, scratch_ptr])
    b.ret_void()
    return omp
