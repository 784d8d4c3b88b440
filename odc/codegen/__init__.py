"""Code generation: a graph with concrete shapes becomes one native function.

    exe = compile_graph(graph)              # fuse, plan memory, LLVM IR, O3, machine code
    outs = exe(image=x, label=y, **params)  # {output name: np.ndarray}, one native call
    outs = exe({"image": x, ...})           # the same with a dict (an `odc.Program` executor)

Arguments bind by name (``exe.arg_names``); other names are ignored. Arrays of another dtype
or layout are converted; a wrong shape is an `OdcError`. Every call returns fresh output
arrays. The intermediate values live in one arena allocated when the
executable is created. Threads: ``compile_graph(g, threads=N)`` fixes their number, else
``$ODC_NUM_THREADS``, read when the executable is created; by default a call uses all the CPUs
this process may use, or one when that is faster because other processes keep the cores busy
(see `odc.codegen.threads`). An `odc.Program` takes a fixed count as its executor
``functools.partial(compile_graph, threads=N)``. `llvm_ir` and `assembly` show the generated code
of a graph (what ``--emit llvm|asm`` prints); they do not depend on the cache.

``ODC_PROFILE=1`` (read at each compile; part of the cache key) compiles timers around every
kernel into the entry point; ``exe.profile()`` then gives each kernel's total seconds over the
calls so far. ``$ODC_CPU`` chooses another target CPU (see `odc.codegen.jit`).
"""
from __future__ import annotations

import ctypes
import os
import threading
import time

import numpy as np

from odc.codegen import cache, jit, lower
from odc.codegen import threads as thread_choice
from odc.errors import OdcError
from odc.ir.dtypes import NP_DTYPES
from odc.ir.graph import Graph
from odc.ir.printer import print_graph

STATUS = {1: "a label is out of range for the number of classes"}


def num_threads(threads: int | None = None) -> int:
    """The most threads a call uses: `threads` when given, else ``$ODC_NUM_THREADS``, else what
    the process may use."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise OdcError(f"the thread count must be an integer >= 1, got {threads!r}")
        return threads
    return thread_choice.fixed() or thread_choice.available()


def profiling() -> bool:
    return os.environ.get("ODC_PROFILE", "") in ("1", "true", "yes")


def _options() -> dict:
    return {"threads": jit.openmp_available(), "parallel_cost": lower.PARALLEL_COST, "profile": profiling()}


def _module(g: Graph):
    tm = jit.target_machine()
    return lower.build_module(g, tm.triple, str(tm.target_data), threads=jit.openmp_available(),
                              profile=profiling())


def compile_graph(graph: Graph, threads: int | None = None) -> "Executable":
    """`graph`'s executable; `threads` fixes how many threads each call uses (see `num_threads`)."""
    if threads is not None:
        num_threads(threads)  # a bad count is refused before the work of compiling
    g = lower.prepare(graph)
    k = cache.key(print_graph(g), _options(), jit.llvm_version(), *jit.target())
    hit = cache.load(k)
    if hit is not None:
        obj, meta = hit
        layout = lower.Layout(**{f: meta[f] for f in ("arena_bytes", "scratch_bytes", "kernels")},
                              args=[(n, d, tuple(s)) for n, d, s in meta["args"]],
                              outputs=[(n, d, tuple(s)) for n, d, s in meta["outputs"]])
    else:
        module, layout = _module(g)
        obj = jit.emit_object(jit.optimize(str(module)))
        cache.store(k, obj, {"args": layout.args, "outputs": layout.outputs, "kernels": layout.kernels,
                             "arena_bytes": layout.arena_bytes, "scratch_bytes": layout.scratch_bytes})
    return Executable(obj, layout, threads)


def llvm_ir(graph: Graph, optimized: bool = True) -> str:
    """The LLVM IR of a graph's step function, after LLVM's O3 pipeline unless told otherwise."""
    text = str(_module(lower.prepare(graph))[0])
    return str(jit.optimize(text)) if optimized else text


def assembly(graph: Graph) -> str:
    """The host assembly of a graph's step function."""
    return jit.emit_assembly(jit.optimize(str(_module(lower.prepare(graph))[0])))


