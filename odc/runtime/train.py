"""The training loop behind `odc compile-and-train`, and `odc eval` / `odc predict`.

One epoch: shuffle the training images with the run's RNG (seeded from the recipe's `seed`; its
state is saved with every checkpoint, as is the model's own RNG for dropout, so a resumed run
draws the same numbers as an uninterrupted one), cut the permutation into mini-batches of the
recipe's size (`epoch_batches`: a last, partial batch is filled up with images drawn at random
from the rest of the epoch, so every image is used at least once per epoch and every step has
the same size: the training step is compiled once per run), and call `model.train_step` on
each. Then check that every parameter and state value is finite and evaluate (top-1 accuracy
and the recipe's loss) on the validation part if the run holds one out, else on the test part:
a run that diverged stops there
with an OdcError (exit 1), keeping the last good checkpoint. Otherwise write the checkpoint
atomically, then `metrics.jsonl` (rewritten from the checkpoint's history, so the two always agree
after a resume; strict JSON, see `checkpoint.json_text`) and `curves.png`; a write that fails (a
full disk...) is an OdcError naming the file. After the last epoch: the accuracy on the test part
if the run validated on a held-out part, then per-class accuracy and the pairs of classes the
model confuses most.

Validation: the recipe's `valid` fraction of the training part (of each class, drawn with the
recipe's seed, so the same on every run and resume) is held out; a data set without a test part
holds out DEFAULT_VALID when `valid` is not set (recorded in the checkpoint's recipe, so that
`odc eval` can evaluate on that part when there is still no test part).

Messages: `log` (stdout by default) gets the run's lines; notes and compile events (what is
compiled for which batch, and how long it took) go to stderr, on a terminal or not.

Images stay uint8 in memory (`[n, H, W]` grey or `[n, C, H, W]`) and go to the model a batch at
a time (`batch_of`): as they are when the recipe normalizes or augments them (the compiled step
converts, augments and normalizes them), else as float32 `[B, C, H, W]` scaled to [0, 1]; labels
as int64.
"""
from __future__ import annotations

import io
import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from odc import checkpoint, program, schedules
from odc.checkpoint import Checkpoint
from odc.errors import OdcError
from odc.frontend.lower import od_text
from odc.ir.ops import cross_entropy_ref, log_softmax_ref
from odc.runtime.data import DEFAULT_VALID, Dataset, as_float, decode_image, hold_out, load_dataset

EVAL_BATCH = 500
METRICS, PLOT, BEST = "metrics.jsonl", "curves.png", "best.safetensors"


# ---------------------------------------------------------------------------- evaluation

@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predicted: np.ndarray   # top-1 class per image
    labels: np.ndarray
    part: str = "test"      # which part it was measured on: "test" or "validation"


def batch_of(model, images: np.ndarray) -> np.ndarray:
    """uint8 images [n, H, W] or [n, C, H, W] as the model takes them: uint8 [n, C, H, W] when its
    graphs convert them (a recipe with normalize or augment), else float32 in [0, 1]."""
    if model.takes_uint8:
        return images if images.ndim == 4 else images[:, None]
    return as_float(images)


def predict_logits(model, images: np.ndarray) -> np.ndarray:
    """Logits for uint8 images [n, H, W] or [n, C, H, W], computed EVAL_BATCH at a time."""
    return np.concatenate([model.forward(batch_of(model, images[i:i + EVAL_BATCH]))
                           for i in range(0, len(images), EVAL_BATCH)])


def evaluate(model, images: np.ndarray, labels: np.ndarray, loss: str, part: str = "test") -> Evaluation:
    logits = predict_logits(model, images).astype(np.float64)
    if loss == "mse":
        value = float(((logits - np.eye(logits.shape[1])[labels]) ** 2).mean())
    else:
        value = float(cross_entropy_ref(logits, labels, {}))
    predicted = logits.argmax(axis=1)
    return Evaluation(value, float((predicted == labels).mean()), predicted, labels, part)


