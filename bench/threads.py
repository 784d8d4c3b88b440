"""Threads on an idle and on a busy machine: odc's default thread count against fixed counts.

    python bench/threads.py [--model models/lenet5.od] [--batch 32] [--seconds 20] [--rounds 3]
                            [--load none odc] [--load-threads default]

For each load: none (nothing else started), or odc (another `odc compile-and-train` of the
same model on the embedded EMNIST sample, with the default thread count unless
`--load-threads` fixes it, started first and stopped at the end). In each round, each setting —
``ODC_NUM_THREADS=1``, ``ODC_NUM_THREADS=<CPUs>`` and the default (unset) — compiles the model
(from the JIT cache after the first) and calls `Model.train_step` on random data for
`--seconds`: a fresh executable each time, so the default also pays for finding its count.
The figure is the mean time per step (total time over steps: what a training run waits), the
median over rounds; the settings take turns so that a change of load hits them alike. The goal:
under load the default is never slower than 1.25 times one thread; idle it is as fast as the
fastest fixed count.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def steps(model, x, y, seconds: float) -> tuple[float, float, int]:
    """(mean, median) seconds per training step over `seconds`, and the number of steps."""
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        model.train_step(x, y)
        times.append(time.perf_counter() - t)
    return sum(times) / len(times), statistics.median(times), len(times)


def start_load(model: str, threads: str, folder: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("ODC_NUM_THREADS", None)
    if threads != "default":
        env["ODC_NUM_THREADS"] = threads
    cmd = [sys.executable, "-m", "odc.cli", "compile-and-train", model, "--epochs", "100000",
           "--out", folder]  # no --data: the embedded sample
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=folder)
    time.sleep(5)  # past its compile and data loading
    if proc.poll() is not None:
        raise SystemExit(f"the load process ended with exit code {proc.returncode}: {' '.join(cmd)}")
    return proc


def compiled(prog, threads: str | None, x, y):
    """The model, its training step compiled (or loaded from the cache) with ODC_NUM_THREADS
    set to `threads` (None: unset), which the executable reads when it is made."""
    saved = os.environ.pop("ODC_NUM_THREADS", None)
    if threads is not None:
        os.environ["ODC_NUM_THREADS"] = threads
    try:
        model = prog.compile()
        model.train_step(x, y)
    finally:
        os.environ.pop("ODC_NUM_THREADS", None)
        if saved is not None:
            os.environ["ODC_NUM_THREADS"] = saved
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "lenet5.od"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load", nargs="+", choices=["none", "odc"], default=["none", "odc"])
    ap.add_argument("--load-threads", default="default",
                    help="ODC_NUM_THREADS of the load process (default: unset)")
    args = ap.parse_args(argv)

    import odc
    from odc.codegen import jit, threads
    from odc.runtime import bench

    cpus = threads.available()
    prog = odc.load(args.model)
    x, y = bench.random_batch(prog, args.batch)
    settings = {"1 thread": "1", f"{cpus} threads": str(cpus), "default": None}
    print(f"{prog.name}, batch {args.batch}, train step; {os.cpu_count()} CPUs ({jit.target()[0]}), "
          f"{cpus} available; {args.rounds} rounds of {args.seconds:g} s per setting")
    results = {}
    for load in args.load:
        with tempfile.TemporaryDirectory(prefix="odc-load-") as folder:
            proc = start_load(args.model, args.load_threads, folder) if load == "odc" else None
            try:
                per = {name: [] for name in settings}
                for _ in range(args.rounds):
                    for name, value in settings.items():
                        model = compiled(prog, value, x, y)
                        per[name].append(steps(model, x, y, args.seconds))
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait()
        results[load] = per
        label = "idle (no load started)" if load == "none" else \
            f"beside odc compile-and-train ({'default threads' if args.load_threads == 'default' else args.load_threads + ' threads'})"
        print(f"\n{label}:")
        print(f"  {'setting':<12} {'mean ms/step':>12} {'median ms':>10} {'steps':>7}  {'vs 1 thread':>11}")
        one = statistics.median(m for m, _, _ in per["1 thread"])
        for name, runs in per.items():
            mean = statistics.median(m for m, _, _ in runs)
            med = statistics.median(d for _, d, _ in runs)
            n = sum(k for _, _, k in runs)
            print(f"  {name:<12} {mean * 1e3:12.3f} {med * 1e3:10.3f} {n:7,}  {mean / one:10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
