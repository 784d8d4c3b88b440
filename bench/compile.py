"""Compile times of the model zoo: each model's training step and forward pass, cold (an empty
JIT cache: every pass, LLVM and code emission) and cached (a cache hit), with the CPU seconds
of the cold compile (wall time suffers when other processes share the cores).

    python bench/compile.py [--batch 128] [models/resnet20.od ...]

The goals (issue "Performance v2"), on the 2-core machine: LeNet-5 cold in at most 2 s,
ResNet-20 cold in at most 10 s, any model cached in at most 0.2 s. `odc bench` and
bench/networks.py time the training step and forward graph compiled together.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import odc  # noqa: E402
from odc.codegen import compile_graph  # noqa: E402
from odc.runtime.bench import private_cache  # noqa: E402

ZOO = ["lenet5", "resnet20", "vgg11", "mobilenet", "googlenet", "alexnet", "mixer"]


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=[str(ROOT / "models" / f"{m}.od") for m in ZOO])
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    print(f"batch {a.batch}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    print(f"{'model':<12} {'graph':<8} {'cold wall':>10} {'cold CPU':>9} {'cached':>8}")
    for path in a.models:
        prog = odc.load(path)
        for kind in ("train", "forward"):
            with private_cache():
                def build():
                    compile_graph(prog.lower(kind, prog.batch_bindings(a.batch)))
                (wall, cpu), (cached, _) = timed(build), timed(build)
            print(f"{prog.name:<12} {kind:<8} {wall:>8.2f} s {cpu:>7.2f} s {cached:>6.2f} s")


if __name__ == "__main__":
    main()
