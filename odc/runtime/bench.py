"""Measuring a model's compiled code: compile times, throughput, memory, useful FLOPs against
the machine's peak, and a per-kernel profile.

`odc bench` and ``bench/networks.py`` use it. Everything runs with a throwaway JIT cache (never
the user's): the first compile of a graph finds it empty (a cold compile: every pass, LLVM O3
and code emission), the second finds the entry the first stored (a cache hit: the passes, a
cache lookup and loading the object code). Throughput goes through the public API
(`Model.train_step`, `Model.forward`), as a training loop calls it, on random data of the
model's input shape. A time is the median (or minimum) of single calls after a warm-up.
`threads` fixes the thread count of the compiled code (by default as `odc.codegen.num_threads`
says).

*Useful FLOPs* (`flops`) are those of the convolutions, their gradients and the matrix
products, 2 per multiply-add, as the shapes say (a kernel that multiplies padding zeros does
more); *the peak* (`peak`) is the fp32 rate of independent FMA chains in the target's widest
vectors, measured once per machine and kept in ``$ODC_CACHE_DIR/peak.json``.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import resource
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from odc.codegen import cache, compile_graph, jit
from odc.codegen import threads as thread_choice
from odc.codegen.builder import ACCUMULATORS, VW
from odc.ir.graph import Graph
from odc.ir.passes import fuse


@contextmanager
def environment(**values: str):
    """Sets environment variables for the duration (they are read at compile time)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def private_cache():
    with tempfile.TemporaryDirectory(prefix="odc-bench-") as d, environment(ODC_CACHE_DIR=d):
        yield


