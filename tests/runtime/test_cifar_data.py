"""Colour images: CIFAR-10 in its official binary and Python layouts, class folders and their
archives, `imagefolder`, the cache of decoded images, the restricted unpickler, damaged files of
every layout, the validation split, `odc data fetch cifar10`, training, `odc eval` and `odc predict`
on a 32x32 colour model, and the shared CIFAR-10 archive. The small files are written here in the
official formats (a binary record: a label byte, then the red, green and blue planes, 32x32 each;
a Python batch: a protocol-2 pickle of a dict with b"data" and b"labels", read with encoding
"bytes")."""
import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import shutil
import struct
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from odc import checkpoint
from odc.cli import main
from odc.datasets import CIFAR10_CLASSES
from odc.errors import CompileError, OdcError
from odc.frontend import parse_source
from odc.runtime import data
from odc.runtime.data import as_float, hold_out, load_dataset, stratified_split
from tests.runtime.files import metrics

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10"
ARCHIVE = SHARED / "cifar10-train.tar.gz"

MODEL = """\
model Colour(classes = 10):
    input image: f32[N, 3, 32, 32]
    x = relu(conv2d(image, out=4, kernel=3, stride=2, pad=1))
    x = maxpool2d(x, 4)
    return dense(flatten(x), classes)

train Colour:
    data = cifar10()
    loss = cross_entropy
    optimizer = sgd(lr=0.1, momentum=0.9)
    epochs = 2
    batch = 16
    seed = 3
"""



def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random colour images [n, 3, 32, 32] and labels 0..9 in turn; each class has its own
    tint, so that a model can learn something."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    tint = rng.integers(0, 160, (10, 3, 1, 1))
    x = (rng.integers(0, 96, (n, 3, 32, 32)) + tint[y]).astype(np.uint8)
    return x, y


TRAIN = images(60, 1)
TEST = images(30, 2)


# ---------------------------------------------------------------------------- writing the official layouts

def bin_records(x: np.ndarray, y: np.ndarray) -> bytes:
    """The official binary format: per image one label byte, then 1,024 red, 1,024 green and 1,024 blue bytes."""
    return b"".join(bytes([label]) + image.tobytes() for image, label in zip(x, y))


