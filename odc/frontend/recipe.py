"""The `train NAME:` block → a `Recipe`: data set, validation fraction, loss, optimizer and its
arguments, learning-rate schedule, gradient clipping and accumulation, early stopping, epochs,
batch size, seed. Every value is a constant; each key is checked on its own, so several bad keys
are reported together (and then the keys together: a schedule milestone past the last epoch).
`data` is required; another key left out keeps the `Recipe` default.
The model's graph carries the recipe as a dict (`Recipe.as_dict`) in ``graph.meta["recipe"]``."""
from __future__ import annotations

from dataclasses import dataclass, field

from odc.errors import Diagnostic, OdcError, Span
from odc.frontend import ast
from odc.frontend.lower import Fail, as_call, bind, did_you_mean, is_number, literal, od_text
from odc.ir.ops.augment import AUGMENTATIONS, augment_problem, list_problem, normalize_problem
from odc.ir.passes.autodiff import LOSSES
from odc.ir.passes.optimizer import BOOLEAN, DEFAULT, OPTIMIZERS, hyper_parameters, invalid
from odc import datasets, schedules
from odc.datasets import EMNIST_SPLITS


def _usage(params: dict) -> str:
    """A call's parameters as a train block writes them, e.g. "lr, momentum=0, nesterov=false"."""
    return ", ".join(k if v is None else f"{k}={v:g}" if is_number(v) else f"{k}={od_text(v)}"
                     for k, v in params.items())


OPTIMIZER_USAGE = {name: _usage(params) for name, params in OPTIMIZERS.items()}
KEYS = ("data", "valid", "augment", "normalize", "loss", "optimizer", "schedule", "clip_grad_norm", "accumulate",
        "early_stop", "epochs", "batch", "seed")
AUGMENT_USAGE = {name: _usage(args) for name, args in AUGMENTATIONS.items()}
EARLY_STOP_METRICS = ("valid_loss", "valid_accuracy", "train_loss")
SCHEDULE_USAGE = {name: _usage(args).replace("then", "then=SCHEDULE") for name, args in schedules.SCHEDULES.items()}


@dataclass
class Recipe:
    model: str
    data: tuple | None = None  # ("emnist", SPLIT), ("mnist",), ("idx", DIR), ... (see odc.datasets)
    valid: float | None = None  # the fraction of the training part held out for validation
    classes: int | None = None  # the data set's class count, None where unknown before loading
    image: tuple[int, int, int] | None = None  # [channels, height, width] of its images, where known
    augment: list[dict] | None = None  # [{"name": "hflip", "p": 0.5}, ...] (see odc.ir.ops.augment)
    augment_spans: list[Span] = field(default_factory=list)  # each entry's call
    normalize: dict | None = None  # {"mean": [...], "std": [...]}
    loss: str = "cross_entropy"
    label_smoothing: float = 0.0  # cross_entropy's
    optimizer: str = DEFAULT["name"]
    optimizer_args: dict = field(  # the optimizer's hyper-parameters
        default_factory=lambda: {k: v for k, v in hyper_parameters(DEFAULT).items() if k != "name"})
    schedule: dict | None = None  # {"name": ..., argument: value, ...} (see odc.schedules)
    clip_grad_norm: float | None = None
    accumulate: int = 1
    early_stop: dict | None = None  # {"patience": ..., "metric": ...}
    epochs: int = 1
    batch: int = 32
    seed: int = 0
    span: Span | None = None  # `train NAME`
    spans: dict[str, Span] = field(default_factory=dict)  # key -> its `key = value` statement

    def as_dict(self) -> dict:
        """The recipe as the rest of odc reads it from ``graph.meta["recipe"]`` (JSON-ready)."""
        return {"data": list(self.data) if self.data else None,
                **({"valid": self.valid} if self.valid is not None else {}),
                **{k: getattr(self, k) for k in ("augment", "normalize") if getattr(self, k) is not None},
                "loss": self.loss,
                **({"label_smoothing": self.label_smoothing} if self.label_smoothing else {}),
                "optimizer": {"name": self.optimizer, **self.optimizer_args},
                **{k: getattr(self, k) for k in ("schedule", "clip_grad_norm", "early_stop")
                   if getattr(self, k) is not None},
                **({"accumulate": self.accumulate} if self.accumulate != 1 else {}),
                "epochs": self.epochs, "batch": self.batch, "seed": self.seed}

    def image_problems(self, image: tuple[int, int, int]) -> list[Diagnostic]:
        """What does not fit images of `image` = (C, H, W), the model's input: each augmentation
        at its place, and normalize's lists."""
        found = [Diagnostic(p, span) for entry, span in zip(self.augment or [], self.augment_spans)
                 if (p := augment_problem(entry, image))]
        problem = self.normalize and normalize_problem(self.normalize, image[0])
        found += [Diagnostic(problem, self.spans["normalize"])] if problem else []
        problem = self.augment and list_problem(self.augment, self.loss)
        return found + ([Diagnostic(problem, self.spans["augment"])] if problem else [])

    @property
    def data_text(self) -> str | None:
        return None if self.data is None else datasets.data_text(self.data)