def random_batch(prog, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standard normal inputs (uniform uint8 pixels for a model that takes them) and uniform labels."""
    g = prog.graph
    rng = np.random.default_rng(seed)
    shape = (batch, *g.inputs()[0].type.shape[1:])
    if prog.lower("forward").inputs()[0].type.dtype == "u8":  # a recipe with normalize or augment
        x = rng.integers(0, 256, shape, dtype=np.uint8)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    return x, rng.integers(0, g.type(g.output("logits")).shape[1], batch)


def compile_seconds(prog, batch: int, threads: int | None = None) -> tuple[float, float]:
    """(cold, cached) seconds to lower and compile the training step and the forward graph.
    Call it inside `private_cache` (an empty cache)."""
    def once():
        t = time.perf_counter()
        for kind in ("train", "forward"):
            compile_graph(prog.lower(kind, prog.batch_bindings(batch)), threads=threads)
        return time.perf_counter() - t
    return once(), once()


def seconds_per_call(fn: Callable[[], object], reps: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


# -- memory -------------------------------------------------------------------------------------
def reset_peak_rss() -> None:
    """Starts a new peak of the process's resident set (Linux ≥ 4.0: ``/proc/self/clear_refs``);
    where that is refused, `peak_rss` keeps counting from the start of the process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    """Bytes: the process's peak resident set since `reset_peak_rss` (``VmHWM``), else since it
    started (``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@dataclass
class Throughput:
    train: list[float]  # seconds per training step
    forward: list[float]  # seconds per inference call
    arena_bytes: int  # the training step's arena: its planned values and a scratch area per thread
    peak_rss: int  # bytes: the process's peak resident set while the training steps were timed


def throughput(prog, batch: int, reps: int, threads: int | None = None) -> Throughput:
    """Seconds per call of the training step and of inference (the forward pass), and the
    memory of the training step."""
    compiled = []

    def executor(g):
        compiled.append(compile_graph(g, threads=threads))
        return compiled[-1]
    model = prog.compile(executor=executor)
    x, y = random_batch(prog, batch)
    model.train_step(x, y)  # compiles it: the peak below is that of running steps
    reset_peak_rss()
    train = seconds_per_call(lambda: model.train_step(x, y), reps)
    rss = peak_rss()
    return Throughput(train, seconds_per_call(lambda: model.forward(x), reps), compiled[0].memory_bytes, rss)


# -- useful FLOPs -------------------------------------------------------------------------------
def flops(g: Graph, nid: int) -> int:
    """Useful floating-point operations of node `nid` (concrete shapes): 2 per multiply-add of a
    convolution (`conv2d`, grouped and depthwise ones included), its gradients and the products
    (`linear`, `matmul`); 0 for every other op (elementwise work, pooling, norms, losses). Each
    element of a convolution's result [N, O, H', W'] sums in/groups × kh × kw products, read
    from the weight's shape [O, in/groups, kh, kw]; stride, padding and dilation are in H', W'.
    Its input gradient does as many multiply-adds as the convolution, its weight gradient too
    (each of the O × in/groups × kh × kw weights sums over the N × H' × W' outputs)."""
    n = g.node(nid)
    args = [g.type(a) for a in n.args]
    if n.op == "conv2d":  # y [N, O, H', W'] from w [O, in/groups, kh, kw]
        macs = n.type.numel * math.prod(args[1].shape[1:])
    elif n.op == "conv2d_grad_input":  # from dy [N, O, H', W'] and w
        macs = args[0].numel * math.prod(args[1].shape[1:])
    elif n.op == "conv2d_grad_weight":  # dw [O, in/groups, kh, kw] from dy [N, O, H', W'] and x
        macs = args[0].numel * math.prod(n.type.shape[1:])
    elif n.op == "linear":  # x [..., F] @ w[O, F].T
        macs = n.type.numel * args[1].shape[1]
    elif n.op == "matmul":  # [..., m, k] @ [..., k, n]
        macs = n.type.numel * args[0].shape[-1]
    else:
        return 0
    return 2 * macs


def graph_flops(g: Graph) -> int:
    """Useful FLOPs of a whole graph (one call)."""
    return sum(flops(g, n.id) for n in g.nodes())


def kernel_flops(g: Graph, names: list[str]) -> dict[str, int]:
    """Useful FLOPs of each kernel of `g`'s executable, by name (`Executable.layout.kernels`):
    kernel ``kN.…`` computes the fused group ``fuse.groups(g)[N]`` (the copies into returned
    arrays after them compute nothing)."""
    groups = fuse.groups(g)
    out = {}
    for name in names:
        n = int(name.split(".")[0][1:])
        out[name] = sum(flops(g, m) for m in groups[n].nodes) if n < len(groups) else 0
    return out


# -- the machine's peak -------------------------------------------------------------------------
PEAK_IR = """
define void @peak(ptr %io, i64 %n) {{
entry:
  %x = load <{vw} x float>, ptr %io, align 4
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
{phis}
{fmas}
  %i1 = add i64 %i, 1
  %more = icmp ult i64 %i1, %n
  br i1 %more, label %loop, label %exit
exit:
{sums}
  store <{vw} x float> %s{last}, ptr %io, align 4
  ret void
}}
declare <{vw} x float> @llvm.fma.v{vw}f32(<{vw} x float>, <{vw} x float>, <{vw} x float>)
"""


# as many FMA chains as a register tile has accumulators: enough independent FMAs to cover the
# FMA latency on every FMA unit, with registers to spare
CHAINS = ACCUMULATORS


def fma_loop() -> tuple[Callable[[int, int], None], object]:
    """(fn, code): ``fn(address, n)`` runs `CHAINS` independent FMA chains ``a = a * x + x`` in
    the target's widest vectors, each starting from and using the vector ``x`` read at
    `address`, for `n` iterations, then stores ``x`` plus the sum of the chains there. `fn`
    releases the GIL; keep `code` alive while calling it."""
    v = f"<{VW} x float>"
    text = PEAK_IR.format(
        vw=VW, last=CHAINS - 1,
        phis="\n".join(f"  %a{c} = phi {v} [%x, %entry], [%b{c}, %loop]" for c in range(CHAINS)),
        fmas="\n".join(f"  %b{c} = call {v} @llvm.fma.v{VW}f32({v} %a{c}, {v} %x, {v} %x)"
                       for c in range(CHAINS)),
        sums="\n".join(f"  %s{c} = fadd {v} %s{c - 1}, %b{c}" if c else f"  %s0 = fadd {v} %b0, %x"
                       for c in range(CHAINS)))
    code = jit.Loaded(jit.emit_object(jit.optimize(text)))
    return ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(code.address("peak")), code


def measure_peak(threads: int, n: int = 20_000_000, tries: int = 3) -> tuple[float, float]:
    """(one thread, `threads` threads at once) fp32 FLOP/s of `fma_loop`, counting an FMA as 2
    operations per lane; the best of `tries` runs of `n` iterations per thread."""
    fn, code = fma_loop()
    bufs = [np.full(VW, 0.999, np.float32) for _ in range(threads)]
    fn(bufs[0].ctypes.data, 1000)

    def run(k):
        workers = [threading.Thread(target=fn, args=(bufs[i].ctypes.data, n)) for i in range(k)]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return k * n * CHAINS * VW * 2 / (time.perf_counter() - t)
    return max(run(1) for _ in range(tries)), max(run(threads) for _ in range(tries))


@dataclass
class Peak:
    """The machine's measured fp32 peak: FLOP/s on one thread and on all `cpus` at once."""
    one: float
    all: float
    cpus: int
    measured: str  # when (ISO date and time, local)

    def at(self, threads: int) -> float:
        """FLOP/s on `threads` threads: as many one-thread peaks, at most the all-CPU peak."""
        return self.one if threads <= 1 else min(threads * self.one, self.all)


def peak_file() -> Path:
    return cache.cache_dir().parent / "peak.json"


def machine_key() -> str:
    """What a peak is kept under: the target CPU's name, the CPUs available and a hash of the
    target's features."""
    cpu, features = jit.target()
    return f"{cpu}, {thread_choice.available()} CPUs, features {hashlib.sha256(features.encode()).hexdigest()[:16]}"


def peak(measure: bool = False) -> Peak:
    """The machine's peak, as `peak_file` holds it under `machine_key`; measured (`measure_peak`
    on all available CPUs) and stored when it holds none, when it cannot be read, or when
    `measure` asks for a new measurement, which keeps the higher of the old and the new value
    of each (other processes on the cores only ever lower a measurement). The file is replaced
    atomically."""
    path, key = peak_file(), machine_key()
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict):
            raise ValueError(path)
    except (OSError, ValueError):
        known = {}
    try:
        e = known[key]
        entry = Peak(float(e["one"]), float(e["all"]), int(e["cpus"]), str(e["measured"]))
    except (KeyError, TypeError, ValueError):
        entry = None
    if entry is not None and not measure:
        return entry
    cpus = thread_choice.available()
    one, every = measure_peak(cpus)
    if entry is not None:
        one, every = max(one, entry.one), max(every, entry.all)
    every = max(every, one)  # all the CPUs do at least what one does
    entry = Peak(one, every, cpus, time.strftime("%Y-%m-%dT%H:%M:%S"))
    known[key] = entry.__dict__
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".peak-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(known, f, indent=1)
    os.replace(tmp, path)
    return entry


