"""Training data: IDX files (MNIST, Fashion-MNIST, EMNIST), CIFAR-10 in its common layouts, folders
of class folders of JPEG/PNG images (`imagefolder`), where they are found, fetching EMNIST and
CIFAR-10, and the small EMNIST sample that ships with odc.

`load_dataset(spec, data_dir)` looks for a data set in one place: `--data DIR` if given, else
`$ODC_DATA` if set, else the cache folder (`$ODC_DATA_HOME`, default `~/.cache/odc/data`); there,
first in the sub-folder named after the data set (`emnist/`, `mnist/`, `fashion_mnist/`), then in
the folder itself. A folder that the user names (`--data`, `$ODC_DATA`) and that does not hold
the data set is an error. Images come back as uint8 `[n, 28, 28]`, upright (the official EMNIST
files store every image transposed), labels as int64 class indices.

When a folder holds only one part (train or test) of an IDX data set, a deterministic stratified
split of that part serves as train and test; `Dataset.note` says so. A part (or split) without
images is an error. EMNIST Balanced falls back to ByMerge, which has the same 47 classes, and EMNIST
Balanced/ByMerge fall back to the embedded sample when no folder is named and the cache folder does
not hold them.

CIFAR-10 and image folders come back as uint8 `[n, C, H, W]`; either part may be absent (None):
a test part alone serves `odc eval`, a training part alone trains with a validation split (the
training loop holds it out, `hold_out`). CIFAR-10 is looked for in `cifar10/` and then in the
folder itself, in these layouts, a part taken from the first that has it: the official binary
files (`cifar-10-batches-bin/` or the files themselves: `data_batch_1.bin` ... `data_batch_5.bin`,
`test_batch.bin`, `batches.meta.txt`), the official Python pickles (`cifar-10-batches-py/`, read
by an unpickler that admits numpy's array types and nothing else), class folders `train/<class>/`
and `test/<class>/`, and `.tar`/`.tar.gz` archives whose name contains "cifar" holding any of
these. Decoded JPEG/PNG images are kept in a cache (`decoded/` in the cache folder) keyed by the
archive's content hash (a folder's: its files' names, sizes and times), memory-mapped when read
back. Any damage is an OdcError naming the file (and the archive member) and what is wrong.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import json
import os
import pickle
import re
import shutil
import struct
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

from odc.datasets import (CIFAR10_CLASSES, CIFAR10_SHAPE, EMNIST_SPLITS, FASHION_CLASSES, data_text,
                          imagefolder_args)
from odc.errors import OdcError

SAMPLE = Path(__file__).with_name("emnist_sample.npz")
EMNIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
# SHA-256 of that archive (561,753,746 bytes), as recorded by TensorFlow Datasets
# (tensorflow_datasets/url_checksums/emnist.txt) and by other projects that verify it.
EMNIST_SHA256 = "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e"
TEST_FRACTION = 1 / 7  # held out per class when a folder holds a single part (EMNIST's own ratio)
DEFAULT_VALID = 0.1    # held out for validation when a data set has no test part and `valid` is not set
PARTS = ("train", "test")

# The official CIFAR-10 binary archive, as published on https://www.cs.toronto.edu/~kriz/cifar.html
# (with its MD5); its SHA-256 as recorded by TensorFlow Datasets and other projects that verify it.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
CIFAR_PIXELS = 3 * 32 * 32
CIFAR_RECORD = 1 + CIFAR_PIXELS  # a label byte, then the red, green and blue planes, each 32x32 row-major
CIFAR_BATCHES = 5


@dataclass
class Dataset:
    name: str                 # e.g. "emnist-balanced", "mnist", "idx", "cifar10", "imagefolder"
    classes: list[str]        # class index -> character or name
    train_x: np.ndarray | None  # uint8 [n, H, W] (grey, upright) or [n, C, H, W]; None: no training part
    train_y: np.ndarray | None  # int64 [n], 0 <= y < len(classes)
    test_x: np.ndarray | None   # None: no test part
    test_y: np.ndarray | None
    source: str               # the folder or file the data came from
    note: str = ""            # what the user should be told (a fallback, a split made here), or ""
    valid_x: np.ndarray | None = None  # the part of the training part held out (`hold_out`)
    valid_y: np.ndarray | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """[channels, height, width] of the images."""
        x = next(a for a in (self.train_x, self.test_x, self.valid_x) if a is not None)
        return tuple(x.shape[1:]) if x.ndim == 4 else (1, *x.shape[1:])


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 images [n, H, W] (grey) or [n, C, H, W] -> float32 [n, C, H, W] in [0, 1], the layout
    models take; called per batch, so that a data set stays uint8 in memory."""
    images = images if images.ndim == 4 else images[:, None]
    return images.astype(np.float32, order="C") / 255


def hold_out(data: Dataset, fraction: float, seed: int) -> Dataset:
    """The data set with `fraction` of its training part (of each class, rounded; drawn with
    `seed`) moved to `valid_x`/`valid_y`."""
    train, valid = stratified_split(data.train_y, fraction, seed)
    if len(valid) == 0 or len(train) == 0:
        raise OdcError(f"{data.source}: error: {len(data.train_y):,} training image"
                       f"{'s' * (len(data.train_y) != 1)} of {data.name}, too few to hold out {fraction:g} "
                       f"of each class for validation and train on the rest\n"
                       f"hint: add images, or change valid = {fraction:g} in the train block")
    return dataclasses.replace(data, train_x=data.train_x[train], train_y=data.train_y[train],
                               valid_x=data.train_x[valid], valid_y=data.train_y[valid])


# ---------------------------------------------------------------------------- IDX files

