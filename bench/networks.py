"""Networks trained side by side on random data: odc's compiled code against PyTorch eager and
torch.compile on the CPU, with the same number of threads.

    python bench/networks.py [--models models/lenet5.od ...] [--batch N ...] [--threads 2]
                             [--rounds 10] [--reps N] [--no-compile] [--no-profile]
                             [--doc docs/performance.md]

By default LeNet-5 (models/lenet5.od) at batch 32 and 256, and models/cifar_cnn.od,
models/resnet20.od, models/vgg11.od and models/mobilenet.od at batch 128; `--batch` sets the
batch sizes of every model given. For each network and batch: one training step (forward,
cross-entropy, backward and the SGD with momentum of the model's train block: its learning
rate, momentum, Nesterov and weight decay) and inference (the forward pass to the logits,
batch norms on their running statistics). odc runs through its public API
(`Model.train_step`, `Model.forward`); PyTorch runs the usual loop on the network's twin
(tests/test_zoo.py, written independently with torch.nn; LeNet-5's is `lenet5` here);
torch.compile, specialised to the batch size, compiles the network for inference and the whole
step function, optimizer included, for training. A model whose recipe normalizes or augments
takes uint8 pixels and converts, augments and normalizes them inside its compiled step; PyTorch
gets the same pixels as float32, scaled to [0, 1] and normalized, and no augmentation (a
PyTorch loop does that in its data loader, outside the step).

The contenders take turns, `--reps` calls each per round (by default as many as the slowest
contender makes in about a second, 2 to 20), so that a change in the machine's load hits all of
them alike; a time is the median or the minimum (best of) of all calls. Also measured: odc's
useful FLOP/s (`odc.runtime.bench.flops`) as a share of the machine's fp32 peak (measured again
at the start, `odc.runtime.bench.peak`); odc's compile times (cold, and cached); the memory of a
training step: odc's arena, and the peak resident set of a process that runs the training steps
of one contender only (each contender in a process of its own, so that their peaks do not mix);
and, unless `--no-profile`, odc's training step by kind of kernel. A torch.compile that fails
(a missing C++ toolchain, an unsupported operator) is reported as failed; `--no-compile` leaves
it out. The script prints everything, and with `--doc FILE` writes it into the section of FILE
between the markers `BEGIN` and `END`.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.recipes import zoo_net  # noqa: E402
from odc.runtime import bench  # noqa: E402

BEGIN, END = "<!-- bench/networks.py: begin -->", "<!-- bench/networks.py: end -->"
DEFAULT = {"lenet5.od": [32, 256], "cifar_cnn.od": [128], "resnet20.od": [128], "vgg11.od": [128],
           "mobilenet.od": [128]}  # model file in models/: batch sizes
CONTENDERS = {"odc": "odc", "eager": "PyTorch eager", "compile": "torch.compile"}


def lenet5(torch, classes: int):
    """LeNet-5 of models/lenet5.od in torch.nn."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes))


def twin(path: str):
    """The function (torch, classes) -> torch.nn.Module of the PyTorch twin of a model file."""
    name = Path(path).name
    return lenet5 if name == "lenet5.od" else zoo_net(name)


def check(prog, path: str) -> None:
    """Refuses a model the script cannot compare: not trained with cross-entropy and SGD."""
    recipe = prog.recipe
    if recipe["loss"] != "cross_entropy" or recipe["optimizer"]["name"] != "sgd":
        sys.exit(f"{path}: bench/networks.py compares cross-entropy and SGD training steps; this model's train "
                 f"block has loss {recipe['loss']} and optimizer {recipe['optimizer']['name']}")


def torch_images(prog, x: np.ndarray) -> np.ndarray:
    """What PyTorch gets for odc's input `x`: uint8 pixels as float32 in [0, 1], normalized as
    the recipe says (its augmentation left out); float inputs as they are."""
    from odc.runtime.data import as_float
    if x.dtype != np.uint8:
        return x
    x = as_float(x)
    norm = prog.recipe.get("normalize")
    if norm:
        mean, std = (np.asarray(norm[k], np.float32)[None, :, None, None] for k in ("mean", "std"))
        x = (x - mean) / std
    return x


TORCH_STEP = """
def step():
    opt.zero_grad()
    loss_fn(net(tx), ty).backward()
    opt.step()
"""


