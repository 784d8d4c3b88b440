"""Measuring a model's compiled code: compile times, throughput and a per-kernel profile.

`odc bench` and ``bench/lenet5.py`` use it. Everything runs with a throwaway JIT cache (never
the user's): the first compile of a graph finds it empty (a cold compile: every pass, LLVM O3
and code emission), the second finds the entry the first stored (a cache hit: the passes, a
cache lookup and loading the object code). Throughput goes through the public API
(`Model.train_step`, `Model.forward`), as a training loop calls it, on random data of the
model's input shape. A time is the median (or minimum) of single calls after a warm-up.
`threads` fixes the thread count of the compiled code (by default as `odc.codegen.num_threads`
says).
"""
from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np

from odc.codegen import compile_graph


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


def throughput(prog, batch: int, reps: int, threads: int | None = None) -> dict[str, list[float]]:
    """Seconds per call of the training step and of inference (the forward pass)."""
    model = prog.compile(executor=functools.partial(compile_graph, threads=threads))
    x, y = random_batch(prog, batch)
    return {"train": seconds_per_call(lambda: model.train_step(x, y), reps),
            "forward": seconds_per_call(lambda: model.forward(x), reps)}


def kernel_profile(prog, batch: int, reps: int, kind: str = "train",
                   threads: int | None = None) -> dict[str, float]:
    """Median seconds per call of each kernel of the `kind` graph, compiled with timers
    (``ODC_PROFILE=1``) and called `reps` times on its own, most expensive first; the
    key "total" holds the median time of the whole call, "drawing" that of drawing the random
    inputs of a call (`Model.step_inputs`), which the whole call does not include."""
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
    return {"total": statistics.median(total), "drawing": statistics.median(drawing),
            **dict(sorted(med.items(), key=lambda kv: -kv[1]))}


INPUT_OPS = ("from_u8", "warp", "per_channel")  # the image's conversion, augmentation, normalisation


def input_share(profile: dict[str, float]) -> float:
    """Seconds of a kernel profile spent on the image input: kernels that start from an op of
    INPUT_OPS (with what is fused after it: augmentation, normalize), plus drawing the step's
    random inputs (dropout masks, augmentation parameters)."""
    return profile["drawing"] + sum(sec for name, sec in profile.items()
                                    if name.split(".")[1:2] and name.split(".")[1] in INPUT_OPS)
