"""The `train NAME:` block → a `Recipe`: data set, loss, optimizer and its arguments, epochs,
batch size, seed. Every value is a constant; each key is checked on its own, so several bad keys
are reported together. `data` is required; another key left out keeps the `Recipe` default.
The model's graph carries the recipe as a dict (`Recipe.as_dict`) in ``graph.meta["recipe"]``."""
from __future__ import annotations

from dataclasses import dataclass, field

from odc.errors import Diagnostic, Span
from odc.frontend import ast
from odc.frontend.lower import Fail, as_call, bind, did_you_mean, is_number, literal

# classes per data set; EMNIST letters has labels 1..26, which the loader maps to classes 0..25
EMNIST_CLASSES = {"balanced": 47, "bymerge": 47, "byclass": 62, "letters": 26, "digits": 10, "mnist": 10}
DATA = {"emnist": "split", "mnist": "", "fashion_mnist": "", "idx": "dir"}
LOSSES = ("cross_entropy", "mse")
# optimizer -> (parameters, defaults); the defaults are PyTorch's
OPTIMIZERS = {
    "sgd": ("lr, momentum=0, nesterov=false, weight_decay=0",
            {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0}),
    "adam": ("lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0",
             {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}),
    "adamw": ("lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01",
              {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}),
}
KEYS = ("data", "loss", "optimizer", "epochs", "batch", "seed")


@dataclass
class Recipe:
    model: str
    data: tuple | None = None  # ("emnist", SPLIT), ("mnist",), ("fashion_mnist",) or ("idx", DIR)
    classes: int | None = None  # the data set's class count, None where unknown before loading
    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    optimizer_args: dict = field(default_factory=lambda: {"lr": 0.01, **OPTIMIZERS["sgd"][1]})
    epochs: int = 1
    batch: int = 32
    seed: int = 0
    span: Span | None = None  # `train NAME`
    spans: dict[str, Span] = field(default_factory=dict)  # key -> its `key = value` statement

    def as_dict(self) -> dict:
        """The recipe as the rest of odc reads it from ``graph.meta["recipe"]`` (JSON-ready)."""
        return {"data": list(self.data) if self.data else None, "loss": self.loss,
                "optimizer": {"name": self.optimizer, **self.optimizer_args},
                "epochs": self.epochs, "batch": self.batch, "seed": self.seed}

    @property
    def data_text(self) -> str | None:
        if self.data is None:
            return None
        kind, *args = self.data
        quoted = ", ".join(f'"{a}"' for a in args)
        return f"{kind}({quoted})"


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
    if "data" not in r.spans:
        diags.append(Diagnostic(f"the train block of {t.model} sets no data", t.span,
                                'add data = emnist("balanced"), mnist(), fashion_mnist() or idx("DIR")'))
    return r


def _choose(e: ast.Expr, what: str, table) -> tuple[str, dict[str, tuple]]:
    """A call (or bare name) of one of `table`'s entries: its name and arguments (name → (value, span))."""
    call = as_call(e)
    if call is None or call.func not in table:
        name = call.func if call else ""
        usage = [n + (f"({table[n]})" if isinstance(table, dict) else "") for n in table]
        raise Fail(f"unknown {what} '{name}'" if name else f"expected a {what}", e.span,
                   did_you_mean(name, table) or f"one of {', '.join(usage)}")
    usage = table[call.func] if isinstance(table, dict) else ""
    return call.func, {n: (literal(x), x.span) for n, x in bind(call.func, usage, call).items()}


def _set_data(r: Recipe, e: ast.Expr) -> None:
    kind, args = _choose(e, "data set", DATA)
    for v, span in args.values():  # the EMNIST split or the idx folder
        if not isinstance(v, str):
            raise Fail(f"{kind} expects a string, got {v!r}", span)
        if kind == "emnist" and v not in EMNIST_CLASSES:
            raise Fail(f"unknown EMNIST split \"{v}\"", span,
                       did_you_mean(v, EMNIST_CLASSES) or f"one of {', '.join(EMNIST_CLASSES)}")
    r.data = (kind, *(v for v, _ in args.values()))
    r.classes = EMNIST_CLASSES[r.data[1]] if kind == "emnist" else {"mnist": 10, "fashion_mnist": 10}.get(kind)


def _set_loss(r: Recipe, e: ast.Expr) -> None:
    r.loss, _ = _choose(e, "loss", LOSSES)


def _set_optimizer(r: Recipe, e: ast.Expr) -> None:
    name, args = _choose(e, "optimizer", {n: usage for n, (usage, _) in OPTIMIZERS.items()})
    values = dict(OPTIMIZERS[name][1])
    for key, (v, span) in args.items():
        if key == "nesterov":
            if not isinstance(v, bool):
                raise Fail(f"{name}: nesterov must be true or false, got {v!r}", span)
        elif not is_number(v) or v < 0 or (key == "lr" and v == 0):
            raise Fail(f"{name}: {key} must be a {'positive' if key == 'lr' else 'non-negative'} number, got {v!r}",
                       span)
        values[key] = v if key == "nesterov" else float(v)
    if values.get("nesterov") and values["momentum"] == 0:
        raise Fail("sgd: nesterov needs a momentum > 0", e.span)
    r.optimizer, r.optimizer_args = name, {"lr": values.pop("lr"), **values}


def _count(key: str, lo: int):
    def setter(r: Recipe, e: ast.Expr) -> None:
        v = literal(e)
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
            raise Fail(f"{key} must be {'a positive integer' if lo else 'an integer >= 0'}, got {v!r}", e.span)
        setattr(r, key, v)
    return setter


_SETTERS = {"data": _set_data, "loss": _set_loss, "optimizer": _set_optimizer,
            "epochs": _count("epochs", 1), "batch": _count("batch", 1), "seed": _count("seed", 0)}