def torch_contenders(prog, path: str, threads: int, x, y, compiled: bool):
    """(inference, training step) of the twin in PyTorch: eager, or compiled by torch.compile."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if compiled:  # a program that trains one network: dynamo's caches and guards start afresh (else
        torch._dynamo.reset()  # the optimizer step, guarded per SGD object, stops compiling after 8)
    make, classes = twin(path), prog.graph.type(prog.graph.output("logits")).shape[1]
    net, infer = make(torch, classes), make(torch, classes).eval()
    tx, ty = torch.from_numpy(torch_images(prog, x)), torch.from_numpy(y.astype(np.int64))
    sgd = prog.recipe["optimizer"]
    opt = torch.optim.SGD(net.parameters(), lr=sgd["lr"], momentum=sgd["momentum"], dampening=sgd["dampening"],
                          nesterov=sgd["nesterov"], weight_decay=sgd["weight_decay"])
    run = torch.compile(infer, dynamic=False) if compiled else infer

    def forward():
        with torch.no_grad():
            run(tx)

    # The training step is compiled whole, optimizer included, as a function whose model,
    # optimizer and data are module globals, as in a plain training script: torch.compile
    # makes code about twice as fast here for LeNet-5's step as for the same step reading them
    # from a closure or from attributes, or for the network alone with an eager optimizer.
    state = {"net": net, "opt": opt, "loss_fn": torch.nn.CrossEntropyLoss(), "tx": tx, "ty": ty}
    exec(TORCH_STEP, state)
    return forward, torch.compile(state["step"], dynamic=False) if compiled else state["step"]


def odc_contenders(prog, threads: int, x, y):
    from odc.codegen import compile_graph
    model = prog.compile(executor=functools.partial(compile_graph, threads=threads))
    return lambda: model.forward(x), lambda: model.train_step(x, y)


def measure(contenders: dict, rounds: int, reps: int | None) -> tuple[dict[str, list[float]], int]:
    """Seconds per call of each contender, taking turns; and the calls per round (`reps`, or as
    many as the slowest contender makes in about a second, 2 to 20)."""
    slowest = 0.0
    for fn in contenders.values():  # warm up (compiles on the first call)
        for _ in range(3):
            t = time.perf_counter()
            fn()
        slowest = max(slowest, time.perf_counter() - t)
    reps = reps or max(2, min(20, int(1.0 / slowest)))
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return times, reps


def memory(who: str, path: str, batch: int, threads: int) -> dict:
    """The training step's memory when `who` runs alone in a new process (`child`): {"rss": bytes}
    and, for odc, {"arena": bytes}; or {"failed": reason}."""
    out = subprocess.run([sys.executable, __file__, "--memory-of", who, "--models", path, "--batch", str(batch),
                          "--threads", str(threads)], capture_output=True, text=True)
    if out.returncode:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        return {"failed": lines[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(who: str, path: str, batch: int, threads: int) -> None:
    """Prints the memory of `who`'s training step as JSON: its peak resident set over 3 steps
    after 3 warm-up steps, once the step is compiled (as `bench.throughput` measures odc)."""
    import odc
    prog = odc.load(path)
    if who == "odc":
        t = bench.throughput(prog, batch, 3, threads)
        print(json.dumps({"rss": t.peak_rss, "arena": t.arena_bytes}))
        return
    x, y = bench.random_batch(prog, batch)
    _, step = torch_contenders(prog, path, threads, x, y, compiled=who == "compile")
    step()  # compiles (torch.compile)
    bench.reset_peak_rss()
    bench.seconds_per_call(step, 3)
    print(json.dumps({"rss": bench.peak_rss()}))


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


def speed_table(runs: list[dict], kind: str, rounds: int, peak: float) -> list[str]:
    """Samples per second of each contender (median, best of in brackets), the ratios of their
    times to odc's and odc's useful FLOP/s over `peak`."""
    head = ["network", "batch", "calls", "odc", "PyTorch eager", "torch.compile", "eager/odc", "compile/odc",
            "odc % peak"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in runs:
        t = {who: r["times"][f"{who} {kind}"] for who in CONTENDERS if f"{who} {kind}" in r["times"]}
        med, best = ({who: stat(s) for who, s in t.items()} for stat in (statistics.median, min))
        missing = f"failed: {r['compile_failed']}" if "compile_failed" in r else "—"
        rates = [f"{r['batch'] / med[w]:,.0f}/s ({r['batch'] / best[w]:,.0f}/s)" if w in t else missing
                 for w in CONTENDERS]
        ratios = [f"{med[w] / med['odc']:.2f} ({best[w] / best['odc']:.2f})" if w in t else "—"
                  for w in ("eager", "compile")]
        fl = r["flops"][kind]
        lines.append("| " + " | ".join([r["name"], str(r["batch"]), f"{rounds}×{r['reps']}", *rates, *ratios,
                                        f"{fl / med['odc'] / peak:.1%} ({fl / best['odc'] / peak:.1%})"]) + " |")
    return lines


def cost_table(runs: list[dict]) -> list[str]:
    """Compile times and the training step's memory of each contender."""
    lines = ["| network | batch | odc cold | odc cached | torch.compile first calls | odc arena | odc RSS "
             "| PyTorch eager RSS | torch.compile RSS |", "|" + " --- |" * 9]
    for r in runs:
        mem = r["memory"]
        rss = [("—" if w not in mem else f"failed: {mem[w]['failed']}" if "failed" in mem[w]
                else f"{mem[w]['rss'] / 1e6:,.0f} MB") for w in CONTENDERS]
        cold, cached = r["compile"]
        first = (f"{r['torch_compile_s']:.1f} s" if "torch_compile_s" in r
                 else f"failed: {r['compile_failed']}" if "compile_failed" in r else "—")
        arena = f"{mem['odc']['arena'] / 1e6:,.1f} MB" if "arena" in mem["odc"] else "—"
        lines.append(f"| {r['name']} | {r['batch']} | {cold:.2f} s | {cached:.3f} s | {first} | {arena} | "
                     + " | ".join(rss) + " |")
    return lines