def lower_train(t: ast.Train, diags: list[Diagnostic]) -> Recipe:
    r = Recipe(t.model, span=t.span)
    for item in t.items:
        key_span = Span(item.span.source, item.span.line, item.span.col, item.span.line,
                        item.span.col + len(item.key))
        try:
            if item.key not in KEYS:
                raise Fail(f"unknown train key '{item.key}'", key_span,
                           did_you_mean(item.key, KEYS) or f"the keys are {', '.join(KEYS)}")
            if item.key in r.spans:
                raise Fail(f"{item.key} is set twice", key_span)
            r.spans[item.key] = item.span
            _SETTERS[item.key](r, item.value)
        except Fail as e:
            diags.append(e.diagnostic)
    if r.schedule and "schedule" in r.spans:
        problem = schedules.past_the_end(r.schedule, r.epochs)
        if problem:
            diags.append(Diagnostic(problem, r.spans["schedule"],
                                    f"epochs = {r.epochs}{'' if 'epochs' in r.spans else ' (the default)'}"))
    if "data" not in r.spans:
        diags.append(Diagnostic(f"the train block of {t.model} sets no data", t.span,
                                'add data = emnist("balanced"), mnist(), fashion_mnist(), idx("DIR"), '
                                'cifar10() or imagefolder("DIR", size=[h, w])'))
    return r


def _choose_exprs(e: ast.Expr, what: str, table) -> tuple[str, dict[str, ast.Expr]]:
    """A call (or bare name) of one of `table`'s entries: its name and argument expressions."""
    call = as_call(e)
    if call is None or call.func not in table:
        name = call.func if call else ""
        usage = [n + (f"({table[n]})" if isinstance(table, dict) else "") for n in table]
        raise Fail(f"unknown {what} '{name}'" if name else f"expected a {what}", e.span,
                   did_you_mean(name, table) or f"one of {', '.join(usage)}")
    return call.func, bind(call.func, table[call.func] if isinstance(table, dict) else "", call)


def _choose(e: ast.Expr, what: str, table) -> tuple[str, dict[str, tuple]]:
    """As `_choose_exprs`, with constant arguments: name → (value, span)."""
    name, args = _choose_exprs(e, what, table)
    return name, {n: (literal(x), x.span) for n, x in args.items()}


def _set_data(r: Recipe, e: ast.Expr) -> None:
    call = as_call(e)
    if call is not None and call.func == "imagefolder":
        r.data = _imagefolder(call)
    else:
        kind, args = _choose(e, "data set", datasets.KINDS)
        for v, span in args.values():  # the EMNIST split or the idx folder
            if not isinstance(v, str):
                raise Fail(f"{kind} expects a string, got {od_text(v)}", span)
            if kind == "emnist" and v not in EMNIST_SPLITS:
                raise Fail(f"unknown EMNIST split {od_text(v)}", span,
                           did_you_mean(v, EMNIST_SPLITS) or f"one of {', '.join(EMNIST_SPLITS)}")
        r.data = (kind, *(v for v, _ in args.values()))
    r.classes, r.image = datasets.classes(*r.data), datasets.image_shape(*r.data)


