"""LeNet-5 on EMNIST shapes (1x28x28 inputs, 47 classes, random data): odc's compiled code
against PyTorch eager and torch.compile on the CPU, with the same number of threads.

    python bench/lenet5.py [--batch 32 256] [--threads 2] [--rounds 10] [--reps 20]
                           [--doc docs/performance.md]

For each batch size: inference (the forward pass, logits) and one training step (forward,
cross-entropy, backward, SGD with momentum 0.9). odc runs through its public API
(`Model.forward`, `Model.train_step`), PyTorch as the usual loop; torch.compile, specialised
to the batch size, compiles the network for inference and the whole step function, optimizer
included, for training. The contenders take turns, `reps` calls each per round, so that a
change in the machine's load hits all of them alike; a time is the median or the minimum
(best of) of all calls. The script also measures
the machine's fp32 peak (independent FMA chains in the target's widest vectors, on every
thread at once) and profiles odc's training step kernel by kernel (``ODC_PROFILE=1``). It
prints everything and writes it into the marked section of `--doc`.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- bench/lenet5.py: begin -->", "<!-- bench/lenet5.py: end -->"


def lenet5_flops(batch: int) -> tuple[int, int]:
    """(forward, training step) floating-point operations of the convolutions and products, 2
    per multiply-add; the step adds the gradients with respect to the weights (as many as the
    forward pass) and to the inputs of every layer but the first. Elementwise work, pooling
    and the loss are left out (under 1 %)."""
    layers = [(6 * 28 * 28 * 1 * 25, False), (16 * 10 * 10 * 6 * 25, True),
              (400 * 120, True), (120 * 84, True), (84 * 47, True)]  # (MACs per sample, input grad)
    fwd = sum(m for m, _ in layers)
    step = fwd + fwd + sum(m for m, grad_input in layers if grad_input)
    return 2 * batch * fwd, 2 * batch * step


TORCH_STEP = """
def step():
    opt.zero_grad()
    loss_fn(net(tx), ty).backward()
    opt.step()
"""


def torch_contenders(threads: int, batch: int, x, y, compiled: bool):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 47))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    run = torch.compile(net, dynamic=False) if compiled else net

    def forward():
        with torch.no_grad():
            run(tx)

    # The training step is compiled whole, optimizer included, as a function whose model,
    # optimizer and data are module globals, as in a plain training script: torch.compile
    # makes code about twice as fast here for that step as for the same step reading them from
    # a closure or from attributes, or for the network alone with an eager optimizer.
    state = {"net": net, "opt": torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9),
             "loss_fn": nn.CrossEntropyLoss(), "tx": tx, "ty": ty}
    exec(TORCH_STEP, state)
    return forward, torch.compile(state["step"], dynamic=False) if compiled else state["step"]


def odc_contenders(x, y):
    import odc
    from odc.codegen import compile_graph
    model = odc.load(ROOT / "models" / "lenet5.od").compile(executor=compile_graph)
    return lambda: model.forward(x), lambda: model.train_step(x, y)


def measure(contenders: dict, rounds: int, reps: int) -> dict[str, list[float]]:
    times = {name: [] for name in contenders}
    for fn in contenders.values():  # warm up (compiles on the first call)
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in contenders.items():
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return times


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


def peak_flops(threads: int, chains: int = 16, n: int = 20_000_000) -> tuple[float, float]:
    """(one thread, `threads` threads at once) fp32 FLOP/s of `chains` independent FMA chains
    in the target's widest vectors (enough chains to cover FMA latency times FMA units), each
    FMA counted as 2 operations per lane."""
    from odc.codegen import jit
    from odc.codegen.builder import VW
    v = f"<{VW} x float>"
    text = PEAK_IR.format(
        vw=VW, last=chains - 1,
        phis="\n".join(f"  %a{c} = phi {v} [%x, %entry], [%b{c}, %loop]" for c in range(chains)),
        fmas="\n".join(f"  %b{c} = call {v} @llvm.fma.v{VW}f32({v} %a{c}, {v} %x, {v} %x)"
                       for c in range(chains)),
        sums="\n".join(f"  %s{c} = fadd {v} %s{c - 1}, %b{c}" if c else f"  %s0 = fadd {v} %b0, %x"
                       for c in range(chains)))
    code = jit.Loaded(jit.emit_object(jit.optimize(text)))
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(code.address("peak"))  # releases the GIL
    bufs = [np.full(VW, 0.999, np.float32) for _ in range(threads)]
    fn(bufs[0].ctypes.data, 1000)

    def run(k):
        workers = [threading.Thread(target=fn, args=(bufs[i].ctypes.data, n)) for i in range(k)]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return k * n * chains * VW * 2 / (time.perf_counter() - t)
    return max(run(1) for _ in range(3)), max(run(threads) for _ in range(3))


def machine() -> dict[str, str]:
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for key in ("Model name", "CPU(s)", "Core(s) per socket", "Thread(s) per core", "L2 cache", "L3 cache",
                    "Hypervisor vendor"):
            m = re.search(rf"^{re.escape(key)}:\s*(.+)$", out, re.M)
            if m:
                info[key] = m.group(1).strip()
        flags = re.search(r"^Flags:\s*(.+)$", out, re.M)
        if flags:
            present = flags.group(1).split()
            info["vector extensions"] = " ".join(f for f in ("avx2", "fma", "avx512f") if f in present)
    except OSError:
        pass
    return info


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def busy_seconds() -> tuple[float, float]:
    """(CPU seconds all processes have been busy, CPU seconds of this one), from /proc/stat and
    os.times: their growth over a timed part tells how much CPU other processes took meanwhile."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    t = os.times()
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK"), t.user + t.system


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "performance.md",
                    help="the Markdown file whose marked section gets the results ('-' for none)")
    args = ap.parse_args(argv)
    os.environ["ODC_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-inductor-") as d:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = d  # torch.compile starts cold, as odc does
        return run(args, argv)


