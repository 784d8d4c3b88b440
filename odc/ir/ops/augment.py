"""Input handling and data augmentation in the training step: the train block's `augment` and
`normalize` (the augment pass builds them into the graph; semantics are torchvision's).

The train block's entries, as the recipe holds them (`{"name": "hflip", "p": 0.5}`, every
argument present): `AUGMENTATIONS` lists each augmentation's arguments and defaults (None:
required), `augment_problem` and `normalize_problem` say what is wrong with an entry, and
`draw_inputs` draws, for one step, the random parameters of every augmentation as the values of
the inputs the augment pass made for them (each `input` with an attribute `augment=NAME` and the
augmentation's arguments).

The ops have no derivative rule: they only ever apply to the image input, on which no parameter
depends, so autodiff never asks for one:
- `from_u8(x)`: a uint8 tensor as f32 in [0, 1], x / 255 (torchvision's `to_tensor`);
  elementwise, so it fuses with what follows.
- `warp(x, m1, ..., mK)`: x [N, C, H, W] (u8, converted as by from_u8, or f32) resampled through
  K geometric transforms in turn, nearest neighbour with zero fill, as torchvision applies them
  one after the other. Each m_k is f32 [N, 2, 3], one affine map per sample from the pixel
  coordinates (column u, row v) of transform k's output to a position in its input:
  (u', v') = rint(m_k @ [u, v, 1]) (f32 arithmetic, (m0*u + m1*v) + m2; rint rounds half to
  even, as grid_sample's nearest); a position outside [0, W) x [0, H) at any transform reads 0.
  Output pixel p of the last transform reads x at the position m_1 (... (m_K p)) reaches.
  Crops, flips and translations are integer maps; a rotation rounds (the composition of the
  maps would not: each transform's own rounding and zero fill are what torchvision computes).
- `per_channel() {values=[v0, ..., vC-1]}`: the constant f32 [1, C, 1, 1] (normalize's mean
  and std, broadcast along the other axes).
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np

from odc.ir.graph import Graph, TensorType
from odc.ir.ops.core import ShapeError, register

# each augmentation's arguments in dsl.md's order, with their defaults (None: required)
AUGMENTATIONS = {
    "random_crop": {"size": None, "pad": 0},
    "hflip": {"p": 0.5},
    "vflip": {"p": None},
    "rotate": {"degrees": None},
    "translate": {"fraction": None},
    "brightness": {"f": None},
    "contrast": {"f": None},
    "saturation": {"f": None},
    "gaussian_noise": {"std": None},
    "random_erasing": {"p": 0.5, "scale": [0.02, 0.33]},
    "mixup": {"alpha": None},
    "cutmix": {"alpha": None},
}
GEOMETRIC = ("random_crop", "hflip", "vflip", "rotate", "translate")  # warps, by a matrix input each
MIXING = ("mixup", "cutmix")  # they mix each image with the one before it, and the labels too
ERASING_RATIO = (0.3, 3.3)  # torchvision's RandomErasing default aspect ratios
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


# -- checks ---------------------------------------------------------------------------------
def _number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def crop_size(size) -> tuple[int, int] | None:
    """random_crop's size as (h, w): an integer or a pair [h, w] of integers >= 1; None if not."""
    pair = [size, size] if _int(size) else size
    if isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_int(s) and s >= 1 for s in pair):
        return pair[0], pair[1]
    return None