def read_idx(path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes, gzip-compressed or raw: labels (`ndim=1`, magic 2049)
    or images (`ndim=3`, magic 2051), as a read-only array. Any damage is an OdcError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise OdcError(f"{path}: error: cannot read: {e.strerror}") from None
    complete = True
    if data[:2] == b"\x1f\x8b":
        inflate = zlib.decompressobj(wbits=31)  # gzip; checks the CRC at the end of the stream
        try:
            data = inflate.decompress(data)
        except zlib.error as e:
            raise OdcError(f"{path}: error: corrupt gzip data ({e})") from None
        complete = inflate.eof
    magic, header = 0x800 + ndim, 4 + 4 * ndim
    what = "labels" if ndim == 1 else "images"
    if len(data) >= 4 and int.from_bytes(data[:4], "big") != magic:
        raise OdcError(f"{path}: error: bad magic number 0x{data[:4].hex()}: an IDX file of {what} "
                       f"starts with 0x{magic:08x} ({magic}: unsigned bytes, {ndim}-D)")
    if len(data) < header:
        raise OdcError(f"{path}: error: truncated: {len(data)} bytes, shorter than the "
                       f"{header}-byte IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    size, held = int(np.prod(dims)), len(data) - header
    says = (f"{dims[0]:,} labels" if ndim == 1 else f"{dims[0]:,} images of {dims[1]}x{dims[2]}")
    if held < size:
        raise OdcError(f"{path}: error: truncated: header says {says} ({size:,} bytes) "
                       f"but {held:,} bytes follow it")
    if held > size:
        raise OdcError(f"{path}: error: corrupt: header says {says} ({size:,} bytes) "
                       f"but {held:,} bytes follow it")
    if not complete:
        raise OdcError(f"{path}: error: truncated: the gzip stream ends early")
    return np.frombuffer(data, np.uint8, size, header).reshape(dims)


def read_mapping(path) -> dict[int, str]:
    """An EMNIST mapping file, 'label ascii-code [ascii-code...]' per line -> {label: characters}."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise OdcError(f"{path}: error: cannot read: {e}") from None
    mapping = {}
    for n, line in enumerate(lines, 1):
        try:
            label, *codes = (int(f) for f in line.split())
            mapping[label] = "".join(chr(c) for c in codes)
        except (ValueError, OverflowError):
            codes = None
        if not codes or not 0 <= label < 256:
            raise OdcError(f"{path}:{n}: error: expected 'label ascii-code', got {line!r}")
    return mapping


def stratified_split(y: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = 0):
    """(train, test) index arrays, sorted: round(n_c * test_fraction) of the n_c items of each
    class c go to test, drawn with a fixed seed, so the split is the same on every run."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        test[rng.choice(members, round(len(members) * test_fraction), replace=False)] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


# ---------------------------------------------------------------------------- folders

def _pair(folder: Path, stem: str):
    """The (images, labels) files named `<stem>-images-idx3-ubyte[.gz]` and `<stem>-labels-...`."""
    found = []
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{stem}-{kind}-ubyte"
        found.append(next((folder / n for n in (name + ".gz", name) if (folder / n).is_file()), None))
    if found[0] and not found[1] or found[1] and not found[0]:
        have, missing = (found[0], "labels") if found[0] else (found[1], "images")
        raise OdcError(f"{have}: error: found no matching {missing} file in {folder}")
    return tuple(found) if found[0] else None


def _parts(folder: Path, prefix: str, test_names=("test", "t10k")) -> dict[str, tuple[Path, Path]]:
    """{'train': (images, labels), 'test': ...} for the parts a folder holds."""
    parts = {}
    for part, names in (("train", ("train",)), ("test", test_names)):
        pair = next((p for n in names if (p := _pair(folder, prefix + n))), None)
        if pair:
            parts[part] = pair
    return parts


def _emnist_splits(folder: Path) -> dict[str, dict]:
    return {s: p for s in EMNIST_SPLITS if (p := _parts(folder, f"emnist-{s}-"))}


def cache_dir() -> Path:
    return Path(os.environ.get("ODC_DATA_HOME") or Path.home() / ".cache" / "odc" / "data").expanduser()


def data_roots(data_dir=None) -> list[tuple[str, Path]]:
    """The places that hold data sets, as (label, folder): `--data DIR` and `$ODC_DATA` where
    given, then the cache folder. `load_dataset` looks only in the first."""
    roots = []
    for label, value in (("--data", data_dir), ("$ODC_DATA", os.environ.get("ODC_DATA"))):
        if value:
            if not Path(value).expanduser().is_dir():
                raise OdcError(f"{label} {value}: no such folder\nhint: name the folder that holds the "
                               f"data set, or leave out {label} to use {cache_dir()}")
            roots.append((label, Path(value).expanduser()))
    return roots + [("cache", cache_dir())]


def _load(name, folder, parts, classes, upright, note="") -> Dataset:
    """Read the parts of a data set; map labels to class indices (`classes`: {label: name}, or
    None for labels 0..max); split a lone part. Train and test must each get an image."""
    arrays = {}
    for part, (images, labels) in parts.items():
        x, y = read_idx(images, 3), read_idx(labels, 1)
        if len(x) != len(y):
            raise OdcError(f"{labels}: error: {len(y):,} labels for the {len(x):,} images in {images.name}")
        if len(x) == 0:
            other = "test" if part == "train" else "train"
            fix = (f"remove it and {labels.name} to have the {other} part split into train and test"
                   if other in parts else f"add the {other} part beside it")
            raise OdcError(f"{images}: error: holds 0 images: the {part} part of {name} needs at least one\n"
                           f"hint: put images into it, or {fix}")
        arrays[part] = ((x if upright else x.transpose(0, 2, 1)).copy(), y, labels)  # C-contiguous
    if classes is None:
        top = max(int(y.max(initial=0)) for _, y, _ in arrays.values())
        classes = {i: str(i) for i in range(top + 1)}
    index = np.full(256, -1, np.int64)
    index[list(classes)] = np.arange(len(classes))
    for part, (x, y, labels) in arrays.items():
        if (index[y] < 0).any():
            raise OdcError(f"{labels}: error: label {y[index[y] < 0][0]} is not one of the "
                           f"{len(classes)} classes of {name}")
        arrays[part] = (x, index[y])
    if len(arrays) == 1:
        (part, (x, y)), = arrays.items()
        train, test = stratified_split(y)
        if len(test) == 0:  # every class has too few images to hold one out
            other = "test" if part == "train" else "train"
            raise OdcError(f"{parts[part][0]}: error: {len(y):,} image{'s' * (len(y) != 1)} of {name}, too few "
                           f"to split into train and test (1/7 of each class, rounded, is held out: none here)\n"
                           f"hint: add the {other} part beside it, or more images")
        arrays = {"train": (x[train], y[train]), "test": (x[test], y[test])}
        note += ("; " if note else "") + (f"{name} has only a {part} part here: stratified split into "
                                          f"{len(train):,} train / {len(test):,} test "
                                          f"(1/7 of each class held out)")
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    if train_x.shape[1:] != test_x.shape[1:]:
        raise OdcError(f"{folder}: error: train images are {train_x.shape[1]}x{train_x.shape[2]} "
                       f"but test images are {test_x.shape[1]}x{test_x.shape[2]}")
    return Dataset(name, list(classes.values()), train_x, train_y, test_x, test_y, str(folder), note)


def _mapping(folder: Path, split: str) -> dict[int, str]:
    path = folder / f"emnist-{split}-mapping.txt"
    if not path.is_file():
        raise OdcError(f"{folder}: error: holds EMNIST {split} images but not {path.name}")
    return read_mapping(path)


def _load_from(kind: str, split: str | None, folder: Path) -> Dataset | None:
    """The data set `kind` from `folder`, or None if the folder does not hold it."""
    if kind == "emnist":
        for found in (split, "bymerge") if split == "balanced" else (split,):
            if parts := _parts(folder, f"emnist-{found}-"):
                note = ("" if found == split else f"no emnist-balanced files in {folder}: "
                        f"using emnist-bymerge, which has the same 47 classes")
                return _load(f"emnist-{found}", folder, parts, _mapping(folder, found), False, note)
        return None
    if parts := _parts(folder, ""):
        classes = FASHION_CLASSES if kind == "fashion_mnist" else [str(d) for d in range(10)]
        return _load(kind, folder, parts, dict(enumerate(classes)), True)
    return None


def _load_idx(folder: Path) -> Dataset:
    """idx(DIR): MNIST-style names (train-/t10k-images-idx3-ubyte[.gz], ...) or one EMNIST split."""
    if not folder.is_dir():
        raise OdcError(f"idx({str(folder)!r}): error: no such folder")
    if parts := _parts(folder, ""):
        return _load("idx", folder, parts, None, True)
    splits = _emnist_splits(folder)
    if len(splits) == 1:
        (split, parts), = splits.items()
        mapping = folder / f"emnist-{split}-mapping.txt"
        classes = read_mapping(mapping) if mapping.is_file() else None
        return _load(f"emnist-{split}", folder, parts, classes, False)
    if splits:
        raise OdcError(f"{folder}: error: holds several EMNIST splits ({', '.join(splits)})\n"
                       f"hint: use emnist(\"SPLIT\") with --data {folder}")
    raise OdcError(f"{folder}: error: holds no IDX data set\n"
                   f"hint: expected train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                   f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (or uncompressed)")


def load_dataset(spec, data_dir=None, parts=PARTS) -> Dataset:
    """Load the data set of a recipe's `data` key: ("emnist", SPLIT), ("mnist",), ("fashion_mnist",),
    ("idx", DIR), ("cifar10",) or ("imagefolder", DIR, "size=HxW", "channels=C"). `data_dir` is
    the `--data DIR` flag. CIFAR-10 reads only the `parts` asked for ("train", "test"); a part it
    does not find is None.

    The data set is looked for in one place only: `data_dir`, else `$ODC_DATA` if it is set, else
    the cache folder. Both `data_dir` and `$ODC_DATA` name a folder the user means: one that does
    not hold the data set is an OdcError listing the files looked for and the folders looked in,
    never a silent switch to other data. The embedded sample stands in for emnist("balanced")
    and emnist("bymerge") only when no folder is named and the cache folder does not hold them."""
    kind, *args = spec
    if kind == "idx" and len(args) == 1:
        return _load_idx(Path(args[0]).expanduser())
    if kind == "imagefolder" and (parsed := imagefolder_args(args)):
        return load_imagefolder(*parsed)
    known = (kind == "emnist" and len(args) == 1 and args[0] in EMNIST_SPLITS
             or kind in ("mnist", "fashion_mnist", "cifar10") and not args)
    if not known:
        raise OdcError(f"unknown data set {data_text(spec)}\nhint: one of emnist(SPLIT) with SPLIT in "
                       f"{', '.join(EMNIST_SPLITS)}; mnist(); fashion_mnist(); idx(DIR); cifar10(); "
                       f"imagefolder(DIR, size=[h, w], channels=3)")
    split = args[0] if args else None
    label, root = data_roots(data_dir)[0]
    folders = (root / kind, root)
    if kind == "cifar10":
        return _load_cifar10(label, root, parts)
    for folder in folders:
        if dataset := _load_from(kind, split, folder):
            return dataset
    if kind == "emnist" and split in ("balanced", "bymerge") and label == "cache":
        dataset = load_sample()
        dataset.note = (f"no EMNIST {split} files in {root}; using the embedded sample of "
                        f"{len(dataset.train_y):,} train / {len(dataset.test_y):,} test images, enough to "
                        f"try odc but not to reach full accuracy; for the full data set run "
                        f"'odc data fetch emnist' or pass --data DIR")
        return dataset
    if kind == "emnist":
        files = (f"emnist-{split}-{{train,test}}-{{images-idx3,labels-idx1}}-ubyte[.gz] and "
                 f"emnist-{split}-mapping.txt")
        files += ", or the same files of emnist-bymerge" if split == "balanced" else ""
    else:
        files = "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
    fetch = "run 'odc data fetch emnist'" if kind == "emnist" else f"put the files into {cache_dir() / kind}"
    if label == "cache":
        hint = f"{fetch}, set $ODC_DATA or pass --data DIR"
    else:
        hint = (f"name the folder that holds these files, or {fetch} and "
                f"{'leave out --data' if label == '--data' else 'unset $ODC_DATA'}"
                + (" (odc trains on its embedded sample when it finds no EMNIST files and no folder is named)"
                   if kind == "emnist" and split in ("balanced", "bymerge") else ""))
    raise OdcError(f"{label} {root}: error: holds no {kind}{f'({split!r})' if split else ''} data set\n"
                   f"looked in {folders[0]} and {folders[1]} for {files} (one part, train or test, is enough)\n"
                   f"hint: {hint}")


# ---------------------------------------------------------------------------- files in folders and archives

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass
class _Entry:
    """A file or folder of a folder tree or an archive."""
    path: PurePosixPath        # relative to the top of the tree
    where: str                 # how messages name it: a file's path, or "ARCHIVE: MEMBER"
    read: Callable[[], bytes] | None = None  # None for a folder
    size: int = 0


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise OdcError(f"{path}: error: cannot read: {e.strerror or e}") from None


def _file(path: Path, rel: PurePosixPath, size: int) -> _Entry:
    return _Entry(rel, str(path), lambda: _read_bytes(path), size)


def _folder_tree(folder: Path) -> tuple[list[_Entry], str]:
    """Every file and folder under `folder`, sorted, and a digest of their names, sizes and times."""
    def fail(e: OSError):
        raise OdcError(f"{e.filename}: error: cannot read the folder: {e.strerror}")

    entries, digest = [], hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail):
        dirnames.sort()
        here = Path(dirpath)
        rel = PurePosixPath(*here.relative_to(folder).parts)
        for d in dirnames:
            entries.append(_Entry(rel / d, str(here / d)))
        for f in sorted(filenames):
            try:
                st = (here / f).stat()
            except OSError as e:
                raise OdcError(f"{here / f}: error: cannot read: {e.strerror}") from None
            entries.append(_file(here / f, rel / f, st.st_size))
            digest.update(f"{rel / f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return entries, digest.hexdigest()


def _gunzip(raw: bytes, path: Path) -> bytes:
    inflate = zlib.decompressobj(wbits=31)  # gzip; checks the CRC at the end of the stream
    try:
        data = inflate.decompress(raw)
    except zlib.error as e:
        raise OdcError(f"{path}: error: corrupt gzip data ({e})") from None
    if not inflate.eof:
        raise OdcError(f"{path}: error: truncated: the gzip stream ends early")
    return data


def _archive_tree(path: Path, raw: bytes) -> list[_Entry]:
    """The files and folders of a tar archive (`raw`: its bytes, gzip-compressed or not), read in memory."""
    data = _gunzip(raw, path) if raw[:2] == b"\x1f\x8b" else raw
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members, end = tar.getmembers(), tar.offset
    except tarfile.TarError as e:
        if "unexpected end" in str(e):
            raise OdcError(f"{path}: error: truncated: the archive ends inside a member") from None
        raise OdcError(f"{path}: error: not a readable tar archive ({e})") from None
    entries = []
    for m in members:
        rel = PurePosixPath(m.name.lstrip("/"))
        where = f"{path}: {m.name}"
        if m.isdir():
            entries.append(_Entry(rel, where))
        elif m.isfile():
            if m.offset_data + m.size > len(data):
                raise OdcError(f"{where}: error: truncated: the member's {m.size:,} bytes run past the "
                               f"end of the archive")
            start, stop = m.offset_data, m.offset_data + m.size
            entries.append(_Entry(rel, where, lambda a=start, b=stop: data[a:b], m.size))
        elif not any(p.startswith(".") for p in rel.parts):
            raise OdcError(f"{where}: error: not a regular file or folder (a link or device); "
                           f"an archive of a data set holds files and folders")
    if data[end:end + 512] != bytes(512):  # tar ends with zero blocks: without them it was cut short
        raise OdcError(f"{path}: error: truncated: the archive ends without its end-of-archive "
                       f"blocks, after {len(members):,} members")
    return entries


# ---------------------------------------------------------------------------- decoded-image cache

DECODED_VERSION = 1


def decoded_dir() -> Path:
    """Where decoded images are kept: `decoded/` in the cache folder."""
    return cache_dir() / "decoded"


def _cache_read(key: str) -> tuple[dict, dict] | None:
    """(meta, {part: (images, labels)}) kept under `key`, the images memory-mapped; None if absent
    or unreadable (then it is decoded again)."""
    folder = decoded_dir() / key
    try:
        meta = json.loads((folder / "meta.json").read_text())
        parts = {}
        for part, n in meta["parts"].items():
            x = np.load(folder / f"{part}-images.npy", mmap_mode="r")
            y = np.load(folder / f"{part}-labels.npy")
            if x.shape != (n, *meta["shape"]) or x.dtype != np.uint8 or y.shape != (n,) or y.dtype != np.int64:
                return None
            parts[part] = (x, y)
        return meta, parts
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cache_write(key: str, meta: dict, parts: dict) -> str:
    """Keep decoded images under `key`; returns a note on what happened."""
    folder = decoded_dir() / key
    try:
        decoded_dir().mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=decoded_dir(), prefix=f".{key}-"))
        try:
            for part, (x, y) in parts.items():
                np.save(tmp / f"{part}-images.npy", x)
                np.save(tmp / f"{part}-labels.npy", y)
            (tmp / "meta.json").write_text(json.dumps(meta))
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        return f"could not keep the decoded images in {decoded_dir()} ({e.strerror or e}): they will be decoded again"
    return f"decoded images kept in {folder}"