class Executable:
    """Compiled code for one graph, with its arena; calling it runs the whole graph. `threads`
    fixes the thread count of every call; by default ``$ODC_NUM_THREADS`` does, else it is chosen
    call by call (`odc.codegen.threads.Choice`)."""

    def __init__(self, obj: bytes, layout: lower.Layout, threads: int | None = None):
        self._code = jit.Loaded(obj)
        self._step = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32)(
            self._code.address(lower.ENTRY))
        self.layout = layout
        self.arg_names = [a[0] for a in layout.args]
        self.output_names = [o[0] for o in layout.outputs]
        self.num_threads = num_threads(threads)
        self.threads = thread_choice.Choice(self.num_threads,
                                            adaptive=threads is None and thread_choice.fixed() is None)
        self._args = [(n, np.dtype(NP_DTYPES[d]), tuple(s)) for n, d, s in layout.args]
        self._last = [(_UNSET, 0)] * len(self._args)  # (array, address) of the previous call
        self._outs, offset = [], 0  # (name, dtype, shape, byte offset in one allocation)
        for name, d, shape in layout.outputs:
            dt = np.dtype(NP_DTYPES[d])
            self._outs.append((name, dt, tuple(shape), offset))
            offset += -(-int(np.prod(shape, dtype=np.int64)) * dt.itemsize // 64) * 64
        self._out_bytes = offset
        # the arena: the planned values, then a scratch area per thread
        self.memory_bytes = layout.arena_bytes + layout.scratch_bytes * self.num_threads
        self._arena = _aligned(self.memory_bytes)
        self._status = np.zeros(1, np.int32)
        self._bufs = (ctypes.c_void_p * (2 + len(layout.args) + len(layout.outputs)))()
        self._bufs[0] = self._arena.ctypes.data
        self._bufs[1] = self._status.ctypes.data
        self._lock = threading.Lock()

    def __call__(self, feeds: dict | None = None, /, **kwargs) -> dict[str, np.ndarray]:
        values = {**feeds, **kwargs} if feeds and kwargs else feeds or kwargs
        out = _aligned(self._out_bytes)
        base = out.ctypes.data
        results = {name: np.ndarray(shape, dt, out, off) for name, dt, shape, off in self._outs}
        with self._lock:
            bufs = self._bufs
            for i, (name, dt, shape) in enumerate(self._args):
                a = values.get(name)
                last, addr = self._last[i]
                if a is not last:
                    if a is None:
                        missing = [n for n in self.arg_names if n not in values]
                        raise OdcError(f"no value given for {', '.join(missing)}; "
                                       f"the arguments are {', '.join(self.arg_names)}")
                    c = _checked(name, a, dt, shape)
                    addr = c.ctypes.data
                    self._last[i] = (a if c is a else _UNSET, addr)
                    bufs[2 + i] = addr
                    if c is not a:
                        values = {**values, name: c}  # keeps the converted copy alive
            for j, (_, _, _, off) in enumerate(self._outs):
                bufs[2 + len(self._args) + j] = base + off
            self._status[0] = 0
            n = self.threads.next()
            start = time.perf_counter()
            status = self._step(bufs, n)
            self.threads.took(time.perf_counter() - start)
        if status:
            raise OdcError(STATUS.get(status, f"the compiled code failed with status {status}"))
        return results

    def profile(self) -> dict[str, float]:
        """Seconds spent in each kernel over all calls so far (compiled with ``ODC_PROFILE=1``)."""
        if not self.layout.kernels:
            raise OdcError("this code was compiled without timers; set ODC_PROFILE=1 before compiling")
        ns = np.ctypeslib.as_array((ctypes.c_int64 * len(self.layout.kernels)).from_address(
            self._code.address(lower.PROFILE)))
        return {name: t / 1e9 for name, t in zip(self.layout.kernels, ns.tolist())}


_UNSET = object()


def _aligned(nbytes: int) -> np.ndarray:
    """An uninitialised byte array whose data starts on a 64-byte boundary."""
    raw = np.empty(nbytes + 64, np.uint8)
    skip = -raw.ctypes.data % 64
    return raw[skip:skip + nbytes]


def _checked(name: str, value, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """`value` as a C-contiguous array of `dtype` (the array itself when it already is one)."""
    if (type(value) is np.ndarray and value.dtype == dtype and value.shape == shape
            and value.flags.c_contiguous):
        return value
    a = np.asarray(value)
    if a.shape != shape:
        raise OdcError(f"argument {name!r} should be of shape [{', '.join(map(str, shape))}], "
                       f"got an array of shape [{', '.join(map(str, a.shape))}]")
    if a.dtype != dtype and not np.can_cast(a.dtype, dtype, "same_kind"):
        raise OdcError(f"argument {name!r} should be {dtype}, got an array of {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)
