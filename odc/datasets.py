"""The catalog of data sets: what the front end and the loaders both know about each one.

A leaf module (it imports nothing from odc), so that the front end can check a train block's
`data` against a model without importing the loaders (`odc.runtime.data`), which read the files.
For each kind of `data = KIND(...)`: its arguments, and where known before loading, the class
count and the image shape [channels, height, width].
"""
from __future__ import annotations

# EMNIST splits and their class counts (letters has labels 1..26, which the loader maps to 0..25)
EMNIST_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 26, "digits": 10, "mnist": 10}
EMNIST_SPLITS = tuple(EMNIST_CLASSES)
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# kind -> its arguments as a train block writes them (the arguments are strings)
KINDS = {"emnist": "split", "mnist": "", "fashion_mnist": "", "idx": "dir", "cifar10": ""}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
GREY_28 = (1, 28, 28)


def classes(kind: str, *args: str) -> int | None:
    """The class count of a data set, None where only loading it tells (an idx folder)."""
    if kind == "emnist":
        return EMNIST_CLASSES.get(args[0]) if args else None
    return {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}.get(kind)


def image_shape(kind: str, *args: str) -> tuple[int, int, int] | None:
    """[channels, height, width] of the images, None where only loading tells."""
    return GREY_28 if kind in ("emnist", "mnist", "fashion_mnist") else (3, 32, 32) if kind == "cifar10" else None