# ---------------------------------------------------------------------------- class folders of images

def _class_folders(entries: list[_Entry], top: str, default_part: str) -> tuple[dict, int]:
    """{part: {class: [image entries]}} of a tree of class folders, and the number of hidden
    files and folders (names starting with '.') left out. Single folders on top are stepped
    into (an archive's `cifar10/`); if the folders there are `train` and/or `test`, each holds
    class folders of its part, else they are the class folders of `default_part`."""
    hidden = sum(1 for e in entries if any(p.startswith(".") for p in e.path.parts) and
                 not any(p.startswith(".") for p in e.path.parts[:-1]))
    entries = [e for e in entries if not any(p.startswith(".") for p in e.path.parts)]
    depth = 0
    while True:
        here = {e.path.parts[depth] for e in entries if len(e.path.parts) > depth}
        files = [e for e in entries if len(e.path.parts) == depth + 2 and e.read]
        if len(here) == 1 and not files and next(iter(here)) not in PARTS and \
                any(len(e.path.parts) > depth + 1 for e in entries):
            depth += 1
        else:
            break
    stray = next((e for e in entries if len(e.path.parts) == depth + 1 and e.read), None)
    if stray is not None:
        raise OdcError(f"{stray.where}: error: a file beside the class folders: each class is a folder "
                       f"of images (JPEG or PNG), named after the class")
    names = {e.path.parts[depth] for e in entries if len(e.path.parts) > depth}
    if not names:
        raise OdcError(f"{top}: error: holds no class folders\nhint: put the images of each class into a "
                       f"folder named after the class")
    by_part = names <= set(PARTS)
    out: dict[str, dict[str, list[_Entry]]] = {}
    for e in entries:
        rest = e.path.parts[depth:]
        if not rest:  # a folder stepped into
            continue
        part, rest = (rest[0], rest[1:]) if by_part else (default_part, rest)
        if not rest:
            continue
        if len(rest) == 1 and e.read:
            raise OdcError(f"{e.where}: error: a file beside the class folders of the {part} part: each "
                           f"class is a folder of images, named after the class")
        classes = out.setdefault(part, {})
        images = classes.setdefault(rest[0], [])
        if e.read:
            if not e.path.name.lower().endswith(IMAGE_SUFFIXES):
                raise OdcError(f"{e.where}: error: not a JPEG or PNG image (.jpg, .jpeg or .png): a class "
                               f"folder holds only images")
            images.append(e)
    for part, classes in out.items():
        for name, images in classes.items():
            if not images:
                raise OdcError(f"{top}: error: the class folder {name!r} of the {part} part holds no images")
    return out, hidden