def _imagefolder(call: ast.Call) -> tuple[str, ...]:
    """imagefolder(DIR, size=[h, w] or size=S, channels=3): each argument checked at its place."""
    args = bind("imagefolder", datasets.KINDS["imagefolder"], call)
    folder = literal(args["dir"])
    if not isinstance(folder, str):
        raise Fail(f"imagefolder expects a string, got {od_text(folder)}", args["dir"].span,
                   'the folder of class folders, or a .tar/.tar.gz of them, e.g. "data/pets"')
    if not folder.strip():
        raise Fail("imagefolder expects a folder name, got an empty string", args["dir"].span)
    size = args["size"]
    items = size.items if isinstance(size, ast.List) else [size]
    values = [literal(i) for i in items]
    top = datasets.MAX_SIDE
    count = 2 if isinstance(size, ast.List) else 1
    if len(values) != count or not all(type(v) is int and 1 <= v <= top for v in values):
        shown = od_text(values) if isinstance(size, ast.List) else od_text(values[0])
        raise Fail(f"imagefolder: size must be [height, width] (or one side for a square), integers from "
                   f"1 to {top:,}, got {shown}", size.span, "e.g. size=[32, 32]: every image is resized to it")
    h, w = values * 2 if len(values) == 1 else values
    channels = literal(args["channels"]) if "channels" in args else 3
    if not (type(channels) is int and channels in datasets.IMAGEFOLDER_CHANNELS):
        raise Fail(f"imagefolder: channels must be 1 (grey) or 3 (RGB), got {od_text(channels)}",
                   args["channels"].span)
    return datasets.imagefolder_spec(folder, (h, w), channels)


def _set_valid(r: Recipe, e: ast.Expr) -> None:
    v = literal(e)
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1):
        raise Fail(f"valid must be a fraction between 0 and 1 (exclusive), got {od_text(v)}", e.span,
                   "the fraction of the training part held out for validation, e.g. valid = 0.1")
    r.valid = float(v)


def _set_loss(r: Recipe, e: ast.Expr) -> None:
    r.loss, args = _choose(e, "loss", LOSSES)
    if "label_smoothing" in args:
        v, span = args["label_smoothing"]
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1):
            raise Fail(f"cross_entropy: label_smoothing must be a number in [0, 1], got {od_text(v)}", span,
                       "the share of the target spread over all classes, as PyTorch's, e.g. 0.1")
        r.label_smoothing = float(v)


def _set_optimizer(r: Recipe, e: ast.Expr) -> None:
    """Each argument is checked at its place; `optimizer.hyper_parameters` checks the rest."""
    name, args = _choose(e, "optimizer", OPTIMIZER_USAGE)
    for key, (v, span) in args.items():
        problem = invalid(key, v)
        if problem:
            raise Fail(f"{name}: {key} must be {problem}, got {od_text(v)}", span)
    values = {k: v if k in BOOLEAN else float(v) for k, (v, _) in args.items()}
    try:
        hp = hyper_parameters({"name": name, **values})
    except OdcError as err:
        raise Fail(str(err), e.span) from None
    r.optimizer, r.optimizer_args = hp.pop("name"), hp


def _constant(e: ast.Expr):
    """A constant, or a list of constants."""
    return [literal(i) for i in e.items] if isinstance(e, ast.List) else literal(e)


def _set_augment(r: Recipe, e: ast.Expr) -> None:
    """A list of augmentation calls; whether each fits the images is checked with the model's
    input (`image_problems`)."""
    if not isinstance(e, ast.List):
        raise Fail("augment must be a list of augmentations", e.span, "e.g. augment = [random_crop(32, pad=4), hflip()]")
    r.augment = []
    for item in e.items:
        name, args = _choose_exprs(item, "augmentation", AUGMENT_USAGE)
        r.augment.append({"name": name, **AUGMENTATIONS[name], **{k: _constant(x) for k, x in args.items()}})
        r.augment_spans.append(item.span)