def op_table(prof, peak: float) -> list[str]:
    """A kernel profile by the first op of each kernel: those of 1 % of the call or more."""
    lines = ["| kernels | count | time | share | GFLOP/s | % peak |", "| --- | --- | --- | --- | --- | --- |"]
    small = [0, 0.0]
    for op, (count, sec, fl) in prof.by_op().items():
        if sec < 0.01 * prof.total:
            small = [small[0] + count, small[1] + sec]
            continue
        rate = f"{fl / sec / 1e9:.0f} | {fl / sec / peak:.1%}" if fl and sec else "— | —"
        lines.append(f"| `{op}` | {count} | {sec * 1e3:.3f} ms | {sec / prof.total:.1%} | {rate} |")
    outside = prof.total - sum(sec for sec, _ in prof.kernels.values())
    return lines + [f"| others, under 1 % each | {small[0]} | {small[1] * 1e3:.3f} ms | {small[1] / prof.total:.1%} "
                    "| — | — |", f"| (outside the kernels) | | {outside * 1e3:.3f} ms | {outside / prof.total:.1%} | | |"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=[f"models/{name}" for name in DEFAULT],
                    help="model files (default: the five above)")
    ap.add_argument("--batch", type=int, nargs="+", help="batch sizes of every model (default: 32 and 256 for "
                                                         "LeNet-5, 128 for the others)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--reps", type=int, help="calls per contender and round (default: about a second's worth)")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    ap.add_argument("--no-profile", action="store_true", help="leave out odc's training step by kind of kernel")
    ap.add_argument("--doc", type=Path, help="a Markdown file whose marked section gets the results")
    ap.add_argument("--memory-of", choices=list(CONTENDERS), help=argparse.SUPPRESS)  # the child of `memory`
    args = ap.parse_args(argv)
    if args.memory_of:
        child(args.memory_of, args.models[0], args.batch[0], args.threads)
        return 0
    os.environ["ODC_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-inductor-") as d:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = d  # torch.compile starts cold, as odc does
        return run(args, argv)