# -- kernel profile -----------------------------------------------------------------------------
INPUT_OPS = ("from_u8", "warp", "per_channel")  # the image's conversion, augmentation, normalisation


@dataclass
class Profile:
    """One graph's kernels timed: median seconds per call of each kernel, most expensive first,
    with its useful FLOPs per call; of the whole call; and of drawing the random inputs of a call
    (`Model.step_inputs`), which the whole call does not include."""
    total: float
    drawing: float
    kernels: dict[str, tuple[float, int]]  # name: (seconds, FLOPs)

    @staticmethod
    def op(name: str) -> str:
        """The first op of a kernel (``k12.conv2d.relu`` → ``conv2d``)."""
        return name.split(".")[1]

    def input_seconds(self) -> float:
        """Seconds spent on the image input: kernels that start from an op of INPUT_OPS (with
        what is fused after it: augmentation, normalize), plus drawing the step's random
        inputs (dropout masks, augmentation parameters)."""
        return self.drawing + sum(sec for name, (sec, _) in self.kernels.items() if self.op(name) in INPUT_OPS)

    def by_op(self) -> dict[str, tuple[int, float, int]]:
        """Kernels grouped by their first op: (kernels, seconds, FLOPs), most expensive first."""
        out: dict[str, tuple[int, float, int]] = {}
        for name, (sec, fl) in self.kernels.items():
            count, total, f = out.get(self.op(name), (0, 0.0, 0))
            out[self.op(name)] = (count + 1, total + sec, f + fl)
        return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))


def kernel_profile(prog, batch: int, reps: int, kind: str = "train", threads: int | None = None) -> Profile:
    """The kernels of the `kind` graph, compiled with timers (``ODC_PROFILE=1``) and called
    `reps` times on their own."""
    g = prog.lower(kind, prog.batch_bindings(batch))
    with private_cache(), environment(ODC_PROFILE="1"):
        exe = compile_graph(g, threads=threads)
    model = prog.compile(executor=compile_graph)  # initial parameters and state
    x, y = random_batch(prog, batch)
    feeds = {g.inputs()[0].name: x, "label": y.astype(np.int32), **model.params, **model.state,
             **model.step_inputs(g, {})}
    if kind == "train":  # as Model.train_step does: the next step starts from the new values
        def call():
            out = exe(feeds)
            feeds.update({k: out[f"new.{k}"] for k in (*model.params, *model.state)})
    else:
        def call():
            exe(feeds)
    for _ in range(3):
        call()
    samples, last = [], exe.profile()
    total = []
    for _ in range(reps):
        t = time.perf_counter()
        call()
        total.append(time.perf_counter() - t)
        now = exe.profile()
        samples.append({k: now[k] - last[k] for k in now})
        last = now
    med = {k: statistics.median(s[k] for s in samples) for k in last}
    drawing = []
    for _ in range(reps):
        t = time.perf_counter()
        model.step_inputs(g, {})
        drawing.append(time.perf_counter() - t)
    fl = kernel_flops(g, exe.layout.kernels)
    return Profile(statistics.median(total), statistics.median(drawing),
                   {k: (sec, fl[k]) for k, sec in sorted(med.items(), key=lambda kv: -kv[1])})