def augment_problem(entry: dict, image: tuple[int, int, int]) -> str | None:
    """What is wrong with the augmentation `entry` on images of `image` = (C, H, W), in words;
    None if nothing is."""
    name = entry.get("name")
    if name not in AUGMENTATIONS:
        return f"unknown augmentation {name!r}; the augmentations are {', '.join(AUGMENTATIONS)}"
    known = AUGMENTATIONS[name]
    unknown = [k for k in entry if k != "name" and k not in known]
    if unknown:
        return f"{name} has no argument {unknown[0]!r}; its arguments are {', '.join(known)}"
    missing = [k for k, d in known.items() if entry.get(k) is None and d is None]
    if missing:
        return f"{name} needs its argument {missing[0]}"
    a = {**known, **{k: v for k, v in entry.items() if k != "name"}}
    c, h, w = image
    if name == "random_crop":
        size, pad = crop_size(a["size"]), a["pad"]
        if size is None:
            return f"random_crop: size must be an integer >= 1 or a pair [h, w] of them, got {a['size']!r}"
        if not (_int(pad) and pad >= 0):
            return f"random_crop: pad must be an integer >= 0, got {pad!r}"
        if size[0] > h + 2 * pad or size[1] > w + 2 * pad:
            return (f"random_crop: a {size[0]}x{size[1]} crop is larger than the padded image "
                    f"({h + 2 * pad}x{w + 2 * pad}: {h}x{w} with pad={pad})")
        if size != (h, w):
            return (f"random_crop: a {size[0]}x{size[1]} crop does not fit the model, which takes "
                    f"{h}x{w} images; use size={h if h == w else [h, w]} (with pad= for a random shift)")
    if name in MIXING and not (_number(a["alpha"]) and a["alpha"] > 0):
        return f"{name}: alpha must be a number > 0, got {a['alpha']!r}"
    if name in ("hflip", "vflip", "random_erasing") and not (_number(a["p"]) and 0 <= a["p"] <= 1):
        return f"{name}: p must be a probability in [0, 1], got {a['p']!r}"
    for arg, what in (("degrees", "an angle >= 0"), ("f", "a number >= 0"), ("std", "a number >= 0")):
        if arg in a and not (_number(a[arg]) and a[arg] >= 0):
            return f"{name}: {arg} must be {what}, got {a[arg]!r}"
    if name == "translate" and not (_number(a["fraction"]) and 0 <= a["fraction"] <= 1):
        return f"translate: fraction must be a number in [0, 1], got {a['fraction']!r}"
    if name in ("contrast", "saturation") and c not in (1, 3):
        return f"{name} needs grey or RGB images (1 or 3 channels), got {c} channels"
    if name == "random_erasing":
        s = a["scale"]
        if not (isinstance(s, (list, tuple)) and len(s) == 2 and all(_number(v) for v in s)
                and 0 <= s[0] <= s[1] <= 1):
            return f"random_erasing: scale must be a pair [lo, hi] with 0 <= lo <= hi <= 1, got {s!r}"
    return None


def list_problem(augment: list[dict], loss: str = "cross_entropy") -> str | None:
    """What is wrong with the list as a whole: more than one of mixup and cutmix (each mixes the
    labels), or one with a loss other than cross_entropy (the mixed labels are soft targets)."""
    mixing = [a["name"] for a in augment if a.get("name") in MIXING]
    if len(mixing) > 1:
        return f"{mixing[1]}: the list already mixes images ({mixing[0]}); use one of mixup and cutmix"
    if mixing and loss != "cross_entropy":
        return f"{mixing[0]} mixes the labels, which needs the loss cross_entropy, not {loss}"
    return None


def normalize_problem(spec: dict, channels: int) -> str | None:
    """What is wrong with `normalize(mean=[...], std=[...])` for images of `channels` channels."""
    for key in ("mean", "std"):
        v = spec.get(key)
        if not (isinstance(v, (list, tuple)) and all(_number(x) for x in v)):
            return f"normalize: {key} must be a list of numbers, one per channel, got {v!r}"
        if len(v) != channels:
            return f"normalize: {key} has {len(v)} values, the images have {channels} channels"
    if not all(s > 0 for s in spec["std"]):
        return f"normalize: every std must be > 0, got {list(spec['std'])}"
    return None