def decode_image(data: bytes, where: str, size: tuple[int, int], channels: int, exact: str | None = None,
                 formats=("JPEG", "PNG")) -> np.ndarray:
    """One image (JPEG or PNG; with `formats=None` any that Pillow reads) as uint8 [channels, h, w]:
    converted to RGB (or grey) and resized to `size` (bilinear); with `exact` (a data set's name)
    an image of another size is an error."""
    from PIL import Image, UnidentifiedImageError

    h, w = size
    try:
        with Image.open(io.BytesIO(data), formats=formats) as im:
            if exact and im.size != (w, h):
                raise OdcError(f"{where}: error: the image is {im.width}x{im.height}, but {exact}'s images "
                               f"are {w}x{h}\nhint: use imagefolder(DIR, size=[{h}, {w}]) to resize images")
            mode = "RGB" if channels == 3 else "L"
            if im.mode != mode:
                im = im.convert(mode)
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            a = np.asarray(im)
    except UnidentifiedImageError:
        what = "a JPEG or PNG image" if formats else "an image that Pillow reads"
        raise OdcError(f"{where}: error: cannot decode: not {what}") from None
    except OdcError:
        raise
    except Exception as e:  # Pillow reports damage as OSError, SyntaxError, ValueError, ...
        raise OdcError(f"{where}: error: cannot decode the image: {e}") from None
    return a.transpose(2, 0, 1) if a.ndim == 3 else a[None]


