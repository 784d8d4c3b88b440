"""The catalog of data sets: what the front end and the loaders both know about each one.

A leaf module (it imports nothing from odc), so that the front end can check a train block's
`data` against a model without importing the loaders (`odc.runtime.data`), which read the files.
For each kind of `data = KIND(...)`: its arguments, and where known before loading, the class
count and the image shape [channels, height, width].

A data set travels (in the recipe, in checkpoints) as a tuple of strings: its kind, then its
arguments. `imagefolder(DIR, size=[h, w], channels=C)` is `("imagefolder", DIR, "size=HxW",
"channels=C")`; `imagefolder_spec` and `imagefolder_args` convert.
"""
from __future__ import annotations

import re

# EMNIST splits and their class counts (letters has labels 1..26, which the loader maps to 0..25)
EMNIST_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 26, "digits": 10, "mnist": 10}
EMNIST_SPLITS = tuple(EMNIST_CLASSES)
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# kind -> its arguments as a train block writes them (a parameter with "=" is optional)
KINDS = {"emnist": "split", "mnist": "", "fashion_mnist": "", "idx": "dir", "cifar10": "",
         "imagefolder": "dir, size, channels=3"}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
GREY_28 = (1, 28, 28)
CIFAR10_SHAPE = (3, 32, 32)
IMAGEFOLDER_CHANNELS = (1, 3)  # grey or RGB
MAX_SIDE = 4096                # the largest height or width imagefolder resizes to


def imagefolder_spec(folder: str, size: tuple[int, int], channels: int = 3) -> tuple[str, ...]:
    return ("imagefolder", folder, f"size={size[0]}x{size[1]}", f"channels={channels}")


def imagefolder_args(args) -> tuple[str, tuple[int, int], int] | None:
    """(DIR, (h, w), channels) of an imagefolder spec's arguments, None if they are not as
    `imagefolder_spec` writes them."""
    if len(args) != 3:
        return None
    size = re.fullmatch(r"size=([0-9]+)x([0-9]+)", args[1])
    channels = re.fullmatch(r"channels=([0-9]+)", args[2])
    if not (size and channels):
        return None
    h, w, c = int(size[1]), int(size[2]), int(channels[1])
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE and c in IMAGEFOLDER_CHANNELS):
        return None
    return args[0], (h, w), c


def data_text(spec) -> str:
    """A data set as a train block writes it: emnist("balanced"), imagefolder("d", size=[32, 32], channels=3)."""
    kind, *args = spec
    if kind == "imagefolder" and (parsed := imagefolder_args(args)):
        folder, (h, w), c = parsed
        return f'imagefolder("{folder}", size=[{h}, {w}], channels={c})'
    quoted = ", ".join(f'"{a}"' for a in args)
    return f"{kind}({quoted})"


def classes(kind: str, *args: str) -> int | None:
    """The class count of a data set, None where only loading it tells (an idx or image folder)."""
    if kind == "emnist":
        return EMNIST_CLASSES.get(args[0]) if args else None
    return {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}.get(kind)


def image_shape(kind: str, *args: str) -> tuple[int, int, int] | None:
    """[channels, height, width] of the images, None where only loading tells."""
    if kind in ("emnist", "mnist", "fashion_mnist"):
        return GREY_28
    if kind == "cifar10":
        return CIFAR10_SHAPE
    if kind == "imagefolder" and (parsed := imagefolder_args(args)):
        _, (h, w), c = parsed
        return c, h, w
    return None