def write_bin(folder: Path, train=TRAIN, test=TEST, meta=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if train is not None:
        for i, part in enumerate(np.array_split(np.arange(len(train[1])), 5), 1):
            (folder / f"data_batch_{i}.bin").write_bytes(bin_records(train[0][part], train[1][part]))
    if test is not None:
        (folder / "test_batch.bin").write_bytes(bin_records(*test))
    if meta:  # as the official file: a name a line, then blank lines
        (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")
    return folder


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote into the official files: byte strings as STRING
    opcodes and numpy's reconstructor under numpy.core.multiarray."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes

    def save_global(self, obj, name=None):
        name = name or obj.__qualname__
        self.write(pickle.GLOBAL + f"{obj.__module__.replace('numpy._core', 'numpy.core')}\n{name}\n".encode())
        self.memoize(obj)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def py_batch(x, y, label: str, labels_key=b"labels", writer=py2_pickle) -> bytes:
    return writer({b"batch_label": label.encode(), labels_key: [int(v) for v in y],
                   b"data": x.reshape(len(x), -1), b"filenames": [f"img_{i}.png".encode() for i in range(len(y))]})


def write_py(folder: Path, train=TRAIN, test=TEST, labels_key=b"labels", writer=py2_pickle) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if train is not None:
        for i, part in enumerate(np.array_split(np.arange(len(train[1])), 5), 1):
            (folder / f"data_batch_{i}").write_bytes(
                py_batch(train[0][part], train[1][part], f"training batch {i} of 5", labels_key, writer))
    if test is not None:
        (folder / "test_batch").write_bytes(py_batch(*test, "testing batch 1 of 1", labels_key, writer))
    (folder / "batches.meta").write_bytes(writer({b"num_cases_per_batch": 10000, b"num_vis": 3072,
                                                  b"label_names": [c.encode() for c in CIFAR10_CLASSES]}))
    return folder


def write_folders(folder: Path, x, y, classes=CIFAR10_CLASSES, fmt="png") -> Path:
    """Class folders of PNG (lossless) or JPEG files, NNNN.<fmt> in each."""
    for i, (image, label) in enumerate(zip(x, y)):
        d = folder / classes[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(d / f"{i:04d}.{fmt}")
    return folder


def tar_of(folder: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz" if archive.name.endswith("gz") else "w") as tar:
        tar.add(folder, arcname=arcname)
    return archive


def same(ds, train=TRAIN, test=TEST):
    for (x, y), (ex, ey) in (((ds.train_x, ds.train_y), train), ((ds.test_x, ds.test_y), test)):
        if ex is None:
            assert x is None and y is None
            continue
        order = np.lexsort((np.arange(len(ey)), ey))  # class folders come back class by class
        if not np.array_equal(y, ey):
            ex, ey = ex[order], ey[order]
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
        assert x.dtype == np.uint8 and y.dtype == np.int64 and x.shape[1:] == (3, 32, 32)
    assert ds.name == "cifar10" and ds.classes == CIFAR10_CLASSES


# ---------------------------------------------------------------------------- the layouts

@pytest.mark.parametrize("where", ["cifar10/cifar-10-batches-bin", "cifar-10-batches-bin", "cifar10", "."])
def test_official_binary_layout_round_trips(tmp_path, where):
    write_bin(tmp_path / where)
    ds = load_dataset(("cifar10",), data_dir=tmp_path)
    same(ds)
    assert ds.image_shape == (3, 32, 32) and ds.source == str((tmp_path / where).parent
                                                               if "batches" in where else tmp_path / where)
    first = ds.train_x[0]  # the record's first plane is red: pixel (0, 0) of the red plane is byte 1
    assert (tmp_path / where / "data_batch_1.bin").read_bytes()[1:4] == bytes([first[0, 0, 0], first[0, 0, 1],
                                                                                first[0, 0, 2]])


def test_data_flag_may_name_the_batches_folder_itself(tmp_path):
    write_bin(tmp_path / "cifar-10-batches-bin", train=None)
    ds = load_dataset(("cifar10",), data_dir=tmp_path / "cifar-10-batches-bin")
    same(ds, train=(None, None))


@pytest.mark.parametrize("writer", [py2_pickle, lambda obj: pickle.dumps(obj, protocol=2)],
                         ids=["as-python2-wrote-them", "python3-protocol-2"])
@pytest.mark.parametrize("labels_key", [b"labels", b"fine_labels"])
def test_official_python_layout_round_trips(tmp_path, writer, labels_key):
    write_py(tmp_path / "cifar10" / "cifar-10-batches-py", labels_key=labels_key, writer=writer)
    same(load_dataset(("cifar10",), data_dir=tmp_path))


def test_the_python_files_are_read_as_python_reads_them(tmp_path):
    """The same bytes as pickle.load(f, encoding="bytes") gives, the recipe of the data set's page."""
    folder = write_py(tmp_path / "cifar-10-batches-py")
    with open(folder / "test_batch", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    assert data.unpickle((folder / "test_batch").read_bytes(), "x").keys() == d.keys()
    ds = load_dataset(("cifar10",), data_dir=tmp_path)
    np.testing.assert_array_equal(ds.test_x.reshape(len(ds.test_x), -1), d[b"data"])
    assert ds.test_y.tolist() == d[b"labels"]


@pytest.mark.parametrize("archive", [None, "cifar10-train.tar", "cifar10-train.tar.gz"])
def test_class_folders_and_their_archives(tmp_path, archive):
    top = tmp_path / "cifar10"
    write_folders(tmp_path / "src" / "train", *TRAIN)
    write_folders(tmp_path / "src" / "test", *TEST)
    if archive is None:
        (tmp_path / "src").rename(top)
    else:  # laid out as the shared archive: cifar10/train/<class>/NNNN.jpg
        top.mkdir()
        tar_of(tmp_path / "src", top / archive, "cifar10")
    same(load_dataset(("cifar10",), data_dir=tmp_path))


def test_an_official_archive_is_read_as_it_is(tmp_path):
    write_bin(tmp_path / "src" / "cifar-10-batches-bin")
    (tmp_path / "src" / "cifar-10-batches-bin" / "readme.html").write_text("<html></html>")
    tar_of(tmp_path / "src" / "cifar-10-batches-bin", tmp_path / "cifar-10-binary.tar.gz", "cifar-10-batches-bin")
    same(load_dataset(("cifar10",), data_dir=tmp_path))


def test_parts_come_from_the_first_layout_that_has_them(tmp_path):
    """The shared layout (a training archive) beside the official test batch; and only the parts
    asked for are read."""
    write_folders(tmp_path / "src" / "train", *TRAIN)
    (tmp_path / "cifar10").mkdir()
    tar_of(tmp_path / "src", tmp_path / "cifar10" / "cifar10-train.tar.gz", "cifar10")
    write_bin(tmp_path / "cifar10" / "cifar-10-batches-bin", train=None)
    only_test = load_dataset(("cifar10",), data_dir=tmp_path, parts=("test",))
    assert only_test.train_x is None and len(only_test.test_y) == 30
    assert not (tmp_path / "cache" / "decoded").exists()  # the archive was not opened
    same(load_dataset(("cifar10",), data_dir=tmp_path))


def test_either_part_may_be_absent(tmp_path):
    write_bin(tmp_path / "a", test=None)
    ds = load_dataset(("cifar10",), data_dir=tmp_path / "a")
    assert ds.test_x is None and len(ds.train_y) == 60
    write_bin(tmp_path / "b", train=None)
    ds = load_dataset(("cifar10",), data_dir=tmp_path / "b")
    assert ds.train_x is None and len(ds.test_y) == 30


def test_not_found_names_the_places_and_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OdcError) as e:
        load_dataset(("cifar10",), data_dir=tmp_path / "empty")
    text = str(e.value)
    assert "holds no cifar10() data set" in text and "cifar-10-batches-bin/" in text
    assert "odc data fetch cifar10" in text


def test_images_stay_uint8_and_become_float_per_batch(tmp_path):
    write_bin(tmp_path)
    ds = load_dataset(("cifar10",), data_dir=tmp_path)
    batch = as_float(ds.train_x[:7])
    assert batch.dtype == np.float32 and batch.shape == (7, 3, 32, 32) and batch.flags.c_contiguous
    np.testing.assert_allclose(batch, ds.train_x[:7] / 255, rtol=1e-6)
    assert ds.train_x.dtype == np.uint8 and ds.train_x.nbytes == 60 * 3 * 32 * 32


# ---------------------------------------------------------------------------- imagefolder

def test_imagefolder_sorted_names_are_labels_resized_and_grey(tmp_path):
    names = ["zebra", "ant", "Moth"]  # sorted: Moth, ant, zebra
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    expected = {}
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(3):
            h, w = 20 + 7 * i, 30 - 3 * k
            im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            path = root / name / f"{i}.{'jpg' if i == 1 else 'png'}"
            im.save(path)
            expected[name, i] = path
    ds = load_dataset(("imagefolder", str(root), "size=16x24", "channels=3"))
    assert ds.classes == ["Moth", "ant", "zebra"] and ds.train_y.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert ds.train_x.shape == (9, 3, 16, 24) and ds.test_x is None and ds.name == "imagefolder"
    with Image.open(expected["ant", 1]) as im:  # a JPEG: as Pillow decodes it, resized bilinear
        want = np.asarray(im.convert("RGB").resize((24, 16), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(ds.train_x[3 + 1], want)
    grey = load_dataset(("imagefolder", str(root), "size=16x24", "channels=1"))
    assert grey.train_x.shape == (9, 1, 16, 24) and grey.image_shape == (1, 16, 24)
    with Image.open(expected["zebra", 2]) as im:
        want = np.asarray(im.convert("L").resize((24, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(grey.train_x[8, 0], want)


@pytest.mark.parametrize("suffix", ["tar", "tar.gz"])
def test_imagefolder_archive_with_train_and_test_parts(tmp_path, suffix):
    classes = ["cat", "dog"]
    x, y = images(8, 5)
    y = y % 2
    write_folders(tmp_path / "src" / "train", x[:6], y[:6], classes)
    write_folders(tmp_path / "src" / "test", x[6:], y[6:], classes)
    archive = tar_of(tmp_path / "src", tmp_path / f"pets.{suffix}", "pets")
    ds = load_dataset(("imagefolder", str(archive), "size=32x32", "channels=3"))
    assert ds.classes == classes and len(ds.train_y) == 6 and len(ds.test_y) == 2
    order = np.argsort(y[:6], kind="stable")
    np.testing.assert_array_equal(ds.train_x, x[:6][order])
    np.testing.assert_array_equal(ds.train_y, y[:6][order])


def test_imagefolder_hidden_files_are_left_out_with_a_note(tmp_path):
    write_folders(tmp_path / "d", *images(4, 0), classes=[f"c{i}" for i in range(10)])
    (tmp_path / "d" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "d" / "c0" / "._0000.png").write_bytes(b"\0")
    ds = load_dataset(("imagefolder", str(tmp_path / "d"), "size=32x32", "channels=3"))
    assert len(ds.train_y) == 4 and "left out 2 hidden files" in ds.note


def test_imagefolder_in_a_train_block(tmp_path):
    src = MODEL.replace("cifar10()", f'imagefolder("{tmp_path}", size=[32, 32])') + "    valid = 0.25\n"
    r = parse_source(src, "t.od").recipes["Colour"]
    assert r.data == ("imagefolder", str(tmp_path), "size=32x32", "channels=3") and r.image == (3, 32, 32)
    assert r.classes is None and r.valid == 0.25 and r.as_dict()["valid"] == 0.25
    assert r.data_text == f'imagefolder("{tmp_path}", size=[32, 32], channels=3)'
    square = parse_source(src.replace("size=[32, 32]", "size=32, channels=3"), "t.od").recipes["Colour"]
    assert square.data == r.data
    assert "valid" not in parse_source(MODEL, "t.od").recipes["Colour"].as_dict()


@pytest.mark.parametrize("data, valid, needle, message", [
    ('imagefolder(5, size=[32, 32])', "0.1", "5,", "imagefolder expects a string, got 5"),
    ('imagefolder("d", size=[32])', "0.1", "[32]", "imagefolder: size must be [height, width] (or one side "
     "for a square), integers from 1 to 4,096, got [32]"),
    ('imagefolder("d", size=[32, 0])', "0.1", "[32, 0]", "imagefolder: size must be [height, width] (or one "
     "side for a square), integers from 1 to 4,096, got [32, 0]"),
    ('imagefolder("d", size=[32, 32], channels=4)', "0.1", "4)", "imagefolder: channels must be 1 (grey) or "
     "3 (RGB), got 4"),
    ('imagefolder("d")', "0.1", 'imagefolder("d")', "imagefolder is missing argument 'size'"),
    ('imagefolder("d", size=[32, 32], chanels=3)', "0.1", "chanels", "imagefolder has no argument 'chanels'"),
    ("cifar10()", "1", "1\n", "valid must be a fraction between 0 and 1 (exclusive), got 1"),
    ("cifar10()", "0", "0\n", "valid must be a fraction between 0 and 1 (exclusive), got 0"),
    ("cifar10()", '"0.1"', '"0.1"', 'valid must be a fraction between 0 and 1 (exclusive), got "0.1"'),
])
def test_train_block_diagnoses_for_imagefolder_and_valid(data, valid, needle, message):
    src = MODEL.replace("cifar10()", data) + f"    valid = {valid}\n"
    with pytest.raises(CompileError) as e:
        parse_source(src, "t.od")
    d = next(d for d in e.value.diagnostics if "fit the images" not in d.message)
    at = src.index(needle, src.index("train Colour"))
    line = src.count("\n", 0, at) + 1
    assert (d.span.line, d.span.col, d.message) == (line, at - src.rfind("\n", 0, at), message)


# ---------------------------------------------------------------------------- the cache of decoded images

def test_decoded_images_are_cached_by_content_and_memory_mapped(tmp_path, monkeypatch):
    write_folders(tmp_path / "src" / "train", *TRAIN)
    (tmp_path / "cifar10").mkdir()
    archive = tar_of(tmp_path / "src", tmp_path / "cifar10" / "cifar10-train.tar.gz", "cifar10")
    first = load_dataset(("cifar10",), data_dir=tmp_path)
    assert "decoded 60 images" in first.note and len(list((tmp_path / "cache" / "decoded").iterdir())) == 1

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded again")
    with monkeypatch.context() as m:
        m.setattr(data, "decode_image", must_not_decode)
        m.setattr(data, "_archive_tree", must_not_decode)
        second = load_dataset(("cifar10",), data_dir=tmp_path)
    assert isinstance(second.train_x, np.memmap) and "from the cache of decoded images" in second.note
    np.testing.assert_array_equal(second.train_x, first.train_x)
    np.testing.assert_array_equal(second.train_y, first.train_y)
    # another archive (one image less) is another key
    os.remove(tmp_path / "src" / "train" / "truck" / "0059.png")
    tar_of(tmp_path / "src", archive, "cifar10")
    third = load_dataset(("cifar10",), data_dir=tmp_path)
    assert "decoded 59 images" in third.note and len(list((tmp_path / "cache" / "decoded").iterdir())) == 2
    # a damaged cache entry is decoded again
    for npy in (tmp_path / "cache" / "decoded").glob("*/train-images.npy"):
        npy.write_bytes(npy.read_bytes()[:1000])
    assert "decoded 59 images" in load_dataset(("cifar10",), data_dir=tmp_path).note


def test_a_folder_is_cached_by_its_files_names_sizes_and_times(tmp_path):
    write_folders(tmp_path / "cifar10" / "train", *TRAIN)
    assert "decoded 60 images" in load_dataset(("cifar10",), data_dir=tmp_path).note
    assert "from the cache" in load_dataset(("cifar10",), data_dir=tmp_path).note
    path = tmp_path / "cifar10" / "train" / "cat" / "0003.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)
    ds = load_dataset(("cifar10",), data_dir=tmp_path)
    assert "decoded 60 images" in ds.note and not ds.train_x[ds.train_y == 3][0].any()


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    write_folders(tmp_path / "cifar10" / "train", *TRAIN)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("ODC_DATA_HOME", str(tmp_path / "file"))
    ds = load_dataset(("cifar10",), data_dir=tmp_path)
    assert "could not keep the decoded images" in ds.note and len(ds.train_y) == 60


# ---------------------------------------------------------------------------- the restricted unpickler

class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_unpickler_refuses_a_pickle_that_would_call_os_system(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = write_py(tmp_path / "cifar-10-batches-py")
    evil = pickle.dumps({b"data": Evil(marker), b"labels": [0]}, protocol=2)
    assert pickle.loads(evil) == {b"data": 0, b"labels": [0]} and marker.exists()  # it would have run
    marker.unlink()
    (folder / "data_batch_2").write_bytes(evil)
    with pytest.raises(OdcError, match=r"data_batch_2: error: refused to unpickle: the file asks to call "
                                       r"(posix|os|nt)\.system"):
        load_dataset(("cifar10",), data_dir=tmp_path)
    assert not marker.exists()
    model = tmp_path / "m.od"
    model.write_text(MODEL)
    assert main(["compile-and-train", str(model), "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "data_batch_2: error: refused to unpickle" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(eval, protocol=2),
    b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",  # latin-1 only
    b"\x80\x02cbuiltins\ngetattr\n.",
], ids=["eval", "codecs-rot13", "getattr"])
def test_the_unpickler_admits_only_numpy_arrays(payload):
    with pytest.raises(OdcError, match="refused to unpickle"):
        data.unpickle(payload, "f")


# ---------------------------------------------------------------------------- damaged files

def cut(path: Path, n: int):
    path.write_bytes(path.read_bytes()[:n])


def overwrite(path: Path, at: int, value: bytes):
    raw = bytearray(path.read_bytes())
    raw[at:at + len(value)] = value
    path.write_bytes(bytes(raw))


def member_offset(archive: Path, k: int, data=False) -> int:
    """Where the k-th member of a tar archive starts (its header, or with `data` its contents)."""
    with tarfile.open(archive) as tar:
        m = tar.getmembers()[k]
    return m.offset_data if data else m.offset


def archive_of_folders(tmp_path, suffix):
    write_folders(tmp_path / "src" / "train", *TRAIN)
    (tmp_path / "cifar10").mkdir()
    return tar_of(tmp_path / "src", tmp_path / "cifar10" / f"cifar10-train.{suffix}", "cifar10")


def damaged_member(tmp_path, damage):
    """An archive of class folders, one PNG in it damaged by `damage(bytes) -> bytes`."""
    write_folders(tmp_path / "src" / "train", *TRAIN)
    png = tmp_path / "src" / "train" / "bird" / "0002.png"
    png.write_bytes(damage(png.read_bytes()))
    (tmp_path / "cifar10").mkdir()
    tar_of(tmp_path / "src", tmp_path / "cifar10" / "cifar10-train.tar.gz", "cifar10")


def bin_case(change):
    def make(tmp_path):
        folder = write_bin(tmp_path / "cifar-10-batches-bin")
        change(folder)
    return make


def py_case(change):
    def make(tmp_path):
        folder = write_py(tmp_path / "cifar-10-batches-py")
        change(folder)
    return make


def folder_case(change):
    def make(tmp_path):
        write_folders(tmp_path / "train", *TRAIN)
        change(tmp_path / "train")
    return make


DAMAGE = {
    "bin-truncated": (bin_case(lambda f: cut(f / "data_batch_3.bin", 3073 * 5 + 100)),
                      r"data_batch_3\.bin: error: truncated: 15,465 bytes is not a whole number of 3,073-byte "
                      r"records .*: 5 records and 100 bytes over"),
    "bin-empty": (bin_case(lambda f: (f / "test_batch.bin").write_bytes(b"")),
                  r"test_batch\.bin: error: holds no records"),
    "bin-label": (bin_case(lambda f: overwrite(f / "data_batch_2.bin", 3073 * 4, b"\x0c")),
                  r"data_batch_2\.bin: error: corrupt: image 4 has label 12, but CIFAR-10's labels are 0 to 9"),
    "bin-gap": (bin_case(lambda f: (f / "data_batch_4.bin").unlink()),
                r"data_batch_1\.bin: error: data_batch_4\.bin is missing beside it"),
    "bin-meta": (bin_case(lambda f: (f / "batches.meta.txt").write_text("apple\npear\n")),
                 r"batches\.meta\.txt: error: lists the classes apple, pear, but CIFAR-10's are airplane"),
    "py-truncated": (py_case(lambda f: cut(f / "data_batch_1", 500)),
                     r"data_batch_1: error: truncated: cannot unpickle it"),
    "py-garbage": (py_case(lambda f: (f / "test_batch").write_bytes(b"\x80\x02}q\x00(\xff\xfe")),
                   r"test_batch: error: corrupt: cannot unpickle it"),
    "py-keys": (py_case(lambda f: (f / "data_batch_5").write_bytes(py2_pickle({b"pixels": b""}))),
                r"data_batch_5: error: corrupt: a CIFAR-10 batch has the keys b'data' and b'labels'; this one has "
                r"b'pixels'"),
    "py-dtype": (py_case(lambda f: (f / "test_batch").write_bytes(
        py2_pickle({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}))),
        r"test_batch: error: corrupt: b'data' is float32 \[2, 3072\], expected uint8 \[n, 3072\]"),
    "py-labels": (py_case(lambda f: (f / "test_batch").write_bytes(
        py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))),
        r"test_batch: error: corrupt: b'labels' should be 2 integers, one per image"),
    "py-meta": (py_case(lambda f: (f / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"a"]}))),
                r"batches\.meta: error: lists the classes a, but CIFAR-10's are"),
    "folder-truncated-png": (folder_case(lambda f: cut(f / "cat" / "0003.png", 200)),
                             r"train/cat/0003\.png: error: cannot decode the image: "),
    "folder-not-an-image": (folder_case(lambda f: (f / "dog" / "notes.txt").write_text("x")),
                            r"train/dog/notes\.txt: error: not a JPEG or PNG image"),
    "folder-garbage-jpeg": (folder_case(lambda f: (f / "dog" / "x.jpg").write_bytes(b"\xff\xd8 not really")),
                            r"train/dog/x\.jpg: error: cannot decode"),
    "folder-mis-sized": (folder_case(lambda f: Image.new("RGB", (30, 32)).save(f / "frog" / "0006.png")),
                         r"train/frog/0006\.png: error: the image is 30x32, but CIFAR-10's images are 32x32"),
    "folder-missing-class": (folder_case(lambda f: shutil.rmtree(f / "ship")),
                             r"error: the train part has no class folder 'ship'"),
    "folder-unknown-class": (folder_case(lambda f: (f / "ship").rename(f / "boat")),
                             r"train/boat: error: a class folder of the train part that the data set does not "
                             r"have \('boat'\)"),
    "folder-empty-class": (folder_case(lambda f: (f / "zebra").mkdir()),
                           r"error: the class folder 'zebra' of the train part holds no images"),
    "folder-stray-file": (folder_case(lambda f: (f / "README").write_text("x")),
                          r"train/README: error: a file beside the class folders"),
    "tar.gz-truncated": (lambda t: cut(archive_of_folders(t, "tar.gz"), 5000),
                         r"cifar10-train\.tar\.gz: error: truncated: the gzip stream ends early"),
    "tar.gz-corrupt": (lambda t: overwrite(archive_of_folders(t, "tar.gz"), 3000, b"\x00" * 64),
                       r"cifar10-train\.tar\.gz: error: corrupt gzip data"),
    "tar-cut-in-a-member": (lambda t: cut(a := archive_of_folders(t, "tar"), member_offset(a, 6, data=True) + 10),
                            r"cifar10-train\.tar: error: truncated: the archive ends inside a member"),
    "tar-cut-between-members": (lambda t: cut(a := archive_of_folders(t, "tar"), member_offset(a, 6)),
                                r"cifar10-train\.tar: error: truncated: the archive ends without its "
                                r"end-of-archive blocks"),
    "tar-not-a-tar": (lambda t: (t / "cifar10.tar").write_bytes(b"hello" * 200),
                      r"cifar10\.tar: error: not a readable tar archive"),
    "tar-member-truncated-png": (lambda t: damaged_member(t, lambda b: b[:150]),
                                 r"cifar10-train\.tar\.gz: cifar10/train/bird/0002\.png: error: cannot decode the "
                                 r"image: "),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_files_name_the_file_and_what_is_wrong(tmp_path, case):
    make, message = DAMAGE[case]
    make(tmp_path)
    with pytest.raises(OdcError, match=message):
        load_dataset(("cifar10",), data_dir=tmp_path)


@pytest.mark.parametrize("case", ["bin-truncated", "py-truncated", "folder-truncated-png", "tar.gz-truncated"])
def test_damaged_files_exit_1_through_the_cli(tmp_path, case, capsys):
    make, message = DAMAGE[case]
    (tmp_path / "data").mkdir()
    make(tmp_path / "data")
    model = tmp_path / "m.od"
    model.write_text(MODEL)
    assert main(["compile-and-train", str(model), "--data", str(tmp_path / "data"), "--out",
                 str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()


@pytest.mark.parametrize("spec, message", [
    (lambda t: str(t / "nope"), r"imagefolder\('.*nope'\): error: no such folder or archive"),
    (lambda t: str(t / "x.zip"), r"x\.zip is neither a folder nor a \.tar/\.tar\.gz archive"),
    (lambda t: str(t / "empty"), r"empty: error: holds no class folders"),
])
def test_imagefolder_errors(tmp_path, spec, message):
    (tmp_path / "x.zip").write_bytes(b"PK")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OdcError, match=message):
        load_dataset(("imagefolder", spec(tmp_path), "size=8x8", "channels=3"))


# ---------------------------------------------------------------------------- the validation split

def test_hold_out_is_stratified_and_fixed_by_the_seed(tmp_path):
    write_bin(tmp_path, test=None)
    ds = load_dataset(("cifar10",), data_dir=tmp_path)
    a, b, c = hold_out(ds, 0.5, 7), hold_out(ds, 0.5, 7), hold_out(ds, 0.5, 8)
    np.testing.assert_array_equal(a.valid_x, b.valid_x)
    assert not np.array_equal(a.valid_x, c.valid_x)
    assert np.bincount(a.valid_y).tolist() == [3] * 10 and np.bincount(a.train_y).tolist() == [3] * 10
    rows = {r.tobytes() for r in np.concatenate([a.train_x, a.valid_x])}
    assert len(rows) == 60 == len({r.tobytes() for r in ds.train_x} & rows)
    train, valid = stratified_split(ds.train_y, 0.5, 7)
    np.testing.assert_array_equal(a.valid_y, ds.train_y[valid])
    with pytest.raises(OdcError, match="too few to hold out 0.01 of each class"):
        hold_out(ds, 0.01, 0)



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 32x32 colour model trained 2 epochs on the official binary layout with valid = 0.2:
    the run folder, the data folder, and what it printed."""
    root = tmp_path_factory.mktemp("colour")
    write_bin(root / "data" / "cifar-10-batches-bin")
    model = root / "colour.od"
    model.write_text(MODEL + "    valid = 0.2\n")
    out = io.StringIO()
    from odc.runtime.train import compile_and_train
    old = os.environ.get("ODC_DATA_HOME")
    os.environ["ODC_DATA_HOME"] = str(root / "cache")
    try:
        run = compile_and_train(model, data_dir=root / "data", out=root / "run", log=lambda s: print(s, file=out))
    finally:
        os.environ.pop("ODC_DATA_HOME") if old is None else os.environ.__setitem__("ODC_DATA_HOME", old)
    return run, root / "data", out.getvalue()


def test_valid_is_evaluated_every_epoch_and_the_test_part_at_the_end(trained):
    run, _, printed = trained
    recs = metrics(run)
    assert [r["epoch"] for r in recs] == [1, 2]
    assert all(r["valid_loss"] > 0 and 0 <= r["valid_accuracy"] <= 1 for r in recs)
    assert recs[0]["test_loss"] is None and recs[0]["test_accuracy"] is None
    assert recs[1]["test_loss"] > 0 and recs[1]["test_accuracy"] >= 0
    assert "on cifar10: 50 train / 10 validation / 30 test images, 10 classes" in printed
    assert re.search(r"epoch 1/2  lr \S+  train loss \S+  valid loss \S+  valid accuracy", printed)
    assert f"test accuracy {recs[1]['test_accuracy']:6.2%} on the 30 test images, after the last epoch" in printed
    assert "per-class accuracy on the test part:" in printed and "airplane" in printed
    ckpt = checkpoint.read(run)
    assert ckpt.recipe["valid"] == 0.2 and ckpt.classes == CIFAR10_CLASSES


def test_eval_reads_the_official_test_batch_alone(trained, tmp_path, capsys):
    """The hidden test's path: odc eval CKPT --data DIR, DIR holding only the official binary test part."""
    run, _, _ = trained
    write_bin(tmp_path / "only-test" / "cifar-10-batches-bin", train=None)
    assert main(["eval", str(run), "--data", str(tmp_path / "only-test")]) == 0
    out = capsys.readouterr().out
    assert f"on cifar10 (30 test images): top-1 accuracy {metrics(run)[-1]['test_accuracy']:.2%}" in out
    assert "per-class accuracy on the test part:" in out


def test_eval_without_a_test_part_uses_the_part_the_run_held_out(trained, tmp_path, capsys):
    run, _, _ = trained
    write_bin(tmp_path / "only-train", test=None)
    assert main(["eval", str(run), "--data", str(tmp_path / "only-train")]) == 0
    captured = capsys.readouterr()
    assert "on cifar10 (10 validation images)" in captured.out
    assert "has no test part: evaluating on the validation part the run held out (0.2" in captured.err


def test_training_part_alone_trains_with_a_validation_split(tmp_path, capsys):
    write_bin(tmp_path / "data", test=None)
    model = tmp_path / "m.od"
    model.write_text(MODEL.replace("epochs = 2", "epochs = 1"))
    assert main(["compile-and-train", str(model), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert "has no test part: 10% of the training part (of each class, drawn with seed 3) is held out" in captured.err
    assert "50 train / 10 validation images" in captured.out
    assert "per-class accuracy on the validation part:" in captured.out
    assert checkpoint.read(tmp_path / "r").recipe["valid"] == 0.1
    assert metrics(tmp_path / "r")[0]["test_accuracy"] is None


def test_test_part_alone_does_not_train(tmp_path, capsys):
    write_bin(tmp_path / "data", train=None)
    model = tmp_path / "m.od"
    model.write_text(MODEL)
    assert main(["compile-and-train", str(model), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "cifar10 in" in err and "has no training part (only a test part, which serves odc eval)" in err


def test_predict_on_a_32x32_colour_model_prints_class_names(trained, tmp_path, capsys):
    run, _, _ = trained
    x = TEST[0][4]
    Image.fromarray(x.transpose(1, 2, 0)).save(tmp_path / "same.png")
    Image.fromarray(x.transpose(1, 2, 0)).resize((96, 64)).convert("RGBA").save(tmp_path / "big.png")
    import odc
    logits = odc.load_checkpoint(run).forward(as_float(x[None])).astype(np.float64)[0]
    best = [CIFAR10_CLASSES[i] for i in np.argsort(-logits, kind="stable")[:5]]
    assert main(["predict", str(run), str(tmp_path / "same.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("used as it is (32x32)") and len(lines) == 6
    assert [line.split()[1] for line in lines[1:]] == [repr(c) for c in best]
    assert main(["predict", str(run), str(tmp_path / "big.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "converted from RGBA to RGB, resized from 96x64 to 32x32" in lines[0]
    assert all(re.fullmatch(r"  \d\. '[a-z]+' +\d+\.\d\d%", line) for line in lines[1:])
    assert main(["predict", str(run), str(tmp_path / "nope.png")]) == 1
    assert "nope.png: no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------- odc data fetch cifar10 / list

def official_archive(tmp_path) -> bytes:
    src = write_bin(tmp_path / "official" / "cifar-10-batches-bin")
    (src / "readme.html").write_text("<html></html>")
    return tar_of(src, tmp_path / "official.tar.gz", "cifar-10-batches-bin").read_bytes()


@pytest.fixture
def server(tmp_path):
    files = {"/cifar-10-binary.tar.gz": official_archive(tmp_path),
             "/broken.tar.gz": gzip.compress(b"not a tar" * 100)}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path, b"")
            self.send_response(200 if self.path in files else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    httpd.shutdown()
    thread.join()


def test_fetch_cifar10_checks_and_unpacks_the_official_archive(server, tmp_path, capsys):
    base, sha = server
    dest = tmp_path / "dest"
    for _ in range(2):  # a second fetch replaces the first
        assert main(["data", "fetch", "cifar10", "--url", f"{base}/cifar-10-binary.tar.gz",
                     "--sha256", sha["/cifar-10-binary.tar.gz"], "--dest", str(dest)]) == 0
    assert "CIFAR-10 unpacked into" in capsys.readouterr().out
    assert sorted(os.listdir(dest)) == ["cifar10"]
    assert sorted(os.listdir(dest / "cifar10" / "cifar-10-batches-bin")) == sorted(data.CIFAR10_FILES)
    same(load_dataset(("cifar10",), data_dir=dest))
    assert main(["data", "list", "--data", str(dest)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"cifar10 +train \+ test +.*cifar-10-batches-bin \(official binary layout\)", out)


def test_fetch_cifar10_refuses_a_bad_download_and_keeps_nothing(server, tmp_path, capsys):
    base, sha = server
    dest = tmp_path / "dest"
    dest.mkdir()
    good = sha["/cifar-10-binary.tar.gz"]
    bad = ("0" if good[0] != "0" else "1") + good[1:]
    assert main(["data", "fetch", "cifar10", "--url", f"{base}/cifar-10-binary.tar.gz", "--sha256", bad,
                 "--dest", str(dest)]) == 1
    assert "SHA-256 mismatch" in capsys.readouterr().err
    assert main(["data", "fetch", "cifar10", "--url", f"{base}/broken.tar.gz", "--sha256", sha["/broken.tar.gz"],
                 "--dest", str(dest)]) == 1
    assert "cannot unpack the archive" in capsys.readouterr().err
    with pytest.raises(OdcError, match="--sha256 HEX is required with --url"):
        data.fetch_cifar10(dest, f"{base}/cifar-10-binary.tar.gz")
    assert os.listdir(dest) == []


def test_the_official_checksums_are_the_published_ones():
    assert data.CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert data.CIFAR10_MD5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert re.fullmatch(r"[0-9a-f]{64}", data.CIFAR10_SHA256)


# ---------------------------------------------------------------------------- the shared archive

@pytest.fixture(scope="module")
def shared_archive():
    if not ARCHIVE.is_file():
        pytest.fail(f"{ARCHIVE} is missing: the shared data set is part of the test set-up "
                    "(shared/ beside the repository)")
    return ARCHIVE


def test_the_shared_archive_holds_cifar10_as_class_folders(shared_archive):
    raw = shared_archive.read_bytes()
    want = (SHARED / "SHA256SUMS").read_text().split()[0]
    assert hashlib.sha256(raw).hexdigest() == want
    entries = data._archive_tree(shared_archive, raw)
    folders, hidden = data._class_folders(entries, str(shared_archive), "train")
    assert hidden == 0 and list(folders) == ["train"]
    assert sorted(folders["train"]) == CIFAR10_CLASSES
    assert [len(folders["train"][c]) for c in CIFAR10_CLASSES] == [5000] * 10
    for c in CIFAR10_CLASSES:  # a few hundred decoded: 32x32 RGB, as Pillow decodes them
        for e in sorted(folders["train"][c], key=lambda e: e.path)[:30]:
            x = data.decode_image(e.read(), e.where, (32, 32), 3, exact="CIFAR-10")
            assert x.shape == (3, 32, 32) and x.dtype == np.uint8
    with Image.open(io.BytesIO(e.read())) as im:
        np.testing.assert_array_equal(x, np.asarray(im.convert("RGB")).transpose(2, 0, 1))


@pytest.mark.slow
def test_the_shared_archive_loads_as_cifar10_and_then_from_the_cache(shared_archive):
    t0 = time.perf_counter()
    first = load_dataset(("cifar10",), data_dir=SHARED.parent)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = load_dataset(("cifar10",), data_dir=SHARED.parent)
    warm = time.perf_counter() - t0
    assert first.train_x.shape == (50000, 3, 32, 32) and first.test_x is None
    assert np.bincount(first.train_y).tolist() == [5000] * 10
    assert isinstance(second.train_x, np.memmap) and warm < 2 and warm < cold / 3
    np.testing.assert_array_equal(second.train_x[::997], first.train_x[::997])