# -- the random parameters of a step ---------------------------------------------------------
def draw_inputs(g: Graph, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The value of every augmentation input of `g` (those with an `augment` attribute), drawn
    from `rng` for one step, in the order of the inputs; `sizes` binds the batch symbol. The
    same generator state gives the same values."""
    out = {}
    for m in g.inputs():
        if "augment" in m.attrs:
            shape = m.type.substitute(sizes).shape
            out[m.name] = _DRAW[m.attrs["augment"]](m.attrs, shape, rng).astype(np.float32)
    return out


def _matrices(n: int, a, b, c, d, e, f) -> np.ndarray:
    """[n, 2, 3] from the entries (each a number or an [n] array) of [[a, b, c], [d, e, f]]."""
    return np.stack([np.broadcast_to(np.asarray(v, np.float64), (n,)) for v in (a, b, c, d, e, f)],
                    axis=1).reshape(n, 2, 3)


def _crop(a, shape, rng):
    """RandomCrop(size, padding=pad): a window at a uniform offset of the zero-padded image."""
    n, (h, w), (sh, sw), pad = shape[0], a["image"], crop_size(a["size"]), a["pad"]
    top, left = rng.integers(0, h + 2 * pad - sh + 1, n), rng.integers(0, w + 2 * pad - sw + 1, n)
    return _matrices(n, 1, 0, left - pad, 0, 1, top - pad)


def _flip(axis: int):
    """RandomHorizontalFlip (axis 0, columns) / RandomVerticalFlip (axis 1, rows)."""
    def draw(a, shape, rng):
        n, size = shape[0], a["image"][1 - axis]
        flip = rng.random(n) < a["p"]
        sign, shift = np.where(flip, -1.0, 1.0), np.where(flip, size - 1.0, 0.0)
        if axis == 0:
            return _matrices(n, sign, 0, shift, 0, 1, 0)
        return _matrices(n, 1, 0, 0, 0, sign, shift)
    return draw


def _rotate(a, shape, rng):
    """RandomRotation(degrees): an angle uniform in [-degrees, degrees], about the image's
    centre ((W-1)/2, (H-1)/2 in pixel coordinates), counter-clockwise on screen as torchvision's:
    the input position of output (u, v) is the centre plus [[cos, -sin], [sin, cos]] times
    (u, v) minus the centre."""
    n, (h, w), d = shape[0], a["image"], a["degrees"]
    t = np.radians(rng.uniform(-d, d, n))
    cx, cy, cos, sin = (w - 1) / 2, (h - 1) / 2, np.cos(t), np.sin(t)
    return _matrices(n, cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


def _translate(a, shape, rng):
    """RandomAffine(degrees=0, translate=(f, f)): shifts tx, ty = round(uniform(-f*W, f*W)),
    round(uniform(-f*H, f*H)) (half to even, as Python's round)."""
    n, (h, w), f = shape[0], a["image"], a["fraction"]
    tx, ty = np.rint(rng.uniform(-f * w, f * w, n)), np.rint(rng.uniform(-f * h, f * h, n))
    return _matrices(n, 1, 0, -tx, 0, 1, -ty)


def _factor(a, shape, rng):
    """ColorJitter's factor: uniform in [max(0, 1 - f), 1 + f], one per sample."""
    return rng.uniform(max(0.0, 1 - a["f"]), 1 + a["f"], shape)


def _noise(a, shape, rng):
    return rng.standard_normal(shape) * a["std"]


def _erasing(a, shape, rng):
    """RandomErasing(p, scale, ratio=(0.3, 3.3), value=0) as a mask: with probability p, up to
    10 tries of an area uniform in scale * H * W and a log-uniform aspect ratio, until the box
    (h, w) = (round(sqrt(area * ratio)), round(sqrt(area / ratio))) fits strictly inside the
    image; the box is then at a uniform position and 0 in the mask."""
    n, _, height, width = shape
    mask = np.ones(shape)
    lo, hi = np.log(ERASING_RATIO)
    for k in range(n):
        if rng.random() >= a["p"]:
            continue
        for _ in range(10):
            area = height * width * rng.uniform(*a["scale"])
            ratio = np.exp(rng.uniform(lo, hi))
            h, w = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if h < height and w < width:
                i, j = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
                mask[k, 0, i:i + h, j:j + w] = 0
                break
    return mask


def _mixup(a, shape, rng):
    """MixUp's weight of each image itself: one lam ~ Beta(alpha, alpha) for the batch."""
    return np.full(shape, rng.beta(a["alpha"], a["alpha"]))


def _cutmix(a, shape, rng):
    """CutMix's weight of each image itself, one [1, 1, H, W] mask for the batch, as
    torchvision.transforms.v2.CutMix draws it: lam ~ Beta(alpha, alpha), a centre (r_x, r_y)
    uniform over the pixels, half-sides int(W * r) and int(H * r) with r = sqrt(1 - lam) / 2, the
    box clipped to the image; 0 in the box (the other image's pixels), 1 outside. The mask's mean
    is torchvision's corrected lam, 1 - box area / (H W)."""
    h, w = shape[2:]
    lam = rng.beta(a["alpha"], a["alpha"])
    r_x, r_y = rng.integers(w), rng.integers(h)
    r = 0.5 * np.sqrt(1.0 - lam)
    half_w, half_h = int(r * w), int(r * h)
    mask = np.ones(shape)
    mask[..., max(r_y - half_h, 0):min(r_y + half_h, h), max(r_x - half_w, 0):min(r_x + half_w, w)] = 0
    return mask


def _roll(a, shape, rng):
    """The permutation matrix P of `batch.roll(1, 0)`: (P @ x)[i] = x[i - 1]; nothing is drawn."""
    return np.roll(np.eye(shape[0]), 1, axis=0)


_DRAW = {"random_crop": _crop, "hflip": _flip(0), "vflip": _flip(1), "rotate": _rotate,
         "translate": _translate, "brightness": _factor, "contrast": _factor, "saturation": _factor,
         "gaussian_noise": _noise, "random_erasing": _erasing, "mixup": _mixup, "cutmix": _cutmix, "roll": _roll}


# -- the ops -----------------------------------------------------------------------------------
def _from_u8_infer(ts, attrs):
    (x,) = ts
    if x.dtype != "u8":
        raise ShapeError(f"from_u8 expects a u8 tensor, got {x}")
    return TensorType("f32", x.shape)


register("from_u8", _from_u8_infer, lambda x, attrs: x.astype(np.float32) / np.float32(255), None,
         codegen="elementwise", scalar=lambda s, x: s.div(s.from_unsigned(x), 255), cost=1, dtypes=("f32",))


def _warp_infer(ts, attrs):
    x, *maps = ts
    if x.dtype not in ("u8", "f32") or x.rank != 4:
        raise ShapeError(f"warp expects images u8 or f32 [batch, channels, height, width], got {x}")
    if not maps:
        raise ShapeError("warp needs at least one matrix operand")
    for m in maps:
        if m.dtype != "f32" or m.shape != (x.shape[0], 2, 3):
            raise ShapeError(f"warp: each matrix must be f32[{x.shape[0]}, 2, 3], got {m}")
    return TensorType("f32", x.shape)


def warp_positions(maps: list[np.ndarray], h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, inside) [N, H, W] of the input pixel each output pixel reads through the
    maps (the last applied first, as `warp` defines), in f32 arithmetic; inside is False where
    some map leaves the image (rows and columns are then 0)."""
    n = maps[0].shape[0]
    u = np.broadcast_to(np.arange(w, dtype=np.float32), (n, h, w))
    v = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (n, h, w))
    inside = np.ones((n, h, w), bool)
    for m in reversed(maps):
        m = m.astype(np.float32)[:, :, :, None, None]
        u, v = (np.rint(m[:, 0, 0] * u + m[:, 0, 1] * v + m[:, 0, 2]),
                np.rint(m[:, 1, 0] * u + m[:, 1, 1] * v + m[:, 1, 2]))
        inside &= (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    return np.where(inside, v, 0).astype(np.int64), np.where(inside, u, 0).astype(np.int64), inside


def _warp_ref(x, *maps_and_attrs):
    *maps, _ = maps_and_attrs
    n, c, h, w = x.shape
    rows, cols, inside = warp_positions(maps, h, w)
    picked = x[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
               rows[:, None], cols[:, None]]
    value = picked.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else picked.astype(np.float32)
    return np.where(inside[:, None], value, np.float32(0))


register("warp", _warp_infer, _warp_ref, None, codegen="anchor", cost=8, dtypes=("f32",))


def _per_channel_infer(ts, attrs):
    values = attrs["values"]
    if ts or not (isinstance(values, list) and values and all(_number(v) for v in values)):
        raise ShapeError(f"per_channel takes no operands and a list of numbers, got {values!r}")
    return TensorType("f32", (1, len(values), 1, 1))


register("per_channel", _per_channel_infer,
         lambda attrs: np.asarray(attrs["values"], np.float32).reshape(1, -1, 1, 1), None,
         dtypes=("f32",))
