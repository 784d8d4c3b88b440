"""Augmentation: the train block's `augment` and `normalize` built into the graph.

With neither in the recipe, or with an image input that is uint8 already (the pass, or its
evaluation form, has run), the graph is left as it is. With either, the image input (the
graph's first, f32[N, C, H, W]) becomes a u8 input of the same name and shape, the pixels as
stored (the runtime keeps images as uint8), and its users read instead:

1. (training only: the `augment` pass) each augmentation of the list, in order, on [0, 1]
   floats. Consecutive geometric ones (random_crop, hflip, vflip, rotate, translate) make one
   `warp` whose operands are one f32[N, 2, 3] matrix input per augmentation; the others are
   elementwise ops over an input per augmentation: brightness `clip(x * f, 0, 1)`; contrast
   `clip(x * f + m * (1 - f), 0, 1)` with m the mean of the image's grey values (its mean for
   one channel); saturation `clip(x * f + grey * (1 - f), 0, 1)` (nothing for one channel),
   f an f32[N, 1, 1, 1] input and grey = 0.2989 r + 0.587 g + 0.114 b as torchvision's
   `adjust_*`; gaussian_noise `clip(x + noise, 0, 1)` with an f32[N, C, H, W] input;
   random_erasing `x * mask` with an f32[N, 1, H, W] input; mixup and cutmix (torchvision v2's,
   on the batch: each image mixed with the one before it, the first with the last) `w * x +
   (1 - w) * P x` with a weight input w (mixup: f32[1, 1, 1, 1] holding lam ~ Beta(alpha, alpha);
   cutmix: an f32[1, 1, H, W] mask, 0 in the pasted box) and the permutation matrix P of the
   roll, an f32[N, N] input `<name>.roll`; autodiff weights the labels with mean(w). The conversion to [0, 1] (`/255`)
   is the first warp when the list starts with one, else an elementwise `from_u8`.
2. normalize, `(x - mean) / std` per channel (constants `per_channel`), last.
The evaluation form (the `normalize` pass, in the forward pipeline) converts and normalizes only.

Each input made for an augmentation is named `<augmentation><k>.<what>` (k counts that
augmentation from 1: `hflip1.matrix`, `brightness1.factor`, `gaussian_noise1.noise`,
`random_erasing1.mask`) and carries the attribute `augment=NAME` with the augmentation's
arguments (and `image=[H, W]` for a geometric one): `odc.ir.ops.augment.draw_inputs` draws their
values for each step from the run's generator. None of the new nodes is differentiable, and none
needs to be: nothing they compute depends on a parameter.
"""
from __future__ import annotations

from odc.errors import OdcError
from odc.ir.graph import Graph, TensorType
from odc.ir.ops import Emit
from odc.ir.ops.augment import GEOMETRIC, GRAY, MIXING, augment_problem, list_problem, normalize_problem

name = "augment"
summary = "the image input becomes uint8; the train block's augmentations and normalize follow it"
options = {"normalize": "{mean: [...], std: [...]} (default: the train block's)",
           "augment": "a list of augmentations {name: ..., argument: value} (default: the train block's)"}
eval_summary = "the image input becomes uint8, converted and normalized (augment's evaluation form)"
eval_options = {"normalize": options["normalize"]}
WHAT = {"gaussian_noise": "noise", "random_erasing": "mask"}  # the input's name; a geometric one's is matrix


def run(g: Graph, normalize: dict | None = None, augment: list | None = None) -> Graph:
    """`normalize` and `augment` default to the train block's."""
    recipe = g.meta.get("recipe") or {}
    augment = recipe.get("augment", []) if augment is None else augment
    return _build(g, recipe.get("normalize") if normalize is None else normalize, augment, training=True)


def run_eval(g: Graph, normalize: dict | None = None) -> Graph:
    """The evaluation form: normalize only (the image is still u8 when the train block augments)."""
    recipe = g.meta.get("recipe") or {}
    return _build(g, recipe.get("normalize") if normalize is None else normalize,
                  recipe.get("augment", []), training=False)


def done(g: Graph) -> bool:
    """Whether the image input is converted in the graph already (by this pass, or its other form)."""
    return bool(g.inputs()) and g.inputs()[0].type.dtype == "u8"