def _decode_parts(folders: dict, size, channels, exact, fixed) -> tuple[list[str], dict]:
    """Decode the images of `_class_folders`; labels: the index of the class name in `fixed` (a
    data set's classes) or in the sorted class names of the training part (of the test part when
    it is alone)."""
    if fixed is None:
        names = sorted(folders["train" if "train" in folders else "test"])
    else:
        names = fixed
    for part, classes in folders.items():
        unknown = sorted(set(classes) - set(names))
        missing = [c for c in names if c not in classes] if fixed is not None else []
        if unknown:
            where = classes[unknown[0]][0].where.rsplit("/", 1)[0]
            owner = "the training part" if fixed is None else "the data set"
            raise OdcError(f"{where}: error: a class folder of the {part} part that {owner} does not have "
                           f"({', '.join(map(repr, unknown))}); the classes are {', '.join(names)}")
        if missing:
            where = next(iter(classes.values()))[0].where.rsplit("/", 2)[0]
            raise OdcError(f"{where}: error: the {part} part has no class folder {', '.join(map(repr, missing))}; "
                           f"the classes are {', '.join(names)}")
    label = {c: i for i, c in enumerate(names)}
    total = sum(len(v) for classes in folders.values() for v in classes.values())
    bar = _bar(total)
    out = {}
    for part in PARTS:
        if part not in folders:
            continue
        items = [(c, e) for c in sorted(folders[part]) for e in sorted(folders[part][c], key=lambda e: e.path)]
        x = np.empty((len(items), channels, *size), np.uint8)
        y = np.empty(len(items), np.int64)
        for i, (c, e) in enumerate(items):
            x[i] = decode_image(e.read(), e.where, size, channels, exact)
            y[i] = label[c]
            if bar and i % 1000 == 999:
                bar.update(1000)
        if bar:
            bar.update(len(items) % 1000)
        out[part] = (x, y)
    if bar:
        bar.close()
    return names, out


def _bar(total: int):
    if total < 2000 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="decoding images", unit="img", unit_scale=True, file=sys.stderr, leave=False)


def _cached(path: Path, params: dict, decode) -> tuple[list[str], dict, str]:
    """(classes, {part: (images, labels)}, note) of `path` (a folder, or a .tar/.tar.gz archive) as
    `decode(entries)` reads them (it returns classes, parts and what it did), kept in the cache
    under a key of the archive's SHA-256 (a folder's: its files' names, sizes and times) and
    `params`, and read back from there, memory-mapped, without opening the archive."""
    t0 = time.perf_counter()
    if path.is_dir():
        entries, digest = _folder_tree(path)
        raw = None
    else:
        raw = _read_bytes(path)
        digest = hashlib.sha256(raw).hexdigest()
    from PIL import __version__ as pillow
    params = {**params, "version": DECODED_VERSION, "pillow": pillow, "content": digest}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:32]
    if cached := _cache_read(key):
        meta, parts = cached
        return meta["classes"], parts, (f"read {path} from the cache of decoded images {decoded_dir() / key} "
                                        f"in {time.perf_counter() - t0:.1f}s")
    if raw is not None:
        entries = _archive_tree(path, raw)
        del raw
    classes, parts, did = decode(entries)
    shape = next(iter(parts.values()))[0].shape[1:]
    meta = {"classes": classes, "parts": {p: len(y) for p, (_, y) in parts.items()}, "shape": list(shape),
            "source": str(path)}
    kept = _cache_write(key, meta, parts)
    return classes, parts, f"{did} from {path} in {time.perf_counter() - t0:.1f}s; {kept}"


def _decoded_images(path: Path, *, size, channels, exact=None, fixed=None, default_part="train"):
    """The class folders in `path` (a folder, or a .tar/.tar.gz of one) decoded and cached:
    (classes, {part: (images, labels)}, note)."""
    def decode(entries):
        folders, hidden = _class_folders(entries, str(path), default_part)
        classes, parts = _decode_parts(folders, size, channels, exact, fixed)
        n = sum(len(y) for _, y in parts.values())
        return classes, parts, (f"decoded {n:,} images" + (f" (left out {hidden} hidden file{'s' * (hidden != 1)}, "
                                                            f"named .*)" if hidden else ""))
    params = {"layout": "class folders", "size": list(size), "channels": channels, "exact": exact,
              "classes": fixed, "part": default_part}
    return _cached(path, params, decode)


def load_imagefolder(folder: str, size: tuple[int, int], channels: int = 3) -> Dataset:
    """imagefolder(DIR, size=[h, w], channels=C): one folder per class (sorted names = labels),
    or a .tar/.tar.gz of them; `train/` and `test/` folders of class folders give the two parts,
    else every image is in the training part."""
    path = Path(folder).expanduser()
    if not path.exists():
        raise OdcError(f"imagefolder({folder!r}): error: no such folder or archive\n"
                       f"hint: a folder with one folder of images per class, or a .tar/.tar.gz of one")
    if not path.is_dir() and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise OdcError(f"imagefolder({folder!r}): error: {path} is neither a folder nor a .tar/.tar.gz archive")
    classes, parts, note = _decoded_images(path, size=size, channels=channels)
    (train_x, train_y), (test_x, test_y) = (parts.get(p, (None, None)) for p in PARTS)
    return Dataset("imagefolder", classes, train_x, train_y, test_x, test_y, str(path), note)


# ---------------------------------------------------------------------------- CIFAR-10

def _cifar_labels(y: np.ndarray, where: str) -> np.ndarray:
    bad = np.flatnonzero((y < 0) | (y >= len(CIFAR10_CLASSES)))
    if len(bad):
        raise OdcError(f"{where}: error: corrupt: image {bad[0]:,} has label {y[bad[0]]}, but CIFAR-10's "
                       f"labels are 0 to 9 (is it CIFAR-100?)")
    return y.astype(np.int64)