def class_report(ev: Evaluation, classes: list[str], columns: int = 4, pairs: int = 10) -> str:
    """Per-class accuracy, `columns` classes per row, and the `pairs` most frequent confusions."""
    k = len(classes)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (ev.labels, ev.predicted), 1)
    count = confusion.sum(axis=1)
    width = max(map(len, classes))
    cells = [f"{c:>{width}} {confusion[i, i] / count[i]:6.1%} of {count[i]:<5,}" if count[i] else
             f"{c:>{width}} {'-':>6} of 0    " for i, c in enumerate(classes)]
    lines = [f"per-class accuracy on the {ev.part} part:"]
    lines += ["  " + "   ".join(cells[i:i + columns]).rstrip() for i in range(0, k, columns)]
    off = confusion * (1 - np.eye(k, dtype=np.int64))
    worst = [divmod(int(i), k) for i in np.argsort(-off, axis=None, kind="stable")[:pairs]]
    worst = [(t, p) for t, p in worst if off[t, p]]
    if worst:
        lines.append("most confused (true -> predicted):")
        lines += [f"  {classes[t]!r:>{width + 2}} -> {classes[p]!r:<{width + 2}} {off[t, p]:>6,}  "
                  f"({off[t, p] / count[t]:.1%} of {classes[t]!r})" for t, p in worst]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- metrics files

def write_metrics(out: Path, history: list[dict]) -> None:
    """One JSON object per line and epoch; strict JSON: a number that is not finite is null."""
    text = "".join(checkpoint.json_text(r) + "\n" for r in history)
    checkpoint.write_atomic(out / METRICS, text.encode(), "the metrics")


def plot(out: Path, history: list[dict], title: str) -> None:
    """Loss, accuracy and learning rate per epoch, side by side, as a PNG (a null value leaves a
    gap). The rate is the one each epoch started with."""
    from matplotlib.figure import Figure  # drawn with Agg, leaving pyplot's backend alone

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(14, 4), layout="constrained")
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    parts = [p for p in ("valid", "test") if any(r.get(f"{p}_loss") is not None for r in history)]
    for part, color in zip(parts, ("C1", "C2") if len(parts) == 2 else ("C1",)):
        name = "validation" if part == "valid" else part
        loss_ax.plot(epochs, [_nan(r.get(f"{part}_loss")) for r in history], "o-", color=color, label=name)
        acc_ax.plot(epochs, [100 * _nan(r.get(f"{part}_accuracy")) for r in history], "o-", color=color,
                    label=name)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_ax.legend()
    acc_ax.set(xlabel="epoch", ylabel="top-1 accuracy (%)",
               title=" and ".join("validation" if p == "valid" else p for p in parts) + " accuracy")
    if len(parts) > 1:
        acc_ax.legend()
    lr_ax.plot(epochs, [_nan(r.get("lr")) for r in history], "o-", color="C3")
    lr_ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    checkpoint.write_atomic(out / PLOT, buf.getvalue(), "the plot")


def _nan(v) -> float:
    return math.nan if v is None else v


# ---------------------------------------------------------------------------- the loop

def note(text: str) -> None:
    """A line on stderr, terminal or not, without breaking a progress bar."""
    from tqdm import tqdm
    tqdm.write(text, file=sys.stderr)


def _progress(total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, file=sys.stderr, leave=False,
                dynamic_ncols=True, disable=not sys.stderr.isatty())