def _build(g: Graph, normalize: dict | None, augment: list, training: bool) -> Graph:
    if (not normalize and not augment) or done(g):
        return g
    g = g.copy()
    image = g.inputs()[0]
    t = image.type
    if t.dtype != "f32" or t.rank != 4 or not all(isinstance(d, int) for d in t.shape[1:]):
        raise OdcError(f"augment and normalize need an image input f32[N, C, H, W] with known C, H, W; "
                       f"input '{image.name}' is {t}")
    c, h, w = t.shape[1:]
    for problem in ([augment_problem(a, (c, h, w)) for a in augment]
                    + [normalize_problem(normalize, c) if normalize else None,
                       list_problem(augment, (g.meta.get("recipe") or {}).get("loss", "cross_entropy"))]):
        if problem:
            raise OdcError(problem)
    users = g.users(image.id)
    image.type = TensorType("u8", t.shape)
    e = Emit(g, image.span)
    x = image.id
    count: dict[str, int] = {}

    def param(a: dict, shape, what: str, **extra) -> int:
        count[a["name"]] = count.get(a["name"], 0) + 1
        attrs = {"augment": a["name"], **{k: v for k, v in a.items() if k != "name"}, **extra}
        return g.add("input", attrs=attrs, type=TensorType("f32", shape), span=image.span,
                     name=f"{a['name']}{count[a['name']]}.{what}")

    todo = list(augment) if training else []
    while todo:
        if todo[0]["name"] in GEOMETRIC:
            maps = []
            while todo and todo[0]["name"] in GEOMETRIC:
                maps.append(param(todo.pop(0), (t.shape[0], 2, 3), "matrix", image=[h, w]))
            x = e("warp", x, *maps)
            continue
        a = todo.pop(0)
        if a["name"] in MIXING:
            x = _mix(g, e, _as_float(e, x), param(a, (1, 1, 1, 1) if a["name"] == "mixup" else (1, 1, h, w), "weight"))
        else:
            x = _photometric(e, _as_float(e, x), a, param, t.shape)
    x = _as_float(e, x)
    if normalize:
        x = e("div", e("sub", x, e("per_channel", values=[float(v) for v in normalize["mean"]])),
              e("per_channel", values=[float(v) for v in normalize["std"]]))
    for u in users:
        g.set_args(u, (x if v == image.id else v for v in g.node(u).args))
    g.outputs = [(n, x if v == image.id else v) for n, v in g.outputs]
    return g


def _mix(g: Graph, e: Emit, x: int, weight: int) -> int:
    """weight * x + (1 - weight) * the batch rolled by one (the image before, the first takes the
    last), the roll as a product with a permutation-matrix input `<mixing>.roll` (exact: one term
    per element is not 0). The weight input also weights the labels (autodiff)."""
    n, c, h, w = e.shape(x)
    name = g.node(weight).name.rsplit(".", 1)[0]
    roll = g.add("input", attrs={"augment": "roll"}, type=TensorType("f32", (n, n)), span=g.node(weight).span,
                 name=f"{name}.roll")
    partner = e("reshape", e("matmul", roll, e("reshape", x, shape=[n, c * h * w])), shape=[n, c, h, w])
    return e("add", e("mul", x, weight), e("mul", partner, e("sub", e.const(1, "f32"), weight)))


def mixing(g: Graph) -> tuple[int, int] | None:
    """The weight and roll inputs of the graph's mixup or cutmix, if it has one."""
    found = {m.attrs["augment"]: m.id for m in g.inputs() if m.attrs.get("augment") in (*MIXING, "roll")}
    weight = next((found[k] for k in MIXING if k in found), None)
    return None if weight is None else (weight, found["roll"])


def _as_float(e: Emit, x: int) -> int:
    return e("from_u8", x) if e.dtype(x) == "u8" else x


def _clip(e: Emit, x: int) -> int:
    return e("clip", x, lo=0.0, hi=1.0)


def _blend(e: Emit, x: int, other: int, f: int) -> int:
    """torchvision's `_blend`: clamp(f * x + (1 - f) * other, 0, 1)."""
    return _clip(e, e("add", e("mul", x, f), e("mul", other, e("sub", e.const(1, "f32"), f))))


def _grey(e: Emit, x: int) -> int:
    """torchvision's rgb_to_grayscale, [N, 1, H, W]."""
    r, gr, b = (e("mul", e("slice", x, axis=1, start=k, stop=k + 1), e.const(wt, "f32"))
                for k, wt in enumerate(GRAY))
    return e("add", e("add", r, gr), b)


def _photometric(e: Emit, x: int, a: dict, param, shape) -> int:
    n, c, h, w = shape
    name = a["name"]
    if name == "saturation" and c == 1:  # torchvision leaves a grey image as it is
        return x
    if name in ("brightness", "contrast", "saturation"):
        f = param(a, (n, 1, 1, 1), "factor")
        if name == "brightness":
            return _clip(e, e("mul", x, f))
        if name == "contrast":
            return _blend(e, x, e("mean", _grey(e, x) if c == 3 else x, axis=[1, 2, 3], keepdims=True), f)
        return _blend(e, x, _grey(e, x), f)
    if name == "gaussian_noise":
        return _clip(e, e("add", x, param(a, shape, WHAT[name])))
    if name == "random_erasing":
        return e("mul", x, param(a, (n, 1, h, w), WHAT[name]))
    raise OdcError(f"odc cannot build the augmentation {name} yet")