def _cifar_bin(files: list[_Entry]) -> tuple[np.ndarray, np.ndarray]:
    """Records of the official binary files: a label byte, then 3,072 pixel bytes (R, G, B planes)."""
    for e in files:
        if e.size % CIFAR_RECORD or not e.size:
            raise OdcError(f"{e.where}: error: " + ("holds no records" if not e.size else
                           f"truncated: {e.size:,} bytes is not a whole number of {CIFAR_RECORD:,}-byte "
                           f"records (a label byte and 3,072 pixel bytes each): {e.size // CIFAR_RECORD:,} "
                           f"records and {e.size % CIFAR_RECORD:,} bytes over"))
    n = sum(e.size for e in files) // CIFAR_RECORD
    x, y, at = np.empty((n, *CIFAR10_SHAPE), np.uint8), np.empty(n, np.int64), 0
    for e in files:
        data = e.read()
        if len(data) != e.size:  # changed since it was listed
            raise OdcError(f"{e.where}: error: truncated: {len(data):,} bytes, {e.size:,} expected")
        records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD)
        y[at:at + len(records)] = _cifar_labels(records[:, 0], e.where)
        x[at:at + len(records)] = records[:, 1:].reshape(-1, *CIFAR10_SHAPE)
        at += len(records)
    return x, y


class _Refused(Exception):
    pass


