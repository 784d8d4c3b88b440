"""LeNet-5 on EMNIST shapes (1x28x28 inputs, 47 classes): odc's compiled code against PyTorch
eager on the CPU, both with the same number of threads.

    python bench/lenet5.py [--batch 32 256] [--threads 2] [--rounds 10] [--reps 20]

For each batch size: the forward pass (logits) and one training step (forward, cross-entropy,
backward, SGD with momentum 0.9). odc is timed through the public API (`Model.forward`,
`Model.train_step`) and as the bare compiled executable (arrays prepared once); PyTorch as
the usual eager loop. The contenders take turns, `reps` calls each per round, so that a
change in the machine's load hits all of them alike. Prints the median and the minimum
time per call and samples per second side by side, and odc's cold compile times (cache
bypassed).
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
sys.path.insert(0, str(ROOT))


def torch_contenders(threads: int, x, y):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 47))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def forward():
        with torch.no_grad():
            net(tx)

    def step():
        opt.zero_grad()
        loss_fn(net(tx), ty).backward()
        opt.step()

    return forward, step


def odc_contenders(batch: int, x, y):
    import odc
    from odc.codegen import compile_graph
    from odc.ir.passes import shape_infer

    prog = odc.load(ROOT / "models" / "lenet5.od")
    model = prog.compile(executor=compile_graph)
    compile_s, exes = {}, {}
    os.environ["ODC_ALWAYS_COMPILE"] = "1"
    for kind in ("forward", "train"):
        g = shape_infer.run(prog.lower(kind), {"N": batch})
        t = time.perf_counter()
        exes[kind] = compile_graph(g)
        compile_s[kind] = time.perf_counter() - t
    del os.environ["ODC_ALWAYS_COMPILE"]
    feeds = {"image": x, "label": y.astype(np.int32), **model.params, **model.state}
    fwd_feeds = {"image": x, **model.params}
    return compile_s, {
        "api forward": lambda: model.forward(x),
        "api train step": lambda: model.train_step(x, y),
        "bare forward": lambda: exes["forward"](fwd_feeds),
        "bare train step": lambda: exes["train"](feeds),
    }


def measure(contenders: dict, rounds: int, reps: int) -> dict[str, list[float]]:
    times = {name: [] for name in contenders}
    for fn in contenders.values():  # warm up (and compile for batch sizes seen first here)
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in contenders.items():
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    os.environ["ODC_NUM_THREADS"] = str(args.threads)
    rng = np.random.default_rng(0)
    print(f"{args.threads} threads, {args.rounds} rounds of {args.reps} calls per contender")
    rows = []
    for batch in args.batch:
        x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 47, batch)
        compile_s, contenders = odc_contenders(batch, x, y)
        fwd, step = torch_contenders(args.threads, x, y)
        contenders.update({"torch forward": fwd, "torch train step": step})
        times = measure(contenders, args.rounds, args.reps)
        print(f"batch {batch}: odc cold compile: forward {compile_s['forward']:.2f} s, "
              f"train step {compile_s['train']:.2f} s")
        for what in ("forward", "train step"):
            rows.append((batch, what, *(times[f"{who} {what}"] for who in ("torch", "api", "bare"))))

    def cell(batch, ts, stat):
        t = stat(ts)
        return f"{t * 1e3:8.3f} ms {batch / t:7.0f}/s"

    for label, stat in (("median", statistics.median), ("minimum", min)):
        print(f"\n{label} time per call (samples/s); speedup = PyTorch / odc through the API")
        head = (f"{'batch':>5}  {'':10}  {'PyTorch eager':>22}  {'odc (Model API)':>22}  "
                f"{'odc (bare call)':>22}  {'speedup':>7}")
        print(head)
        print("-" * len(head))
        for batch, what, t_torch, t_api, t_bare in rows:
            print(f"{batch:>5}  {what:10}  {cell(batch, t_torch, stat):>22}  {cell(batch, t_api, stat):>22}  "
                  f"{cell(batch, t_bare, stat):>22}  {stat(t_torch) / stat(t_api):6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