def epoch_batches(n: int, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """An epoch's mini-batches of the indices 0..n-1: a random permutation cut into batches of
    `batch`; when n is not a multiple of it, the last batch holds the remaining indices and
    `batch - n % batch` others, drawn without repetition from the rest of the permutation. All
    batches have `batch` indices (or there is one of n, when n <= batch)."""
    order = rng.permutation(n)
    if n <= batch:
        return [order]
    full = n - n % batch
    batches = [order[start:start + batch] for start in range(0, full, batch)]
    if full < n:
        batches.append(np.concatenate([order[full:], order[rng.choice(full, batch - (n - full), replace=False)]]))
    return batches


def train_epoch(model, data: Dataset, rng: np.random.Generator, batch: int, desc: str, rate=None) -> float:
    """One pass over the training images in a random order (`epoch_batches`); returns the mean
    training loss over the images of its steps. `rate(i)`, if given, is the learning rate of the
    epoch's i-th call."""
    batches = epoch_batches(len(data.train_y), batch, rng)
    total, seen = 0.0, 0
    with _progress(sum(map(len, batches)), desc) as bar:
        for i, idx in enumerate(batches):
            if rate is not None:
                model.lr = rate(i)
            loss = float(model.train_step(batch_of(model, data.train_x[idx]), data.train_y[idx]))
            if not math.isfinite(loss):
                raise OdcError(f"the training loss became {loss} at step {i + 1} of {len(batches)} of {desc}\n"
                               f"hint: lower the learning rate (--lr)")
            total, seen = total + loss * len(idx), seen + len(idx)
            bar.set_postfix_str(f"loss {total / seen:.4f}", refresh=False)
            bar.update(len(idx))
    return total / seen


def fit(model, data: Dataset, ckpt: Checkpoint, out: Path, *, epochs: int, batch: int,
        log=print) -> Evaluation | None:
    """Train from `ckpt.epoch` up to `epochs` epochs. After each epoch: evaluate on the validation
    part (`data.valid_x`) if there is one, else on the test part; after the last, with a validation
    part, on the test part too (if there is one). Then write the checkpoint (params, optimizer
    state, RNG state, history) atomically, `best.safetensors` when the early-stop metric improved,
    `metrics.jsonl` and the plot. The recipe's schedule sets the learning rate of every step; its
    position, like the early stop's, follows from the epoch and the history, so a resumed run
    continues both exactly. Returns the last evaluation, on the test part where there was one
    (None when there was no epoch left to run)."""
    recipe = ckpt.recipe
    rng = np.random.default_rng((recipe["seed"], 1))  # a stream apart from the model's own
    if "shuffle" in ckpt.rng:
        rng.bit_generator.state = ckpt.rng["shuffle"]
    n, ev = len(data.train_y), None
    held = data.valid_x is not None
    part = "valid" if held else "test"  # the part evaluated after every epoch
    batches = -(-n // batch)  # steps per epoch (epoch_batches)
    schedule = schedules.Schedule(recipe.get("schedule"), recipe["optimizer"]["lr"], epochs, batches,
                        recipe.get("accumulate", 1))
    stop = recipe.get("early_stop")
    for epoch in range(ckpt.epoch + 1, epochs + 1):
        why = _early_stopped(ckpt.history, stop)
        if why:
            log(why)
            break
        losses = [r[f"{part}_loss"] for r in ckpt.history]
        rate = lambda i: schedule.rate(epoch, i, losses)  # noqa: E731 (the epoch's, by call)
        t0 = time.perf_counter()
        train_loss = train_epoch(model, data, rng, batch, f"epoch {epoch}/{epochs}", rate)
        seconds = time.perf_counter() - t0
        kept = (f"{out / checkpoint.FILENAME} keeps epoch {ckpt.epoch}" if ckpt.epoch else
                "no checkpoint was written")
        bad = checkpoint.nonfinite(model.params, model.state)
        if bad:
            raise OdcError(f"the training diverged in epoch {epoch}: after its last step {bad}; {kept}\n"
                           f"hint: lower the learning rate (--lr)")
        ev = (evaluate(model, data.valid_x, data.valid_y, recipe["loss"], "validation") if held else
              evaluate(model, data.test_x, data.test_y, recipe["loss"]))
        if not math.isfinite(ev.loss):
            raise OdcError(f"the training diverged in epoch {epoch}: the {'validation' if held else 'test'} loss "
                           f"is {ev.loss} (some logits are not finite); {kept}\nhint: lower the learning rate (--lr)")
        record = {"epoch": epoch, "lr": rate(0), "train_loss": train_loss, f"{part}_loss": ev.loss,
                  f"{part}_accuracy": ev.accuracy}
        last = epoch == epochs or _early_stopped(ckpt.history + [record], stop)
        final = None
        if held and last and data.test_x is not None:
            final = evaluate(model, data.test_x, data.test_y, recipe["loss"])
        if held:
            record.update(test_loss=None if final is None else final.loss,
                          test_accuracy=None if final is None else final.accuracy)
        record.update(samples_per_s=batches * min(batch, n) / seconds, train_seconds=seconds,
                      eval_seconds=time.perf_counter() - t0 - seconds)
        log(f"epoch {epoch:>{len(str(epochs))}}/{epochs}  lr {record['lr']:.4g}  train loss {train_loss:.4f}  "
            f"{part} loss {ev.loss:.4f}  {part} accuracy {ev.accuracy:6.2%}  "
            f"{record['samples_per_s']:,.0f} images/s  {seconds:.1f}s")
        if final is not None:
            log(f"test loss {final.loss:.4f}  test accuracy {final.accuracy:6.2%} on the {len(data.test_y):,} "
                f"test images, after the {'last' if epoch == epochs else 'final'} epoch")
            ev = final
        ckpt.epoch = epoch
        ckpt.rng = {"shuffle": rng.bit_generator.state, "model": model.rng.bit_generator.state}
        ckpt.history.append(record)
        ckpt.params = dict(model.params)
        ckpt.state = dict(model.state)
        checkpoint.save(out / checkpoint.FILENAME, ckpt)
        if stop and _best_epoch(ckpt.history, stop["metric"]) == epoch:
            checkpoint.save(out / BEST, ckpt)
        try:
            write_metrics(out, ckpt.history)
            plot(out, ckpt.history, f"{ckpt.model} on {data.name}")
        except OdcError as e:
            raise OdcError(f"{e}\nnote: the checkpoint after epoch {epoch} is saved in {out}; "
                           f"continue with --resume {out}") from None
    return ev


def _best_epoch(history: list[dict], metric: str) -> int:
    """The first epoch with the best value of `metric` (lowest loss, highest accuracy)."""
    sign = -1 if metric.endswith("accuracy") else 1
    return min(history, key=lambda r: sign * r[metric])["epoch"]


def _early_stopped(history: list[dict], stop: dict | None) -> str | None:
    """Why the run stops after the last epoch of `history` (`early_stop(patience, metric)`: that
    many epochs without a strictly better metric), or None."""
    if not stop or not history:
        return None
    best = _best_epoch(history, stop["metric"])
    if history[-1]["epoch"] - best < stop["patience"]:
        return None
    return (f"early stop after epoch {history[-1]['epoch']}: {stop['metric']} has not improved for "
            f"{history[-1]['epoch'] - best} epochs (patience {stop['patience']}); the best, "
            f"{next(r for r in history if r['epoch'] == best)[stop['metric']]:.4f} after epoch {best}, "
            f"is kept in {BEST}")


# ---------------------------------------------------------------------------- the commands

def _epochs(n: int) -> str:
    return f"{n} epoch{'s' * (n != 1)}"


def _call_text(spec: dict, flagged: dict[str, str] | None = None) -> str:
    """{"name": "sgd", "lr": 0.1, ...} as the train block writes it: sgd(lr=0.1, ...); an
    argument a flag set is marked with it."""
    flagged = flagged or {}
    args = [f"{k}={_call_text(v) if isinstance(v, dict) else od_text(v)}"
            + (f" [{flagged[k]}]" if k in flagged else "") for k, v in spec.items() if k != "name" and v is not None]
    return f"{spec['name']}({', '.join(args)})"


def describe(recipe: dict, flags: dict[str, str]) -> str:
    """The recipe in one line: loss, optimizer, schedule, options, batch, epochs, seed; `flags`
    maps each key a command-line flag set to the flag, shown beside it."""
    mark = lambda key: f" [{flags[key]}]" if key in flags else ""  # noqa: E731
    parts = [f"augment [{', '.join(_call_text(a) for a in recipe['augment'])}]"] if recipe.get("augment") else []
    parts += [_call_text({"name": "normalize", **recipe["normalize"]})] if recipe.get("normalize") else []
    parts += [recipe["loss"] + (f"(label_smoothing={recipe['label_smoothing']:g})" if recipe.get("label_smoothing") else ""),
             _call_text(recipe["optimizer"], {"lr": flags["lr"]} if "lr" in flags else {})]
    if recipe.get("schedule"):
        parts.append(f"schedule {_call_text(recipe['schedule'])}")
    if recipe.get("clip_grad_norm") is not None:
        parts.append(f"clip_grad_norm {recipe['clip_grad_norm']:g}{mark('clip_grad_norm')}")
    if recipe.get("accumulate", 1) != 1 or "accumulate" in flags:
        parts.append(f"accumulate {recipe.get('accumulate', 1)}{mark('accumulate')}")
    if recipe.get("early_stop"):
        parts.append(_call_text({"name": "early_stop", **recipe["early_stop"]}))
    parts += [f"batch {recipe['batch']}{mark('batch')}", f"{_epochs(recipe['epochs'])}{mark('epochs')}",
              f"seed {recipe['seed']}{mark('seed')}"]
    return ", ".join(parts)


def _start(prog, path, out, resume, seed) -> tuple[Checkpoint, Path]:
    """The checkpoint to start from (the one in `resume`, or a new one) and the run folder."""
    if resume is None:
        run_dir = Path(out) if out is not None else Path("runs") / f"{prog.name}-{datetime.now():%Y%m%d-%H%M%S}"
        if (run_dir / checkpoint.FILENAME).exists():
            raise OdcError(f"{run_dir} already holds a run\nhint: continue it with --resume {run_dir}, "
                           f"or choose another --out")
        recipe = json.loads(json.dumps(prog.recipe))  # a copy, as the checkpoint will give it back
        return Checkpoint(prog.name, prog.source.text, str(path), {}, recipe=recipe), run_dir
    folder = Path(resume).expanduser()
    if folder.is_dir() and not (folder / checkpoint.FILENAME).exists() and (folder / METRICS).exists():
        raise OdcError(f"--resume {resume}: the run in that folder stopped before its first checkpoint "
                       f"(it holds {METRICS} but no {checkpoint.FILENAME}): there is nothing to resume\n"
                       f"hint: start it again without --resume: --out {resume}")
    ckpt, run_dir = checkpoint.read(resume), checkpoint.resolve(resume).parent
    if out is not None and Path(out).resolve() != run_dir.resolve():
        raise OdcError(f"--out {out} and --resume {resume}: a resumed run continues in its own folder")
    if seed is not None:
        raise OdcError("--seed cannot be combined with --resume: the run continues with the RNG states "
                       "saved in its checkpoint")
    if ckpt.source != prog.source.text or ckpt.model != prog.name:
        raise OdcError(f"{path}: error: differs from the model the run in {run_dir} was trained from "
                       f"({ckpt.model} in {ckpt.source_path})\nhint: resume with the same .od file, or "
                       f"start a new run without --resume")
    return ckpt, run_dir


FLAGS = {"epochs": "--epochs", "batch": "--batch", "seed": "--seed", "lr": "--lr", "accumulate": "--accumulate",
         "clip_grad_norm": "--clip-grad-norm"}  # the keys flags override, and the flags


def compile_and_train(path, *, train=None, epochs=None, batch=None, lr=None, seed=None, accumulate=None,
                      clip_grad_norm=None, data_dir=None, out=None, resume=None, log=print) -> Path:
    """`odc compile-and-train`: flags (not None) override the recipe. Returns the run folder."""
    prog = program.load(path, model=train)
    ckpt, run_dir = _start(prog, path, out, resume, seed)
    recipe = ckpt.recipe
    given = {"epochs": epochs, "batch": batch, "seed": seed, "lr": lr, "accumulate": accumulate,
             "clip_grad_norm": clip_grad_norm}
    flags = {key: FLAGS[key] for key, value in given.items() if value is not None}
    for key in flags:
        if key == "lr":
            recipe["optimizer"]["lr"] = lr
        else:
            recipe[key] = given[key]
    if recipe.get("schedule") and "epochs" in flags and schedules.past_the_end(recipe["schedule"], recipe["epochs"]):
        note(f"note: {schedules.past_the_end(recipe['schedule'], recipe['epochs'])} (--epochs {recipe['epochs']})")
    if not recipe.get("data"):
        raise OdcError(f"{path}: error: no data set to train {prog.name} on\nhint: add a train block "
                       f"with its data, e.g. 'train {prog.name}:' and 'data = emnist(\"balanced\")'")
    model = program.compile_model(prog, recipe, log=note)
    if resume is not None:
        program.restore(model, ckpt)
    data = _run_data(ckpt, data_dir)
    if data.train_x is None:
        raise OdcError(f"{data.name} in {data.source} has no training part"
                       f"{' (only a test part, which serves odc eval)' if data.test_x is not None else ''}: "
                       f"there is nothing to train {prog.name} on\nhint: add the training part beside it, "
                       f"or pass --data with the folder that holds it")
    _check_classes(model, data)
    _check_images(model, data)
    data = _held_out(data, recipe)
    stop = recipe.get("early_stop")
    if stop and stop["metric"].startswith("valid") and data.valid_x is None:
        raise OdcError(f"early_stop watches {stop['metric']}, but this run holds out no validation part "
                       f"({data.name} in {data.source} has a test part)\nhint: add 'valid = 0.1' to the train block")
    ckpt.classes = data.classes
    ckpt.data = ckpt.data or {"name": data.name, "source": data.source,
                              "dir": None if data_dir is None else str(Path(data_dir).resolve())}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OdcError(f"--out {run_dir}: error: cannot create the folder: {e.strerror}") from None
    write_metrics(run_dir, ckpt.history)
    n_params = sum(p.size for p in model.params.values())
    counts = [f"{len(data.train_y):,} train"]
    counts += [f"{len(data.valid_y):,} validation"] if data.valid_y is not None else []
    counts += [f"{len(data.test_y):,} test"] if data.test_y is not None else []
    log(f"{'resuming' if resume is not None else 'training'} {prog.name} ({path}, {n_params:,} parameters) "
        f"on {data.name}: {' / '.join(counts)} images, {len(data.classes)} classes")
    log(f"recipe: {describe(recipe, flags)}; run folder {run_dir}"
        + (f"; continuing after epoch {ckpt.epoch}" if resume is not None else ""))
    ev = fit(model, data, ckpt, run_dir, epochs=recipe["epochs"], batch=recipe["batch"], log=log)
    if ev is None and _early_stopped(ckpt.history, recipe.get("early_stop")):
        log("nothing to do: the run stopped early (above)")
    elif ev is None:
        log(f"nothing to do: the run already has {_epochs(ckpt.epoch)}\n"
            f"hint: pass --epochs N with N > {ckpt.epoch}")
    else:
        log(class_report(ev, data.classes))
        best = f"; best {run_dir / BEST}" if recipe.get("early_stop") else ""
        log(f"checkpoint {run_dir / checkpoint.FILENAME}{best}; metrics {run_dir / METRICS}; plot {run_dir / PLOT}")
    return run_dir


def _run_data(ckpt: Checkpoint, data_dir, parts=("train", "test"), quiet=False) -> Dataset:
    """The data set of a run: found from `data_dir` (--data) if given; else from where the run
    found it when it started, and then it must be the same data set. `parts`: those needed
    (a data set that can read one part alone reads only these)."""
    stored = ckpt.data
    if not ckpt.recipe.get("data"):
        raise OdcError(f"{ckpt.path}: error: the checkpoint names no data set (its model has no train block)\n"
                       f"hint: train it with 'odc compile-and-train' and a train block that sets data")
    data = load_dataset(ckpt.recipe["data"], data_dir if data_dir is not None else stored.get("dir"), parts)
    if data_dir is None and stored and (data.name, data.source) != (stored["name"], stored["source"]):
        raise OdcError(f"the run trained on {stored['name']} from {stored['source']}, but odc now finds "
                       f"{data.name} in {data.source}\nhint: pass --data with the folder the run trained on")
    if data.note and not quiet:
        note(f"note: {data.note}")
    return data


def _held_out(data: Dataset, recipe: dict) -> Dataset:
    """`data` with the recipe's validation part held out of its training part; without a test
    part and without `valid`, DEFAULT_VALID of it (written into the recipe)."""
    fraction = recipe.get("valid")
    if fraction is None and data.test_x is None:
        fraction = recipe["valid"] = DEFAULT_VALID
        note(f"note: {data.name} in {data.source} has no test part: {fraction:.0%} of the training part "
             f"(of each class, drawn with seed {recipe['seed']}) is held out for validation; "
             f"'valid = FRACTION' in the train block chooses another fraction")
    return data if fraction is None else hold_out(data, fraction, recipe["seed"])


def _check_classes(model, data: Dataset) -> None:
    g = model.program.graph
    out = g.type(g.outputs[0][1]).shape[-1]  # the logits' class dimension
    if out != len(data.classes):
        raise OdcError(f"the model has {out} outputs but {data.name} has {len(data.classes)} classes\n"
                       f"hint: give the model {len(data.classes)} outputs (e.g. classes = {len(data.classes)})")


def _input_shape(model) -> tuple:
    """[channels, height, width] of the images the model takes."""
    return tuple(model.program.graph.inputs()[0].type.shape[1:])


def _check_images(model, data: Dataset) -> None:
    """The front end checks a data set whose image shape it knows; this checks the others (idx)."""
    want, have = _input_shape(model), data.image_shape
    if want != have:
        shape = ", ".join(map(str, have))
        raise OdcError(f"the model takes images [{', '.join(map(str, want))}] but {data.name} in {data.source} "
                       f"has images [{shape}] (channels, height, width)\n"
                       f"hint: declare the model's input f32[N, {shape}]")


def eval_checkpoint(path, data_dir=None, log=print) -> Evaluation:
    """`odc eval`: accuracy of a checkpoint on the test part of its recipe's data set."""
    ckpt = checkpoint.read(path)
    model = program.build(ckpt, log=note)
    data = _run_data(ckpt, data_dir, parts=("test",), quiet=True)
    fraction = ckpt.recipe.get("valid")
    if fraction is not None and not (type(fraction) in (int, float) and 0 < fraction < 1):
        raise OdcError(f"{ckpt.path}: error: the checkpoint's recipe.valid is {fraction!r}, not a fraction "
                       f"between 0 and 1")
    if data.test_x is None and fraction:  # the part the run held out, as it held it out
        data = _run_data(ckpt, data_dir, parts=("train",))
    elif data.note:
        note(f"note: {data.note}")
    if ckpt.classes and data.classes != ckpt.classes:
        raise OdcError(f"{data.name} in {data.source} has other classes than the data the checkpoint "
                       f"was trained on")
    _check_classes(model, data)
    if data.test_x is not None:
        _check_images(model, data)
        images, labels, part = data.test_x, data.test_y, "test"
    elif data.train_x is not None and fraction:
        _check_images(model, data)
        data = hold_out(data, fraction, ckpt.recipe["seed"])
        images, labels, part = data.valid_x, data.valid_y, "validation"
        note(f"note: {data.name} in {data.source} has no test part: evaluating on the validation part the run "
             f"held out ({fraction:g} of the training part, seed {ckpt.recipe['seed']})")
    else:
        raise OdcError(f"{data.name} in {data.source} has no test part to evaluate {ckpt.model} on\n"
                       f"hint: pass --data with a folder that holds the test part")
    ev = evaluate(model, images, labels, ckpt.recipe["loss"], part)
    log(f"{ckpt.model} after {_epochs(ckpt.epoch)}, on {data.name} ({len(labels):,} {part} images): "
        f"top-1 accuracy {ev.accuracy:.2%}, loss {ev.loss:.4f}")
    log(class_report(ev, data.classes))
    return ev


def read_image(path, size: int = 28) -> tuple[np.ndarray, str]:
    """A picture of one character as uint8 [size, size], white on black like EMNIST; also a note
    on what was done to it. Colour and transparency are flattened onto white, then grey. If the
    border is mostly light, the picture is taken as dark ink on light paper and inverted. A picture
    of another size is cropped to its ink, centred in a square with a small margin and resized
    (bicubic), as EMNIST prepared its images; a size x size picture is used as it is."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGBA")
            grey = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im).convert("L")
    except FileNotFoundError:
        raise OdcError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise OdcError(f"{path}: error: cannot read the image: {e}") from None
    x = np.asarray(grey, np.float64) / 255
    notes = []
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    if np.median(border) > 0.5:
        x = 1 - x
        notes.append("inverted (dark on light)")
    if x.shape != (size, size):
        ink = x > 0.5 * x.max()
        if not ink.any():
            raise OdcError(f"{path}: error: the image is blank")
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        crop = x[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        side = max(crop.shape) + max(2, max(crop.shape) // 8)
        square = np.zeros((side, side))
        top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
        square[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
        small = Image.fromarray(np.uint8(square / square.max() * 255)).resize((size, size), Image.BICUBIC)
        x = np.asarray(small, np.float64) / 255
        notes.append(f"cropped to the character and resized from {grey.width}x{grey.height}")
    return np.uint8(np.clip(x, 0, 1) * 255 + 0.5), ", ".join(notes) or f"used as it is ({size}x{size})"


def read_picture(path, size: tuple[int, int], channels: int) -> tuple[np.ndarray, str]:
    """A picture as uint8 [channels, h, w], converted and resized as `imagefolder` prepares its
    images (RGB or grey, bilinear); also a note on what was done to it."""
    from PIL import Image

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise OdcError(f"{path}: no such file") from None
    except OSError as e:
        raise OdcError(f"{path}: error: cannot read: {e.strerror or e}") from None
    image = decode_image(data, f"{path}", size, channels, formats=None)
    with Image.open(io.BytesIO(data)) as im:
        (w0, h0), mode = im.size, im.mode
    want = "RGB" if channels == 3 else "L"
    notes = [] if mode == want else [f"converted from {mode} to {'RGB' if channels == 3 else 'grey'}"]
    notes += [f"resized from {w0}x{h0} to {size[1]}x{size[0]}"] if (h0, w0) != tuple(size) else []
    return image, ", ".join(notes) or f"used as it is ({size[1]}x{size[0]})"


def predict(ckpt_path, image_path, top: int = 5, log=print) -> list[tuple[str, float]]:
    """`odc predict`: the `top` most likely classes of one image, with probabilities. The picture
    is prepared for the model's input: a grey square input of a character data set (EMNIST, MNIST,
    Fashion-MNIST, idx) as `read_image` frames a character; any other as `read_picture`."""
    ckpt = checkpoint.read(ckpt_path)
    model = program.build(ckpt, log=note)
    shape = _input_shape(model)
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape):
        raise OdcError(f"{ckpt.model} takes {model.program.graph.inputs()[0].type}, not a batch of images "
                       f"[N, channels, height, width]: odc predict has no picture to give it")
    channels, h, w = shape
    kind = (ckpt.recipe.get("data") or ["emnist"])[0]
    if channels == 1 and h == w and kind in ("emnist", "mnist", "fashion_mnist", "idx"):
        image, how = read_image(image_path, h)
    else:
        image, how = read_picture(image_path, (h, w), channels)
    logits = model.forward(batch_of(model, image[None])).astype(np.float64)[0]
    prob = np.exp(log_softmax_ref(logits, {}))
    classes = ckpt.classes or [str(i) for i in range(len(prob))]
    best = [(classes[i], float(prob[i])) for i in np.argsort(-prob, kind="stable")[:top]]
    log(f"{image_path}: {how}")
    width = max(5, *(len(repr(c)) for c, _ in best))
    for rank, (c, p) in enumerate(best, 1):
        log(f"  {rank}. {c!r:<{width}} {p:7.2%}")
    return best