def _latin1(text, encoding):
    """`_codecs.encode` as pickles written by Python 3 with protocol 2 use it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return text.encode("latin-1")


def _numpy_globals() -> dict:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[module, "_reconstruct"] = multiarray._reconstruct
        allowed[module, "scalar"] = multiarray.scalar
    return allowed


class _NumpyUnpickler(pickle.Unpickler):
    """Admits numpy arrays, dtypes and scalars and plain Python values, and nothing else: a pickle
    names the functions that rebuild its objects, and one that names os.system would run it."""
    allowed = None

    def find_class(self, module, name):
        if _NumpyUnpickler.allowed is None:
            _NumpyUnpickler.allowed = _numpy_globals()
        try:
            return _NumpyUnpickler.allowed[module, name]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def unpickle(data: bytes, where: str):
    """A pickle of numpy arrays and plain values, as the official CIFAR-10 Python files are
    (protocol 2, read with encoding 'bytes'), by an unpickler that refuses anything else."""
    try:
        return _NumpyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as e:
        raise OdcError(f"{where}: error: refused to unpickle: the file asks to call {e}, which is not one of "
                       f"numpy's array types; a CIFAR-10 batch holds only arrays, lists, numbers and strings, "
                       f"and a pickle that calls other functions could run any code") from None
    except Exception as e:  # nothing ran but numpy's constructors: a damaged file
        what = "truncated" if isinstance(e, EOFError) or "truncated" in str(e) else "corrupt"
        raise OdcError(f"{where}: error: {what}: cannot unpickle it ({type(e).__name__}: {e})") from None


def _key(d: dict, name: str):
    return d.get(name.encode(), d.get(name))


def _cifar_py(files: list[_Entry]) -> tuple[np.ndarray, np.ndarray]:
    """The official Python batches: pickled dicts with b"data" (uint8 [n, 3072]) and b"labels"."""
    xs, ys = [], []
    for e in files:
        d = unpickle(e.read(), e.where)
        if not isinstance(d, dict):
            raise OdcError(f"{e.where}: error: corrupt: holds a {type(d).__name__}, not the dict of a CIFAR-10 batch")
        data, labels = _key(d, "data"), _key(d, "labels")
        labels = _key(d, "fine_labels") if labels is None else labels
        if data is None or labels is None:
            keys = ", ".join(map(repr, d)) or "none"
            raise OdcError(f"{e.where}: error: corrupt: a CIFAR-10 batch has the keys b'data' and b'labels'; "
                           f"this one has {keys}")
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == CIFAR_PIXELS):
            got = (f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__)
            raise OdcError(f"{e.where}: error: corrupt: b'data' is {got}, expected uint8 [n, {CIFAR_PIXELS}]")
        try:
            y = np.asarray(labels)
        except Exception:
            y = np.zeros(0, object)
        if y.dtype.kind not in "iu" or y.shape != (len(data),):
            raise OdcError(f"{e.where}: error: corrupt: b'labels' should be {len(data):,} integers, one per "
                           f"image, got {y.dtype} {list(y.shape)}")
        xs.append(data.reshape(-1, *CIFAR10_SHAPE))
        ys.append(_cifar_labels(y, e.where))
    return np.concatenate(xs), np.concatenate(ys)


def _check_cifar_names(names: list[str], where: str) -> None:
    if names != CIFAR10_CLASSES:
        raise OdcError(f"{where}: error: lists the classes {', '.join(names) or '(none)'}, but CIFAR-10's "
                       f"are {', '.join(CIFAR10_CLASSES)}")


def _cifar_meta(e: _Entry, python: bool) -> None:
    """batches.meta.txt (a class name a line) or batches.meta (a pickled dict with b"label_names")."""
    data = e.read()
    if python:
        d = unpickle(data, e.where)
        names = _key(d, "label_names") if isinstance(d, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
            raise OdcError(f"{e.where}: error: corrupt: expected a dict with b'label_names', a list of names")
        names = [n.decode("latin-1") if isinstance(n, bytes) else n for n in names]
    else:
        try:
            names = [line.strip() for line in data.decode("ascii").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise OdcError(f"{e.where}: error: corrupt: not a text file of class names") from None
    _check_cifar_names(names, e.where)


def _official(files: dict[str, _Entry], python: bool) -> dict[str, list[_Entry]]:
    """{part: its batch files} among `files` (name -> entry) in the official binary or Python
    names; empty if there are none. A gap in the training batches is an error."""
    ext = "" if python else ".bin"
    train = {i: files.get(f"data_batch_{i}{ext}") for i in range(1, CIFAR_BATCHES + 1)}
    found = [i for i, e in train.items() if e]
    parts = {}
    if found:
        if found != list(range(1, len(found) + 1)):
            missing = next(i for i in range(1, CIFAR_BATCHES + 1) if not train[i])
            raise OdcError(f"{train[found[0]].where}: error: data_batch_{missing}{ext} is missing beside it "
                           f"(found {', '.join(f'data_batch_{i}{ext}' for i in found)})")
        parts["train"] = [train[i] for i in found]
    if test := files.get(f"test_batch{ext}"):
        parts["test"] = [test]
    if parts and (meta := files.get("batches.meta" if python else "batches.meta.txt")):
        _cifar_meta(meta, python)
    return parts


def _dir_files(folder: Path) -> dict[str, _Entry]:
    try:
        return {p.name: _file(p, PurePosixPath(p.name), p.stat().st_size)
                for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}
    except OSError as e:
        raise OdcError(f"{folder}: error: cannot read the folder: {e.strerror}") from None


def _cifar_archive(path: Path) -> tuple[dict, str]:
    """The parts of CIFAR-10 in an archive in any of the layouts, {part: (x, y)}, and a note; cached."""
    def decode(entries):
        by_dir: dict[PurePosixPath, dict[str, _Entry]] = {}
        for e in entries:
            if e.read and not any(p.startswith(".") for p in e.path.parts):
                by_dir.setdefault(e.path.parent, {})[e.path.name] = e
        for python in (False, True):
            for files in by_dir.values():
                if found := _official(files, python):
                    read = _cifar_py if python else _cifar_bin
                    return (CIFAR10_CLASSES, {p: read(fs) for p, fs in found.items()},
                            f"read the official {'Python' if python else 'binary'} layout")
        folders, hidden = _class_folders(entries, str(path), "train")
        classes, parts = _decode_parts(folders, CIFAR10_SHAPE[1:], 3, "CIFAR-10", CIFAR10_CLASSES)
        n = sum(len(y) for _, y in parts.values())
        return classes, parts, (f"decoded {n:,} images" + (f" (left out {hidden} hidden file{'s' * (hidden != 1)}, "
                                                            f"named .*)" if hidden else ""))
    _, parts, note = _cached(path, {"layout": "cifar10"}, decode)
    return parts, note


def _cifar_candidates(folder: Path) -> list[tuple[str, set | None, Callable]]:
    """The layouts of CIFAR-10 in `folder`, in the order they are read: (description, the parts
    they hold or None where only reading tells, a function reading {part: (x, y, where)} for the
    parts asked)."""
    out = []
    for python in (False, True):
        name = "cifar-10-batches-py" if python else "cifar-10-batches-bin"
        for d in (folder / name, folder):
            if found := _official(_dir_files(d), python):
                read = _cifar_py if python else _cifar_bin
                out.append((f"{d} (official {'Python' if python else 'binary'} layout)", set(found),
                            lambda want, found=found, read=read, d=d: {p: (*read(found[p]), d) for p in want
                                                                       if p in found}))
                break
    for part in PARTS:
        if (folder / part).is_dir():
            def read(want, part=part):
                _, parts, note = _decoded_images(folder / part, size=CIFAR10_SHAPE[1:], channels=3,
                                                 exact="CIFAR-10", fixed=CIFAR10_CLASSES, default_part=part)
                if set(parts) != {part}:
                    raise OdcError(f"{folder / part}: error: holds train/ or test/ folders inside; its "
                                   f"folders are the classes of the {part} part")
                return {part: (*parts[part], folder / part), "note": note}
            out.append((f"{folder / part} (class folders)", {part}, read))
    try:
        archives = sorted(p for p in folder.iterdir() if p.is_file() and "cifar" in p.name.lower()
                          and p.name.lower().endswith(ARCHIVE_SUFFIXES))
    except OSError as e:
        raise OdcError(f"{folder}: error: cannot read the folder: {e.strerror}") from None
    for a in archives:
        def read(want, a=a):
            parts, note = _cifar_archive(a)
            return {**{p: (*v, a) for p, v in parts.items() if p in want}, "note": note}
        out.append((str(a), None, read))
    return out


def _load_cifar10(label: str, root: Path, want) -> Dataset:
    """cifar10() from `root/cifar10` or else `root`: each part asked for from the first layout that has it."""
    for folder in (root / "cifar10", root):
        candidates = _cifar_candidates(folder) if folder.is_dir() else []
        if not candidates:
            continue
        found, notes = {}, []
        for what, has, read in candidates:
            missing = [p for p in want if p not in found]
            if not missing:
                break
            if has is not None and not has & set(missing):
                continue
            got = read(missing)
            if note := got.pop("note", None):
                notes.append(note)
            for part, (x, y, where) in got.items():
                found.setdefault(part, (x, y))
                notes.append(f"the {part} part ({len(y):,} images) from {where}")
        (train_x, train_y), (test_x, test_y) = (found.get(p, (None, None)) for p in PARTS)
        return Dataset("cifar10", list(CIFAR10_CLASSES), train_x, train_y, test_x, test_y, str(folder),
                       "cifar10: " + "; ".join(notes) if notes else "")
    hint = ("run 'odc data fetch cifar10', set $ODC_DATA or pass --data DIR" if label == "cache" else
            f"name the folder that holds CIFAR-10, or run 'odc data fetch cifar10' and "
            f"{'leave out --data' if label == '--data' else 'unset $ODC_DATA'}")
    raise OdcError(f"{label} {root}: error: holds no cifar10() data set\n"
                   f"looked in {root / 'cifar10'} and {root} for cifar-10-batches-bin/ (data_batch_1.bin ... "
                   f"data_batch_5.bin, test_batch.bin), cifar-10-batches-py/, train/ and test/ folders of class "
                   f"folders, or a .tar/.tar.gz archive named cifar* of any of these (one part, train or test, "
                   f"is enough)\nhint: {hint}")


# ---------------------------------------------------------------------------- the embedded sample

def make_sample(x, y, classes, train_per_class=350, test_per_class=50, seed=0) -> dict[str, np.ndarray]:
    """A balanced sample: for each class, `train_per_class + test_per_class` distinct images drawn
    with a fixed seed. The embedded file is `np.savez_compressed(SAMPLE, **make_sample(x, y, classes))`
    with the upright images, labels and mapping of the EMNIST ByMerge test split (a test checks it)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(len(classes)):
        drawn = rng.choice(np.flatnonzero(y == c), train_per_class + test_per_class, replace=False)
        train.append(drawn[:train_per_class])
        test.append(drawn[train_per_class:])
    train, test = np.concatenate(train), np.concatenate(test)
    return {"train_x": x[train], "train_y": y[train].astype(np.uint8), "test_x": x[test],
            "test_y": y[test].astype(np.uint8), "classes": np.array(classes)}


def load_sample() -> Dataset:
    with np.load(SAMPLE) as f:
        return Dataset("emnist-balanced (embedded sample)", [str(c) for c in f["classes"]],
                       f["train_x"], f["train_y"].astype(np.int64), f["test_x"], f["test_y"].astype(np.int64),
                       str(SAMPLE))


# ---------------------------------------------------------------------------- odc data list / fetch

