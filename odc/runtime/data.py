"""Training data: IDX files (MNIST, Fashion-MNIST, EMNIST), where they are found, fetching EMNIST,
and the small EMNIST sample that ships with odc.

`load_dataset(spec, data_dir)` looks for a data set in one place: `--data DIR` if given, else
`$ODC_DATA` if set, else the cache folder (`$ODC_DATA_HOME`, default `~/.cache/odc/data`); there,
first in the sub-folder named after the data set (`emnist/`, `mnist/`, `fashion_mnist/`), then in
the folder itself. A folder that the user names (`--data`, `$ODC_DATA`) and that does not hold
the data set is an error. Images come back as uint8 `[n, 28, 28]`, upright (the official EMNIST
files store every image transposed), labels as int64 class indices.

When a folder holds only one part (train or test), a deterministic stratified split of that part
serves as train and test; `Dataset.note` says so. A part (or split) without images is an error.
EMNIST Balanced falls back to ByMerge, which has the same 47 classes, and EMNIST Balanced/ByMerge
fall back to the embedded sample when no folder is named and the cache folder does not hold them.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from odc.datasets import EMNIST_SPLITS, FASHION_CLASSES
from odc.errors import OdcError

SAMPLE = Path(__file__).with_name("emnist_sample.npz")
EMNIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
# SHA-256 of that archive (561,753,746 bytes), as recorded by TensorFlow Datasets
# (tensorflow_datasets/url_checksums/emnist.txt) and by other projects that verify it.
EMNIST_SHA256 = "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e"
TEST_FRACTION = 1 / 7  # held out per class when a folder holds a single part (EMNIST's own ratio)


@dataclass
class Dataset:
    name: str                 # e.g. "emnist-balanced", "mnist", "idx"
    classes: list[str]        # class index -> character or name
    train_x: np.ndarray       # uint8 [n, H, W], upright
    train_y: np.ndarray       # int64 [n], 0 <= y < len(classes)
    test_x: np.ndarray
    test_y: np.ndarray
    source: str               # the folder or file the data came from
    note: str = ""            # what the user should be told (a fallback, a split made here), or ""


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 images [n, H, W] -> float32 [n, 1, H, W] in [0, 1], the layout models take."""
    return images[:, None].astype(np.float32, order="C") / 255


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


def load_dataset(spec, data_dir=None) -> Dataset:
    """Load the data set of a recipe's `data` key: ("emnist", SPLIT), ("mnist",), ("fashion_mnist",)
    or ("idx", DIR). `data_dir` is the `--data DIR` flag.

    The data set is looked for in one place only: `data_dir`, else `$ODC_DATA` if it is set, else
    the cache folder. Both `data_dir` and `$ODC_DATA` name a folder the user means: one that does
    not hold the data set is an OdcError listing the files looked for and the folders looked in,
    never a silent switch to other data. The embedded sample stands in for emnist("balanced")
    and emnist("bymerge") only when no folder is named and the cache folder does not hold them."""
    kind, *args = spec
    if kind == "idx" and len(args) == 1:
        return _load_idx(Path(args[0]).expanduser())
    known = (kind == "emnist" and len(args) == 1 and args[0] in EMNIST_SPLITS
             or kind in ("mnist", "fashion_mnist") and not args)
    if not known:
        raise OdcError(f"unknown data set {kind}({', '.join(map(repr, args))})\nhint: one of emnist(SPLIT) "
                       f"with SPLIT in {', '.join(EMNIST_SPLITS)}; mnist(); fashion_mnist(); idx(DIR)")
    split = args[0] if args else None
    label, root = data_roots(data_dir)[0]
    folders = (root / kind, root)
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
        for name, parts, folder in found:
            which = "train + test" if len(parts) == 2 else f"{next(iter(parts))} only"
            lines.append(f"    {name:<24} {which:<13} {folder}")
        lines += [] if found else ["    (no data sets)"]
    with np.load(SAMPLE) as f:
        lines.append(f"embedded sample {SAMPLE}\n    emnist balanced: {len(f['classes'])} classes, "
                     f"{len(f['train_y']):,} train / {len(f['test_y']):,} test")
    return "\n".join(lines)


def _download(url: str, path: Path) -> str:
    """Stream `url` into `path`; return the SHA-256 of what was written."""
    digest, done = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if total and sys.stderr.isatty():
                    print(f"\r{done / 1e6:,.0f} / {total / 1e6:,.0f} MB", end="", file=sys.stderr)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = e.reason if type(e) is urllib.error.URLError else e
        raise OdcError(f"cannot download {url}: {reason}\nhint: download it by hand, unzip it and "
                       f"pass --data DIR or set $ODC_DATA") from None
    if total and sys.stderr.isatty():
        print(file=sys.stderr)
    return digest.hexdigest()


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


def fetch_emnist(dest=None, url=None, sha256=None) -> Path:
    """Download the EMNIST archive, check its SHA-256 and unpack its files into DEST/emnist
    (DEST: the cache folder), replacing what was there only once everything has succeeded."""
    url = url or EMNIST_URL
    expected = (sha256 or (EMNIST_SHA256 if url == EMNIST_URL else "")).lower()
    if not expected:
        raise OdcError("--sha256 HEX is required with --url, so that the download can be checked")
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise OdcError(f"--sha256 {sha256}: not a SHA-256 (64 hexadecimal digits)")
    dest = Path(dest).expanduser() if dest else cache_dir()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OdcError(f"{dest}: error: cannot create the folder: {e.strerror}") from None
    target = dest / "emnist"
    with tempfile.TemporaryDirectory(dir=dest, prefix=".emnist-download-") as tmp:
        archive, unpacked = Path(tmp) / "archive.zip", Path(tmp) / "emnist"
        got = _download(url, archive)
        if got != expected:
            raise OdcError(f"{url}: error: SHA-256 mismatch: the download has {got}, expected "
                           f"{expected}; nothing was kept")
        unpacked.mkdir()
        _unzip(archive, unpacked, url)
        if target.exists():
            target.rename(Path(tmp) / "previous")
        unpacked.rename(target)
    return target
