"""The `odc` command line. User errors (`OdcError`) become a message on stderr and exit code 1."""
from __future__ import annotations

import argparse
import os
import re
import sys

import odc
from odc.errors import OdcError
from odc.frontend.recipe import LIMITS
from odc.ir.passes.optimizer import VALID, invalid


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # bad flags: exit 1 with a hint, like every other user error
        self.print_usage(sys.stderr)
        print(f"odc: error: {message}\nhint: run '{self.prog} --help'", file=sys.stderr)
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="odc", description="odc, a model compiler for deep learning")
    p.add_argument("--version", action="version", version=f"odc {odc.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for register in COMMANDS:
        register(sub)
    return p


def _register_data(sub):
    p = sub.add_parser("data", help="list the data sets odc finds, or fetch EMNIST or CIFAR-10")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    ls = actions.add_parser("list", help="show which data sets are found where")
    ls.add_argument("--data", metavar="DIR", type=_folder,
                    help="also list DIR, the one folder compile-and-train --data DIR looks in")
    ls.set_defaults(func=lambda args: print(_data().describe_data(args.data)))
    fetch = actions.add_parser("fetch", help="download, check and unpack EMNIST (about 560 MB) or CIFAR-10 "
                                             "(the official binary archive, 170 MB)")
    fetch.add_argument("dataset", choices=["emnist", "cifar10"])
    fetch.add_argument("--url", help="the archive to download (default: the official one: NIST's zip "
                                     "for EMNIST, the binary .tar.gz from cs.toronto.edu for CIFAR-10)")
    fetch.add_argument("--sha256", metavar="HEX", help="its expected SHA-256 (required with --url)")
    fetch.add_argument("--dest", metavar="DIR", type=_folder,
                       help="unpack into DIR/emnist or DIR/cifar10/cifar-10-batches-bin "
                            "(default: $ODC_DATA_HOME or ~/.cache/odc/data)")
    fetch.set_defaults(func=_fetch)


def _fetch(args):
    if args.dataset == "cifar10":
        print(f"CIFAR-10 unpacked into {_data().fetch_cifar10(args.dest, args.url, args.sha256)}")
    else:
        print(f"EMNIST unpacked into {_data().fetch_emnist(args.dest, args.url, args.sha256)}")


def _data():
    from odc.runtime import data
    return data


def _number(kind, ok, what):
    """An argparse type: a `kind` number for which `ok(number)` holds."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


def _count(key, what):
    """An argparse type: an integer within the limits the train block sets for `key`."""
    lo, hi = LIMITS[key]
    return _number(int, lambda n: lo <= n <= hi, f"{what} from {lo} to {hi:,}")


def _folder(text):
    """An argparse type: a folder name, which may not be empty (it would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a folder name, got {text!r}")
    return text


def _check_threads():
    """Reject a bad $ODC_NUM_THREADS before any work (the compiled code reads it only when it
    first runs, after the data has loaded)."""
    from odc.codegen import num_threads
    try:
        num_threads()
    except OdcError as e:
        raise OdcError(f"{e}\nhint: set it to a number of threads >= 1, or unset it to use every CPU") from None


def _register_compile_and_train(sub):
    p = sub.add_parser("compile-and-train", help="compile a model and train it with its recipe",
                       description="Train a model with its train block; flags override the block.")
    p.add_argument("file", metavar="FILE", help="the .od file")
    p.add_argument("--train", "--model", metavar="NAME", dest="train",
                   help="the model (and its train block) to train when FILE has several")
    p.add_argument("--epochs", metavar="N", type=_count("epochs", "a number of epochs"),
                   help="train until N epochs are done")
    p.add_argument("--batch", metavar="N", type=_count("batch", "a batch size"), help="mini-batch size")
    p.add_argument("--lr", metavar="X", help="the optimizer's learning rate",
                   type=_number(float, lambda x: invalid("lr", x) is None, f"a learning rate, {VALID['lr'][0]}"))
    p.add_argument("--seed", metavar="N", type=_count("seed", "a seed"),
                   help="seed of the initial weights, the shuffling and dropout")
    p.add_argument("--accumulate", metavar="K", type=_count("accumulate", "a number of batches"),
                   help="update every K batches with their mean gradient")
    p.add_argument("--clip-grad-norm", metavar="X", help="clip the global gradient norm to X",
                   type=_number(float, lambda x: invalid("clip_grad_norm", x) is None,
                                f"a gradient norm, {VALID['clip_grad_norm'][0]}"))
    p.add_argument("--data", metavar="DIR", type=_folder, help="the folder that holds the data set")
    p.add_argument("--out", metavar="DIR", type=_folder, help="the run folder (default runs/<model>-<timestamp>)")
    p.add_argument("--resume", metavar="DIR", type=_folder, help="continue the run in DIR from its last checkpoint")
    p.set_defaults(func=_compile_and_train)


def _compile_and_train(a):
    _check_threads()
    _train().compile_and_train(a.file, train=a.train, epochs=a.epochs, batch=a.batch, lr=a.lr, seed=a.seed,
                               accumulate=a.accumulate, clip_grad_norm=a.clip_grad_norm, data_dir=a.data,
                               out=a.out, resume=a.resume)


def _register_eval(sub):
    p = sub.add_parser("eval", help="accuracy of a checkpoint on its data set's test part",
                       description="Evaluate a checkpoint on the test part of its data set (found in --data "
                                   "DIR, else where the run found it). Where there is no test part, it "
                                   "evaluates on the validation part the run held out.")
    p.add_argument("checkpoint", metavar="CKPT", help="a run folder or its checkpoint.safetensors")
    p.add_argument("--data", metavar="DIR", type=_folder, help="the folder that holds the data set")
    p.set_defaults(func=_eval)


def _eval(a):
    _check_threads()
    _train().eval_checkpoint(a.checkpoint, a.data)


def _register_predict(sub):
    p = sub.add_parser("predict", help="the top-5 classes of one picture, with their names",
                       description="Classify one picture with a checkpoint, prepared for the model's input "
                                   "(its channels, height and width). A model of colour images (or of an "
                                   "image folder) gets the picture converted to RGB (or grey) and resized, "
                                   "as imagefolder prepares its images. A model of grey characters "
                                   "(EMNIST, MNIST, Fashion-MNIST, idx) gets it as EMNIST was made: white "
                                   "ink on black (a picture whose border is mostly light is inverted "
                                   "first); a picture of another size is cropped to its ink, centred and "
                                   "resized.")
    p.add_argument("checkpoint", metavar="CKPT", help="a run folder or its checkpoint.safetensors")
    p.add_argument("image", metavar="IMAGE", help="a PNG (or any format Pillow reads)")
    p.set_defaults(func=_predict)


def _predict(a):
    _check_threads()
    _train().predict(a.checkpoint, a.image)


def _train():
    from odc.runtime import train
    return train


def _register_export(sub):
    from odc.export import MIN_OPSET
    p = sub.add_parser("export", help="write a checkpoint's inference graph as an ONNX model",
                       description="Write the inference graph of a checkpoint (batch norms on their running "
                                   "statistics, no dropout) as an ONNX model: a symbolic batch size, the "
                                   "input named as in the .od file, the output 'logits', the parameters as "
                                   "initializers. The file passes onnx.checker before it is written. Needs "
                                   "the onnx package: pip install 'odc[onnx]'.")
    p.add_argument("checkpoint", metavar="CKPT", help="a run folder or its checkpoint.safetensors")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="the ONNX file to write")
    p.add_argument("--opset", metavar="N", type=int, default=MIN_OPSET,
                   help=f"the ONNX opset (default {MIN_OPSET}, the oldest odc writes; up to the newest the "
                        f"installed onnx knows)")
    p.add_argument("--normalize", action="store_true",
                   help="put the recipe's normalize step into the graph: the model then takes images "
                        "scaled to [0, 1] (without it, it takes what odc's forward takes)")
    p.set_defaults(func=_export)


def _export(a):
    from odc import export
    export.check_opset(a.opset)  # a bad --opset or a missing onnx before the checkpoint is read
    proto = export.export_onnx(odc.load_checkpoint(a.checkpoint), a.output, a.opset, a.normalize)
    print(f"wrote {a.output} (ONNX opset {a.opset})\n{proto.doc_string}")


def _register_dump_ir(sub):
    p = sub.add_parser("dump-ir", help="print a model's IR after a compiler pass, or its generated code",
                       description="Print the IR of the model's training step after a pass of the "
                                   "pipeline (default: the last), or after each pass with --after all. "
                                   "With --emit, print the code generated for a graph instead: LLVM IR "
                                   "after LLVM's O3 pipeline (llvm) or the target CPU's assembly (asm), "
                                   "of the --graph graph for --batch examples. Code is generated afresh, "
                                   "so a dump is the same whether or not the JIT cache holds it. "
                                   "ODC_CPU=NAME (an LLVM CPU name, e.g. haswell) shows another CPU's code.")
    p.add_argument("file", metavar="FILE", help="the .od file")
    p.add_argument("--model", metavar="NAME", help="the model to show when FILE has several")
    p.add_argument("--after", metavar="PASS", help="a pass name, or 'all'")
    p.add_argument("--format", choices=["text", "dot"], default="text", help="text IR or Graphviz dot")
    p.add_argument("--emit", choices=["llvm", "asm"], help="print LLVM IR or assembly instead of the IR")
    p.add_argument("--graph", choices=["train", "forward", "grads"],
                   help="with --emit: the training step (train, the default), inference (forward), "
                        "or the loss and gradients (grads)")
    p.add_argument("--batch", metavar="N", type=_count("batch", "a batch size"),
                   help="specialise to N examples (IR: default symbolic; --emit: default the train block's batch)")
    p.set_defaults(func=_dump_ir)


def _dump_ir(a):
    prog = odc.load(a.file, model=a.model)
    if a.emit is None:
        if a.graph:
            raise OdcError("--graph chooses the code that --emit shows; add --emit llvm or --emit asm")
        print(prog.ir(a.after, a.format, a.batch), end="")
        return
    if a.after or a.format != "text":
        raise OdcError("--emit shows the code generated after the last pass; leave out --after and --format")
    from odc.codegen import assembly, llvm_ir
    g = prog.lower(a.graph or "train", prog.batch_bindings(a.batch or prog.recipe["batch"]))
    print((llvm_ir if a.emit == "llvm" else assembly)(g), end="")


def _register_opt(sub):
    p = sub.add_parser("opt", help="run named compiler passes on a model or on text IR, as mlir-opt does",
                       description="Run the passes PASSES (comma-separated, each with options in braces: "
                                   "shape-infer{N=32},autodiff{loss=mse},optimizer{name=adam,lr=0.001}) "
                                   "on FILE and print the IR after the last. FILE is an .od file (its "
                                   "model's forward graph; its train block gives the passes' defaults) "
                                   "or text IR as odc prints it; '-' reads standard input. A pass whose "
                                   "requirement the graph lacks gets it first (noted on stderr). Without "
                                   "-p, print the input's IR.")
    p.add_argument("file", metavar="FILE", nargs="?", help="an .od file or text IR, or '-' for standard input")
    p.add_argument("-p", "--passes", metavar="PASSES", default="", help="the passes to run, in order")
    p.add_argument("--print-between-passes", action="store_true",
                   help="print the IR after every pass, each headed '// after NAME'")
    p.add_argument("--verify-each", action="store_true", help="verify the IR after every pass")
    p.add_argument("--list-passes", action="store_true", help="print each pass's name and summary, and exit")
    p.add_argument("--model", metavar="NAME", help="the model to start from when an .od FILE has several")
    p.set_defaults(func=_opt)


def _opt(a):
    from odc.ir import passes
    from odc.ir.printer import print_graph
    from odc.ir.verify import IRVerificationError
    if a.list_passes:
        width = max(map(len, passes.REGISTRY))
        print("\n".join(f"{name:<{width}}  {p.summary}" for name, p in passes.REGISTRY.items()))
        return
    if a.file is None:
        raise OdcError("odc opt needs a FILE (an .od file, text IR, or '-' for standard input)")
    pipeline = parse_pipeline(a.passes)  # a bad -p is refused before any work
    for name, opts in pipeline:
        passes.check_options(name, opts)
    g, defaults, source = _opt_input(a.file, a.model)
    _verify_input(g, source)
    stages = []
    for name, opts in pipeline:  # one at a time: a pass named twice may take other options each time
        try:
            stages += passes.run_passes(stages[-1][1] if stages else g, [name], _pass_options(defaults, name, opts),
                                        a.verify_each or None, lambda line: print(f"note: {line}", file=sys.stderr))
        except IRVerificationError as e:  # a compiler bug, but the input is at hand: no traceback
            raise OdcError(f"after pass {name}: {e}") from None
    if a.print_between_passes:
        print("".join(f"// after {name}\n{print_graph(after)}" for name, after in stages), end="")
    else:
        print(print_graph(stages[-1][1] if stages else g), end="")


def _verify_input(g, source: str) -> None:
    """Verify the graph `odc opt` starts from: text IR comes from anywhere, and the passes may
    assume a well-formed graph."""
    from odc.ir.verify import IRVerificationError, verify
    try:
        verify(g)
    except IRVerificationError as e:
        raise OdcError(f"{source}: error: {e}") from None


def _opt_input(path: str, model: str | None):
    """The graph that `odc opt` starts from, the options its source gives the passes, and the
    source's name for messages."""
    from odc.frontend import parse_source, read_text
    from odc.ir.textparse import parse_graph
    from odc.program import Program
    if path == "-":
        text, name = sys.stdin.read(), "<stdin>"
    else:
        text, name = read_text(path), path
    if is_ir(text):
        if model is not None:
            raise OdcError(f"--model picks a model of an .od file; {name} is IR of one function")
        return parse_graph(text, name), {}, name
    module = parse_source(text, name)
    prog = Program(module.lower(model), module.source)
    return prog.graph, prog.options(), name


def is_ir(text: str) -> bool:
    """Is `text` IR (its first line that is neither blank nor a // comment starts with `func`)
    rather than an .od program?"""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("//"):
            return line.startswith("func")
    return False


def _pass_options(defaults: dict[str, dict], name: str, opts: dict) -> dict[str, dict]:
    """The keyword arguments of the passes, for running pass `name` with the options `opts` that
    -p gives it: the source's defaults, with `opts` over them (an optimizer named in -p other
    than the train block's takes none of its hyper-parameters; shape-infer's options are its
    bindings)."""
    options = {k: dict(v) for k, v in defaults.items()}
    if name == "shape-infer":
        opts = {"bindings": opts}
    base = options.get(name, {})
    if name == "optimizer" and "name" in opts and opts["name"] != base.get("name"):
        base = {}
    options[name] = {**base, **opts}
    return options


_PASS = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*(?:\{([^{}]*)\}\s*)?")
_OPTION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*([^=\s](?:[^=]*[^=\s])?)\s*$")


def parse_pipeline(text: str) -> list[tuple[str, dict]]:
    """The -p text `a,b{k=v,k2=v2},c` as [(pass name, {option: value})], the names checked. A
    value reads as an integer, a float, true or false, else as the string it is."""
    from odc.ir import passes
    out, pos = [], 0
    if not text.strip():
        return out
    while True:
        m = _PASS.match(text, pos)
        if not m:
            _bad_pipeline(text, pos)
        name, body = m.group(1), m.group(2)
        passes.get(name)
        opts = {}
        for item in body.split(",") if body and body.strip() else ():
            o = _OPTION.match(item)
            if not o:
                raise OdcError(f"cannot read the option {item.strip()!r} of pass {name}; write option=value")
            if o.group(1) in opts:
                raise OdcError(f"pass {name}: option {o.group(1)} is given twice")
            opts[o.group(1)] = _option_value(o.group(2))
        out.append((name, opts))
        pos = m.end()
        if pos == len(text):
            break
        if text[pos] != ",":
            _bad_pipeline(text, pos)
        pos += 1
    return out


def _bad_pipeline(text: str, pos: int):
    where = repr(text[pos:]) if text[pos:].strip() else "its end"
    raise OdcError(f"cannot read the pass list {text!r} at {where}; write it as "
                   "name,name{option=value,option=value},...")


def _option_value(text: str):
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _register_bench(sub):
    p = sub.add_parser("bench", help="compile times, throughput and memory of a model's compiled code",
                       description="Compile the model's training step and forward pass for each batch "
                                   "size in a throwaway JIT cache, twice: cold (empty cache: every pass, "
                                   "LLVM and code emission) and cached (a cache hit). Then time "
                                   "Model.train_step and Model.forward on random data: median of --reps "
                                   "calls after 3 warm-up calls, as samples per second; with the training "
                                   "step's arena (planned values and scratch) and the process's peak "
                                   "resident set while the steps ran.")
    p.add_argument("file", metavar="FILE", help="the .od file")
    p.add_argument("--model", metavar="NAME", help="the model to measure when FILE has several")
    p.add_argument("--batch", metavar="N", nargs="+", default=[32, 256], type=_count("batch", "a batch size"),
                   help="batch sizes (default 32 256)")
    p.add_argument("--threads", metavar="N", type=_number(int, lambda n: n >= 1, "a thread count >= 1"),
                   help="threads per kernel (default: $ODC_NUM_THREADS, else every CPU this process may "
                        "use, or one while other processes keep the cores busy)")
    p.add_argument("--reps", metavar="N", type=_number(int, lambda n: n >= 1, "a count >= 1"), default=20,
                   help="timed calls per measurement (default 20)")
    p.add_argument("--profile", action="store_true",
                   help="also time each kernel of the training step (compiled with ODC_PROFILE=1), with its "
                        "useful GFLOP/s and share of the machine's fp32 peak (measured once, kept in "
                        "$ODC_CACHE_DIR/peak.json), and the time per kind of kernel")
    p.set_defaults(func=_bench)


def _bench(a):
    from statistics import median

    from odc.codegen import jit, num_threads, threads as choice
    from odc.runtime import bench
    from odc.codegen.builder import VW
    prog = odc.load(a.file, model=a.model)
    threads = num_threads(a.threads)
    count = some = f"{threads} thread{'s' * (threads > 1)}"
    if a.threads is None and choice.fixed() is None and threads > 1:  # the default: see odc.codegen.threads
        count = f"up to {count}, chosen call by call (1 while other processes keep the cores busy)"
    print(f"{prog.name} ({a.file}): {count}, {jit.target()[0]} "
          f"({VW * 32}-bit vectors), median of {a.reps} calls")
    peak = bench.peak() if a.profile else None  # outside the throwaway cache: kept for the next run
    head = (f"{'batch':>5}  {'compile cold':>12}  {'cached':>8}  {'train step':>22}  {'inference':>22}  "
            f"{'arena':>9}  {'peak RSS':>9}")
    print(head + "\n" + "-" * len(head))
    profiles = []
    for batch in a.batch:
        with bench.private_cache():
            cold, cached = bench.compile_seconds(prog, batch, a.threads)
            t = bench.throughput(prog, batch, a.reps, a.threads)
            if a.profile:
                profiles.append((batch, bench.kernel_profile(prog, batch, a.reps, threads=a.threads)))
        print(f"{batch:>5}  {cold:>10.2f} s  {cached:>6.3f} s  "
              + "  ".join(f"{median(s) * 1e3:8.3f} ms {batch / median(s):>8,.0f}/s" for s in (t.train, t.forward))
              + f"  {t.arena_bytes / 1e6:>6.1f} MB  {t.peak_rss / 1e6:>6.1f} MB")
    if peak is not None:
        print(f"\nfp32 peak: {peak.one / 1e9:.0f} GFLOP/s on 1 thread, {peak.all / 1e9:.0f} on {peak.cpus} "
              f"(measured {peak.measured}, kept in {bench.peak_file()}); % peak is of "
              f"{peak.at(threads) / 1e9:.0f} GFLOP/s, the peak of {some}")
    for batch, prof in profiles:
        _print_profile(batch, prof, peak.at(threads))


def _print_profile(batch: int, prof, peak: float) -> None:
    """A kernel profile: the kernels above 1 % of the step, then the time per kind of kernel."""
    total = prof.total
    print(f"\nbatch {batch}, training step: {total * 1e3:.3f} ms per call, and {prof.drawing * 1e3:.3f} ms to "
          f"draw its random inputs; the image input (conversion, augmentation, normalize) takes "
          f"{prof.input_seconds() / total:.1%} of the step, drawing included; median per kernel:")

    def row(name, sec, fl):
        rate = f"{fl / sec / 1e9:8.1f} GFLOP/s {fl / sec / peak:6.1%}" if fl and sec else ""
        return f"  {name:<40} {sec * 1e3:8.3f} ms  {sec / total:6.1%}  {rate}".rstrip()
    print(f"  {'kernel':<40} {'time':>11}  {'share':>6}  {'useful rate':>15} {'% peak':>6}")
    rest = []
    for name, (sec, fl) in prof.kernels.items():
        if sec >= 0.01 * total:
            print(row(name if len(name) <= 40 else name[:39] + "…", sec, fl))  # named after its fused ops
        else:
            rest.append((sec, fl))
    print(row(f"{len(rest)} other kernels", sum(s for s, _ in rest), sum(f for _, f in rest)))
    outside = total - sum(s for s, _ in prof.kernels.values())
    print(f"  {'(outside the kernels)':<40} {outside * 1e3:8.3f} ms  {outside / total:6.1%}")
    print(f"\n  {'kernels by first op':<40} {'time':>11}  {'share':>6}  {'useful rate':>15} {'% peak':>6}")
    for op, (count, sec, fl) in prof.by_op().items():
        print(row(f"{op} ({count})", sec, fl))


def _register_cache(sub):
    p = sub.add_parser("cache", help="show or empty the JIT cache of compiled code",
                       description="The JIT cache lives in $ODC_CACHE_DIR/jit (default ~/.cache/odc/jit); "
                                   "ODC_ALWAYS_COMPILE=1 bypasses it.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    actions.add_parser("info", help="where the cache is and how much it holds").set_defaults(func=_cache_info)
    actions.add_parser("clear", help="delete every cached entry").set_defaults(func=_cache_clear)


def _cache_info(a):
    from odc.codegen import cache
    entries, size = cache.usage()
    print(f"{cache.cache_dir()}: {entries} entries, {size / 1e6:.1f} MB"
          + ("" if cache.enabled() else " (bypassed: ODC_ALWAYS_COMPILE is set)"))


def _cache_clear(a):
    from odc.codegen import cache
    print(f"removed {cache.clear()} entries from {cache.cache_dir()}")


def _register_gradcheck(sub):
    p = sub.add_parser("gradcheck", help="check a model's gradients against finite differences",
                       description="Compare autodiff gradients with central finite differences in "
                                   "float64 on a small random batch; exit 1 if a parameter's worst "
                                   "relative error exceeds --tol. Sample points near a ReLU or max-pool "
                                   "kink, where finite differences average two slopes, are tried again "
                                   "with a smaller step, else left out and counted.")
    p.add_argument("file", metavar="FILE", help="the .od file")
    p.add_argument("--model", metavar="NAME", help="the model to check when FILE has several")
    p.add_argument("--batch", type=_number(int, lambda n: n >= 1, "a batch size >= 1"), default=2)
    p.add_argument("--samples", type=_number(int, lambda n: n >= 1, "a count >= 1"), default=16,
                   help="elements checked per parameter (default 16)")
    p.add_argument("--tol", type=_number(float, lambda x: x > 0, "a tolerance > 0"), default=1e-4)
    p.add_argument("--seed", type=_count("seed", "a seed"), default=0)
    p.set_defaults(func=_gradcheck)


def _gradcheck(a):
    from odc.runtime.gradcheck import gradcheck
    errors, kinks = gradcheck(odc.load(a.file, model=a.model), a.batch, a.samples, a.seed)
    width = max(map(len, errors), default=0)
    for name, err in errors.items():
        near = f"  ({kinks[name]} sample{'s' * (kinks[name] > 1)} near a kink left out)" if kinks[name] else ""
        verdict = "not checked" if err is None else f"{err:.2e}  {'ok' if err <= a.tol else 'FAIL'}"
        print(f"{name:<{width}}  {verdict}{near}")
    bad = [n for n, err in errors.items() if err is not None and err > a.tol]
    unchecked = sum(err is None for err in errors.values())
    print(f"{len(errors) - len(bad) - unchecked}/{len(errors)} parameters within {a.tol:g}"
          + (f", {unchecked} not checked" if unchecked else "")
          + (f"; {sum(kinks.values())} sample points near a ReLU or pooling kink, where finite "
             f"differences do not apply, were left out" if any(kinks.values()) else ""))
    return 1 if bad else 0


def _register_check(sub):
    p = sub.add_parser("check", help="parse and type-check an .od file",
                       description="Check FILE: syntax, names, shapes, train blocks. Prints each model's "
                                   "parameters and output type, or the errors (exit 1).")
    p.add_argument("file", metavar="FILE", help="the .od file")
    p.set_defaults(func=_check)


def _check(a):
    from odc.frontend import parse_file
    models = parse_file(a.file).models
    if not models:
        print(f"{a.file}: ok — no models")
    for name, g in models.items():
        params = g.params()
        values = sum(p.type.numel for p in params)
        print(f"{a.file}: ok — model {name}: {len(params)} parameters ({values:,} values), "
              f"output {g.type(g.output('logits'))}")


# in the order `odc --help` lists them: the main job first, then the compiler's tools
COMMANDS = [_register_compile_and_train, _register_eval, _register_predict, _register_export, _register_check,
            _register_dump_ir, _register_opt, _register_gradcheck, _register_bench, _register_data, _register_cache]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except OdcError as e:
        text = str(e)  # diagnostics already read "path:line:col: error: ..."
        print(text if text.startswith("error") or ": error:" in text else f"error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (odc ... | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