def describe_data(data_dir=None) -> str:
    """What `odc data list` prints: the data sets found in each place, and the embedded sample."""
    lines = []
    for label, root in data_roots(data_dir):
        if label == "cache" and not os.environ.get("ODC_DATA"):
            lines.append("$ODC_DATA (not set)")
        lines.append(f"{label} {root}" + ("" if root.is_dir() else " (does not exist)"))
        found = []
        for folder in (root / "emnist", root / "mnist", root / "fashion_mnist", root):
            for split, parts in _emnist_splits(folder).items():
                found.append((f"emnist {split}", parts, folder))
            if parts := _parts(folder, ""):
                name = folder.name if folder != root else "mnist or fashion_mnist (MNIST layout)"
                found.append((name, parts, folder))
        for folder in (root / "cifar10", root):
            try:
                candidates = _cifar_candidates(folder) if folder.is_dir() else []
            except OdcError as e:
                candidates = [(f"{folder} (damaged: {str(e).splitlines()[0]})", set(), None)]
            for what, has, _ in candidates:
                found.append(("cifar10", has, what))
        for name, parts, folder in found:
            which = ("(archive)" if parts is None else "train + test" if len(parts) == 2 else
                     f"{next(iter(parts))} only" if parts else "")
            lines.append(f"    {name:<24} {which:<13} {folder}")
        lines += [] if found else ["    (no data sets)"]
    with np.load(SAMPLE) as f:
        lines.append(f"embedded sample {SAMPLE}\n    emnist balanced: {len(f['classes'])} classes, "
                     f"{len(f['train_y']):,} train / {len(f['test_y']):,} test")
    return "\n".join(lines)


def _download(url: str, path: Path, unpack: str = "unzip it") -> tuple[str, str]:
    """Stream `url` into `path`; return the SHA-256 and MD5 of what was written."""
    digest, md5, done = hashlib.sha256(), hashlib.md5(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                md5.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if total and sys.stderr.isatty():
                    print(f"\r{done / 1e6:,.0f} / {total / 1e6:,.0f} MB", end="", file=sys.stderr)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = e.reason if type(e) is urllib.error.URLError else e
        raise OdcError(f"cannot download {url}: {reason}\nhint: download it by hand, {unpack} and "
                       f"pass --data DIR or set $ODC_DATA") from None
    if total and sys.stderr.isatty():
        print(file=sys.stderr)
    return digest.hexdigest(), md5.hexdigest()


def _unzip(archive: Path, folder: Path, url: str) -> None:
    """Extract the EMNIST files (`emnist-*`) of a zip archive flat into `folder`."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if PurePosixPath(m.filename).name.startswith("emnist-")]
            if not members:
                raise OdcError(f"{url}: error: the archive holds no EMNIST files (emnist-*)")
            for m in members:
                with z.open(m) as src, open(folder / PurePosixPath(m.filename).name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise OdcError(f"{url}: error: cannot unpack the archive: {e}") from None


def _fetch_setup(url: str, official: str, official_sha256: str, sha256, dest) -> tuple[str, Path]:
    """The SHA-256 the download must have, and the folder to unpack into (created)."""
    expected = (sha256 or (official_sha256 if url == official else "")).lower()
    if not expected:
        raise OdcError("--sha256 HEX is required with --url, so that the download can be checked")
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise OdcError(f"--sha256 {sha256}: not a SHA-256 (64 hexadecimal digits)")
    dest = Path(dest).expanduser() if dest else cache_dir()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OdcError(f"{dest}: error: cannot create the folder: {e.strerror}") from None
    return expected, dest


def fetch_emnist(dest=None, url=None, sha256=None) -> Path:
    """Download the EMNIST archive, check its SHA-256 and unpack its files into DEST/emnist
    (DEST: the cache folder), replacing what was there only once everything has succeeded."""
    url = url or EMNIST_URL
    expected, dest = _fetch_setup(url, EMNIST_URL, EMNIST_SHA256, sha256, dest)
    target = dest / "emnist"
    with tempfile.TemporaryDirectory(dir=dest, prefix=".emnist-download-") as tmp:
        archive, unpacked = Path(tmp) / "archive.zip", Path(tmp) / "emnist"
        got, _ = _download(url, archive)
        if got != expected:
            raise OdcError(f"{url}: error: SHA-256 mismatch: the download has {got}, expected "
                           f"{expected}; nothing was kept")
        unpacked.mkdir()
        _unzip(archive, unpacked, url)
        if target.exists():
            target.rename(Path(tmp) / "previous")
        unpacked.rename(target)
    return target


CIFAR10_FILES = [f"data_batch_{i}.bin" for i in range(1, CIFAR_BATCHES + 1)] + ["test_batch.bin", "batches.meta.txt"]


def fetch_cifar10(dest=None, url=None, sha256=None) -> Path:
    """Download the official CIFAR-10 binary archive, check its published MD5 and its SHA-256
    (with --url: the SHA-256 given), check its files and unpack them into
    DEST/cifar10/cifar-10-batches-bin (DEST: the cache folder), replacing what was there only
    once everything has succeeded."""
    url = url or CIFAR10_URL
    expected, dest = _fetch_setup(url, CIFAR10_URL, CIFAR10_SHA256, sha256, dest)
    target = dest / "cifar10" / "cifar-10-batches-bin"
    with tempfile.TemporaryDirectory(dir=dest, prefix=".cifar10-download-") as tmp:
        archive, unpacked = Path(tmp) / "archive.tar.gz", Path(tmp) / "cifar-10-batches-bin"
        got, md5 = _download(url, archive, "unpack it")
        if got != expected:
            raise OdcError(f"{url}: error: SHA-256 mismatch: the download has {got}, expected "
                           f"{expected}; nothing was kept")
        if url == CIFAR10_URL and sha256 is None and md5 != CIFAR10_MD5:
            raise OdcError(f"{url}: error: MD5 mismatch: the download has {md5}, the published one is "
                           f"{CIFAR10_MD5}; nothing was kept")
        unpacked.mkdir()
        try:
            with tarfile.open(archive) as tar:  # only the data set's regular files, flat: no path from the archive
                for m in tar:
                    name = PurePosixPath(m.name).name
                    if m.isfile() and name in CIFAR10_FILES and PurePosixPath(m.name).parent.name == target.name:
                        with tar.extractfile(m) as src, open(unpacked / name, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise OdcError(f"{url}: error: cannot unpack the archive: {e}") from None
        missing = [n for n in CIFAR10_FILES if not (unpacked / n).is_file()]
        if missing:
            raise OdcError(f"{url}: error: the archive holds no cifar-10-batches-bin/{missing[0]}; nothing was kept")
        files = _dir_files(unpacked)
        for part, batch in _official(files, python=False).items():  # damage shows now, not at training
            _cifar_bin(batch)
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            target.rename(Path(tmp) / "previous")
        unpacked.rename(target)
    return target