def _set_normalize(r: Recipe, e: ast.Expr) -> None:
    _, args = _choose_exprs(e, "normalization", {"normalize": "mean, std"})
    values = {k: _constant(x) for k, x in args.items()}
    for key, x in args.items():
        v = values[key]
        if not (isinstance(v, list) and v and all(is_number(i) for i in v)):
            raise Fail(f"normalize: {key} must be a list of numbers, one per channel, got {od_text(v)}", x.span,
                       "e.g. normalize(mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616])")
    r.normalize = {k: [float(i) for i in v] for k, v in values.items()}


def _schedule(e: ast.Expr) -> dict:
    """A schedule call, each argument checked at its place (`then=` holds another schedule)."""
    name, args = _choose_exprs(e, "schedule", SCHEDULE_USAGE)
    spec = {"name": name, **schedules.SCHEDULES[name]}
    for key, x in args.items():
        if key == "then":
            if as_call(x) is None:
                raise Fail("warmup: then must be a schedule, e.g. then=cosine()", x.span)
            v = _schedule(x)
        else:
            v = _constant(x)
        problem = schedules.invalid(name, key, v)
        if problem:
            raise Fail(f"{name}: {key} must be {problem}, got {od_text(v) if key != 'then' else v['name']}", x.span)
        spec[key] = float(v) if isinstance(v, int) and schedules.VALID[name, key][0].startswith("a number") else v
    return spec


def _set_schedule(r: Recipe, e: ast.Expr) -> None:
    r.schedule = _schedule(e)


def _set_clip(r: Recipe, e: ast.Expr) -> None:
    v = literal(e)
    problem = invalid("clip_grad_norm", v)
    if problem:
        raise Fail(f"clip_grad_norm must be {problem}, got {od_text(v)}", e.span,
                   "the largest global gradient norm, e.g. clip_grad_norm = 1.0")
    r.clip_grad_norm = float(v)


def _set_early_stop(r: Recipe, e: ast.Expr) -> None:
    _, args = _choose(e, "early stop", {"early_stop": 'patience, metric="valid_loss"'})
    if "patience" not in args:
        raise Fail("early_stop is missing argument 'patience'", e.span,
                   'usage: early_stop(patience, metric="valid_loss")')
    (patience, p_span), (metric, m_span) = args["patience"], args.get("metric", ("valid_loss", None))
    if not (type(patience) is int and patience >= 1):
        raise Fail(f"early_stop: patience must be an integer >= 1, got {od_text(patience)}", p_span,
                   "the epochs without improvement after which training stops")
    if metric not in EARLY_STOP_METRICS:
        raise Fail(f"early_stop: metric must be one of {', '.join(map(od_text, EARLY_STOP_METRICS))}, "
                   f"got {od_text(metric)}", m_span, did_you_mean(str(metric), EARLY_STOP_METRICS))
    r.early_stop = {"patience": patience, "metric": metric}


def _count(key: str, lo: int, hi: int):
    def setter(r: Recipe, e: ast.Expr) -> None:
        v = literal(e)
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
            raise Fail(f"{key} must be an integer from {lo} to {hi:,}, got {od_text(v)}", e.span)
        setattr(r, key, v)
    return setter


LIMITS = {"epochs": (1, 100_000), "batch": (1, 1_000_000), "seed": (0, 2**63 - 1),  # (lo, hi), inclusive
          "accumulate": (1, 1_000_000)}
_SETTERS = {"data": _set_data, "valid": _set_valid, "augment": _set_augment, "normalize": _set_normalize,
            "loss": _set_loss, "optimizer": _set_optimizer,
            "schedule": _set_schedule, "clip_grad_norm": _set_clip, "early_stop": _set_early_stop,
            **{key: _count(key, lo, hi) for key, (lo, hi) in LIMITS.items()}}