def run(args, argv) -> int:
    import llvmlite
    import torch

    import odc
    from odc.codegen import jit
    from odc.codegen.builder import VW

    load_before = load_average()
    peak = bench.peak(measure=True)
    others = []  # (CPU seconds other processes took, seconds) of each timed part
    runs = []  # per network and batch: what was measured
    print(f"load average {load_before}; {args.threads} threads, {args.rounds} rounds")
    for path in args.models:
        prog = odc.load(path)
        check(prog, path)
        for batch in args.batch or DEFAULT.get(Path(path).name, [128]):
            r = {"name": prog.name, "batch": batch}
            x, y = bench.random_batch(prog, batch)
            with bench.private_cache():
                r["compile"] = bench.compile_seconds(prog, batch, args.threads)
                fwd, step = odc_contenders(prog, args.threads, x, y)
                contenders = {"odc forward": fwd, "odc train": step}
                fwd, step = torch_contenders(prog, path, args.threads, x, y, compiled=False)
                contenders.update({"eager forward": fwd, "eager train": step})
                if not args.no_compile:
                    try:
                        fwd, step = torch_contenders(prog, path, args.threads, x, y, compiled=True)
                        t = time.perf_counter()
                        fwd(), step()
                        r["torch_compile_s"] = time.perf_counter() - t
                        contenders.update({"compile forward": fwd, "compile train": step})
                    except Exception as e:  # a missing C++ toolchain, or any other failure of inductor
                        r["compile_failed"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
                busy, start = busy_seconds(), time.perf_counter()
                r["times"], r["reps"] = measure(contenders, args.rounds, args.reps)
                after = busy_seconds()
                others.append(((after[0] - busy[0]) - (after[1] - busy[1]), time.perf_counter() - start))
                if not args.no_profile:
                    r["profile"] = bench.kernel_profile(prog, batch, args.rounds * r["reps"], threads=args.threads)
                r["memory"] = {who: memory(who, path, batch, args.threads) for who in CONTENDERS
                               if who != "compile" or "compile train" in contenders}
            r["flops"] = {kind: bench.graph_flops(prog.lower(kind, prog.batch_bindings(batch)))
                          for kind in ("train", "forward")}
            runs.append(r)
            print(f"{prog.name} batch {batch} done")
    load_after = load_average()

    command = shlex.join(["python", "bench/networks.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"Measured {time.strftime('%Y-%m-%d')} with:", "", "    " + command, "",
             "| machine | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in machine().items()]
    lines += [f"| odc target | {jit.target()[0]}, {VW * 32}-bit vectors |",
              f"| software | Python {platform.python_version()}, numpy {np.__version__}, llvmlite "
              f"{llvmlite.__version__} (LLVM {jit.llvm_version()}), torch {torch.__version__} |",
              f"| load average (1, 5, 15 min) | {load_before} before, {load_after} after |",
              f"| other processes while timing | {sum(o for o, _ in others) / sum(t for _, t in others):.2f} "
              "CPUs busy on average |",
              f"| fp32 peak, measured | {peak.one / 1e9:.0f} GFLOP/s on 1 thread, {peak.all / 1e9:.0f} GFLOP/s on "
              f"{peak.cpus} (the highest measured on this machine, last on {peak.measured[:10]}) |", ""]
    lines += [f"{args.threads} threads for every contender, taking turns: *calls* = rounds × calls of each per "
              "round. Samples per second, median, and best of in brackets; **eager/odc** = PyTorch eager's time / odc's (above 1: odc "
              "is faster), **compile/odc** likewise; *odc % peak* = odc's useful FLOP/s (convolutions and products, "
              f"`odc.runtime.bench.flops`) over the {args.threads}-thread peak "
              f"({peak.at(args.threads) / 1e9:.0f} GFLOP/s). odc's step takes uint8 pixels for the models "
              "whose recipe normalizes or augments, and does that work inside the step; PyTorch gets normalized "
              "float32 images and no augmentation.", ""]
    for kind, title in (("train", "Training step"), ("forward", "Inference")):
        lines += [f"**{title}**", ""] + speed_table(runs, kind, args.rounds, peak.at(args.threads)) + [""]
    lines += ["**Compile times and memory of the training step**: odc's training step and forward graph "
              "compiled together, cold (passes, LLVM, code emission) and then as a cache hit; torch.compile's "
              "first inference call and training step (an inductor cache that starts empty for the run); odc's "
              "arena (planned values and scratch); the peak resident set of a process running the training "
              "steps of one contender only.", ""] + cost_table(runs) + [""]
    for r in (r for r in runs if "profile" in r):
        lines += [f"odc's training step, {r['name']} batch {r['batch']}, by the first op of each kernel "
                  f"(`ODC_PROFILE=1`, median of {args.rounds * r['reps']} calls; whole call "
                  f"{r['profile'].total * 1e3:.3f} ms):", ""] + op_table(r["profile"], peak.at(args.threads)) + [""]
    notes = [f"- {r['name']} batch {r['batch']}: torch.compile failed: {r['compile_failed']}"
             for r in runs if "compile_failed" in r]
    lines += notes + ([""] if notes else [])
    section = "\n".join(lines)
    print(section)
    if args.doc:
        text = args.doc.read_text()
        if BEGIN not in text or END not in text:
            sys.exit(f"{args.doc} has no section between '{BEGIN}' and '{END}'")
        head, rest = text.split(BEGIN, 1)
        args.doc.write_text(head + BEGIN + "\n" + section + "\n" + END + rest.split(END, 1)[1])
        print(f"written into {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