def run(args, argv) -> int:
    import llvmlite
    import torch

    import odc
    from odc.codegen import jit
    from odc.runtime import bench
    from odc.codegen.builder import VW

    load_before = load_average()
    others = []  # (CPU seconds other processes took, seconds) of each timed part
    print(f"load average {load_before}; {args.threads} threads, {args.rounds} rounds of {args.reps} calls")
    rng = np.random.default_rng(0)
    prog = odc.load(ROOT / "models" / "lenet5.od")
    rows, compile_s, profiles, notes = [], {}, {}, []
    compiled_torch = True
    for batch in args.batch:
        x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 47, batch)
        with bench.private_cache():
            compile_s[batch] = bench.compile_seconds(prog, batch)
            fwd, step = odc_contenders(x, y)
            contenders = {"odc forward": fwd, "odc train step": step}
            fwd, step = torch_contenders(args.threads, batch, x, y, compiled=False)
            contenders.update({"eager forward": fwd, "eager train step": step})
            if compiled_torch:
                try:
                    fwd, step = torch_contenders(args.threads, batch, x, y, compiled=True)
                    t = time.perf_counter()
                    fwd(), step()
                    cache = "empty inductor cache" if batch == args.batch[0] else "warm inductor cache"
                    notes.append(f"torch.compile: the first calls at batch {batch} took "
                                 f"{time.perf_counter() - t:.0f} s (inference and training graphs, {cache})")
                    contenders.update({"compile forward": fwd, "compile train step": step})
                except Exception as e:  # a missing C++ toolchain, or any other failure of inductor
                    compiled_torch = False
                    notes.append(f"torch.compile failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}")
            busy, start = busy_seconds(), time.perf_counter()
            times = measure(contenders, args.rounds, args.reps)
            after = busy_seconds()
            others.append(((after[0] - busy[0]) - (after[1] - busy[1]), time.perf_counter() - start))
            profiles[batch] = bench.kernel_profile(prog, batch, args.rounds * args.reps)
        for what in ("forward", "train step"):
            rows.append((batch, what, {who: times[f"{who} {what}"] for who in ("odc", "eager", "compile")
                                       if f"{who} {what}" in times}))
        print(f"batch {batch} done")
    peak1, peak = peak_flops(args.threads)
    load_after = load_average()

    lines = [f"Measured {time.strftime('%Y-%m-%d')} with:", "",
             "    " + shlex.join(["python", "bench/lenet5.py", *(sys.argv[1:] if argv is None else argv)]),
             "",
             "| machine | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in machine().items()]
    lines += [f"| odc target | {jit.target()[0]}, {VW * 32}-bit vectors |",
              f"| software | Python {platform.python_version()}, numpy {np.__version__}, llvmlite "
              f"{llvmlite.__version__} (LLVM {jit.llvm_version()}), torch {torch.__version__} |",
              f"| load average (1, 5, 15 min) | {load_before} before, {load_after} after |",
              f"| other processes while timing | {sum(o for o, _ in others) / sum(t for _, t in others):.2f} "
              "CPUs busy on average |",
              f"| fp32 peak, measured | {peak1 / 1e9:.0f} GFLOP/s on 1 thread, {peak / 1e9:.0f} GFLOP/s on "
              f"{args.threads} |", ""]
    lines += [f"{args.threads} threads for every contender; {args.rounds} rounds of {args.reps} calls each. "
              "Time per call, and samples per second in brackets; **ratio** = PyTorch eager time / odc "
              "time (above 1: odc is faster); *% peak* = odc's useful FLOP/s (convolutions and products "
              f"only, see `lenet5_flops`) over the measured {args.threads}-thread peak.", ""]
    for label, stat in (("median", statistics.median), ("best of", min)):
        head = ["batch", "", "odc", "PyTorch eager", "torch.compile", "ratio eager/odc",
                "ratio compile/odc", "odc % peak"]
        lines += [f"**{label}**", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for batch, what, ts in rows:
            s = {who: stat(t) for who, t in ts.items()}
            flops = lenet5_flops(batch)[what == "train step"]
            cells = [str(batch), what] + [f"{s[w] * 1e3:.3f} ms ({batch / s[w]:,.0f}/s)" if w in s else "—"
                                          for w in ("odc", "eager", "compile")]
            cells += [f"{s['eager'] / s['odc']:.2f}",
                      f"{s['compile'] / s['odc']:.2f}" if "compile" in s else "—",
                      f"{flops / s['odc'] / peak:.1%}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["odc compile times, training step and forward graph together (passes, LLVM O3, code "
              "emission; then the same again as a cache hit):", ""]
    lines += [f"- batch {b}: {cold:.2f} s cold, {cached:.3f} s cached"
              for b, (cold, cached) in compile_s.items()]
    lines += [f"- {n}" for n in notes] + [""]
    for batch, prof in profiles.items():
        total = prof.pop("total")
        lines += [f"odc training step, batch {batch}, kernel by kernel (`ODC_PROFILE=1`, median of "
                  f"{args.rounds * args.reps} calls; whole call {total * 1e3:.3f} ms):", "",
                  "| kernel | time | share |", "| --- | --- | --- |"]
        rest = []
        for name, sec in prof.items():
            if sec >= 0.01 * total:
                lines.append(f"| `{name}` | {sec * 1e3:.3f} ms | {sec / total:.1%} |")
            else:
                rest.append(sec)
        lines += [f"| {len(rest)} other kernels | {sum(rest) * 1e3:.3f} ms | {sum(rest) / total:.1%} |",
                  f"| (outside the kernels: argument checks, output arrays) | "
                  f"{(total - sum(prof.values())) * 1e3:.3f} ms | {1 - sum(prof.values()) / total:.1%} |", ""]
    section = "\n".join(lines)
    print(section)
    if str(args.doc) != "-":
        text = args.doc.read_text()
        if BEGIN not in text or END not in text:
            sys.exit(f"{args.doc} has no section between '{BEGIN}' and '{END}'")
        head, rest = text.split(BEGIN, 1)
        args.doc.write_text(head + BEGIN + "\n" + section + "\n" + END + rest.split(END, 1)[1])
        print(f"written into {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
