"""LeNet-5 on EMNIST shapes (1x28x28 inputs, 47 classes): odc's compiled code against PyTorch
eager on the CPU, both with the same number of threads.

    python bench/lenet5.py [--batch 32 256] [--threads 2] [--reps 200]

For each batch size: the forward pass (logits) and one training step (forward, cross-entropy,
backward, SGD with momentum 0.9). odc is timed through the public API (`Model.forward`,
`Model.train_step`) and as the bare compiled step (`Executable` call, arrays prepared
once); PyTorch as the usual eager loop. Prints median times and samples per second side by
side, and odc's cold compile times (cache bypassed).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def median_time(fn, reps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def torch_lenet(torch, classes: int):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes))


def bench_torch(batch: int, threads: int, reps: int, x, y):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_lenet(torch, 47)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def forward():
        with torch.no_grad():
            net(tx)

    def step():
        opt.zero_grad()
        loss = loss_fn(net(tx), ty)
        loss.backward()
        opt.step()

    return median_time(forward, reps), median_time(step, reps)


def bench_odc(batch: int, reps: int, x, y):
    import odc
    from odc.codegen import compile_graph
    from odc.ir.passes import shape_infer

    prog = odc.load(ROOT / "models" / "lenet5.od")
    model = prog.compile(executor=compile_graph)
    compile_s = {}
    exes = {}
    for kind in ("forward", "train"):
        g = shape_infer.run(prog.lower(kind), {"N": batch})
        os.environ["ODC_ALWAYS_COMPILE"] = "1"
        t = time.perf_counter()
        exes[kind] = compile_graph(g)
        compile_s[kind] = time.perf_counter() - t
        del os.environ["ODC_ALWAYS_COMPILE"]
    feeds = {"image": x, "label": y.astype(np.int32), **model.params, **model.state}
    fwd_feeds = {"image": x, **model.params}
    raw_fwd = median_time(lambda: exes["forward"](fwd_feeds), reps)
    raw_step = median_time(lambda: exes["train"](feeds), reps)
    api_fwd = median_time(lambda: model.forward(x), reps)
    api_step = median_time(lambda: model.train_step(x, y), reps)
    return compile_s, raw_fwd, raw_step, api_fwd, api_step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args(argv)
    os.environ["ODC_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(ROOT))
    rng = np.random.default_rng(0)
    rows = []
    for batch in args.batch:
        reps = max(20, args.reps * 32 // batch)
        x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 47, batch)
        compile_s, raw_fwd, raw_step, api_fwd, api_step = bench_odc(batch, reps, x, y)
        t_fwd, t_step = bench_torch(batch, args.threads, reps, x, y)
        print(f"batch {batch}: odc cold compile: forward {compile_s['forward']:.2f} s, "
              f"train step {compile_s['train']:.2f} s")
        for what, t_torch, t_api, t_raw in (("forward", t_fwd, api_fwd, raw_fwd),
                                            ("train step", t_step, api_step, raw_step)):
            rows.append((batch, what, t_torch, t_api, t_raw))
    print(f"\nmedian over repetitions, {args.threads} threads "
          f"(samples/s in parentheses; speedup = PyTorch time / odc API time)")
    head = f"{'batch':>5}  {'':10}  {'PyTorch eager':>22}  {'odc (Model API)':>22}  {'odc (bare call)':>22}  {'speedup':>7}"
    print(head)
    print("-" * len(head))
    for batch, what, t_torch, t_api, t_raw in rows:
        cell = lambda t: f"{t * 1e3:8.3f} ms ({batch / t:7.0f}/s)"  # noqa: E731
        print(f"{batch:>5}  {what:10}  {cell(t_torch):>22}  {cell(t_api):>22}  {cell(t_raw):>22}  "
              f"{t_torch / t_api:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
