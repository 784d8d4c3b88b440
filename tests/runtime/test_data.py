"""The data layer: IDX reading and its errors, data sets and where they are found, the embedded
EMNIST sample, and `odc data fetch` against a local HTTP server."""
import gzip
import hashlib
import http.server
import io
import os
import re
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from odc.cli import main
from odc.errors import OdcError
from odc.runtime import data
from odc.runtime.data import as_float, load_dataset, read_idx, stratified_split
from tests.runtime.files import idx_bytes

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "emnist"
LENET5 = Path(__file__).resolve().parents[2] / "models" / "lenet5.od"
IMAGES = "emnist-bymerge-test-images-idx3-ubyte.gz"
LABELS = "emnist-bymerge-test-labels-idx1-ubyte.gz"



@pytest.fixture(scope="module")
def shared():
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the shared data set is part of the test set-up "
                    "(shared/ beside the repository)")
    return SHARED


@pytest.fixture(scope="module")
def balanced(shared):
    """emnist("balanced") from the shared folder, which holds only the ByMerge test split."""
    return load_dataset(("emnist", "balanced"), data_dir=shared.parent)



def write_set(folder: Path, stem: str, x: np.ndarray, y: np.ndarray, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    for kind, a in (("images-idx3", x), ("labels-idx1", y)):
        raw = idx_bytes(a)
        name = f"{stem}-{kind}-ubyte" + (".gz" if compress else "")
        (folder / name).write_bytes(gzip.compress(raw) if compress else raw)


def tiny(n, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % classes


def ink_mean(ds: data.Dataset, ch: str) -> np.ndarray:
    return ds.train_x[ds.train_y == ds.classes.index(ch)].mean(0)


def assert_upright(ds: data.Dataset):
    """Shapes of handwritten glyphs: '1' is taller than wide, 'L' has its ink on the left and at
    the bottom, '7' on the right and at the top. Transposed or flipped images fail this."""
    ink = ink_mean(ds, "1") > ink_mean(ds, "1").max() / 4
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    assert rows[-1] - rows[0] > 1.5 * (cols[-1] - cols[0])
    m = ink_mean(ds, "L")
    assert m[:, :14].sum() > 1.1 * m[:, 14:].sum() and m[14:].sum() > 1.1 * m[:14].sum()
    m = ink_mean(ds, "7")
    assert m[:, 14:].sum() > 1.1 * m[:, :14].sum() and m[:14].sum() > 1.1 * m[14:].sum()


# ---------------------------------------------------------------------------- IDX files

@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    x, y = tiny(5)
    write_set(tmp_path, "train", x, y, compress)
    suffix = ".gz" if compress else ""
    np.testing.assert_array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", 3), x)
    np.testing.assert_array_equal(read_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", 1), y)


def test_read_real_emnist_file(shared):
    x, y = read_idx(shared / IMAGES, 3), read_idx(shared / LABELS, 1)
    assert x.shape == (116323, 28, 28) and x.dtype == np.uint8
    counts = np.bincount(y)
    assert len(counts) == 47 and counts.min() == 415  # README: 47 classes, the smallest has 415


def test_truncated_real_file_names_file_and_sizes(shared, tmp_path):
    cut = tmp_path / IMAGES
    cut.write_bytes((shared / IMAGES).read_bytes()[:1024])
    with pytest.raises(OdcError) as e:
        read_idx(cut, 3)
    msg = str(e.value)
    assert msg.startswith(f"{cut}: error: truncated: header says 116,323 images of 28x28 (91,197,232 bytes)")


def damaged_files():
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = idx_bytes(x)
    packed = gzip.compress(good)
    mid = len(packed) // 2
    return {
        "empty": (b"", "truncated: 0 bytes, shorter than the 16-byte IDX header"),
        "short header": (good[:10], "shorter than the 16-byte IDX header"),
        "short payload": (good[:-5], "truncated: header says 2 images of 3x4 (24 bytes) but 19 bytes"),
        "extra bytes": (good + b"\0", "corrupt: header says 2 images of 3x4 (24 bytes) but 25 bytes"),
        "labels magic": (bytes([0, 0, 8, 1]) + good[4:], "bad magic number 0x00000801"),
        "float data": (bytes([0, 0, 0x0D, 3]) + good[4:], "bad magic number 0x00000d03"),
        "text file": (b"hello, world, not IDX", "bad magic number 0x68656c6c"),
        "gzip cut short": (packed[:-6], "truncated: the gzip stream ends early"),
        "gzip payload cut": (gzip.compress(good[:-5]), "truncated: header says 2 images"),
        "gzip corrupt": (packed[:mid] + bytes([packed[mid] ^ 0xFF]) + packed[mid + 1:], "corrupt"),
        "gzip bad header": (b"\x1f\x8b\x99" + packed[3:], "corrupt gzip data"),
    }


@pytest.mark.parametrize("case", list(damaged_files()))
def test_damaged_files_raise_odc_error_naming_the_file(tmp_path, case):
    content, expected = damaged_files()[case]
    path = tmp_path / "x-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(OdcError) as e:
        read_idx(path, 3)
    assert str(e.value).startswith(f"{path}: error: ") and expected in str(e.value)


def test_missing_file_is_odc_error(tmp_path):
    with pytest.raises(OdcError, match="cannot read"):
        read_idx(tmp_path / "nope-images-idx3-ubyte.gz", 3)


# ---------------------------------------------------------------------------- data sets

def test_stratified_split_is_deterministic_and_stratified():
    y = np.repeat(np.arange(5), [7, 14, 100, 3, 50])
    np.random.default_rng(1).shuffle(y)
    train, test = stratified_split(y)
    again = stratified_split(y)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(test, again[1])
    assert np.intersect1d(train, test).size == 0 and len(train) + len(test) == len(y)
    assert np.bincount(y[test], minlength=5).tolist() == [1, 2, 14, 0, 7]  # round(n / 7)
    assert not np.array_equal(stratified_split(y, seed=1)[1], test)


def test_emnist_balanced_falls_back_to_bymerge_test_split(balanced, shared):
    ds = balanced
    assert ds.name == "emnist-bymerge" and ds.source == str(shared)
    assert ds.classes == [chr(int(line.split()[1]))
                          for line in (shared / "emnist-bymerge-mapping.txt").read_text().splitlines()]
    assert ds.classes[:11] == list("0123456789A") and ds.classes[-1] == "t"
    assert (len(ds.train_y), len(ds.test_y)) == (99707, 16616)
    assert "using emnist-bymerge, which has the same 47 classes" in ds.note
    assert "stratified split into 99,707 train / 16,616 test" in ds.note
    assert ds.train_x.shape[1:] == (28, 28) and ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int64
    assert all(a.flags.c_contiguous and a.flags.writeable for a in (ds.train_x, ds.test_x))
    counts = np.bincount(np.concatenate([ds.train_y, ds.test_y]))
    np.testing.assert_array_equal(np.bincount(ds.test_y), np.round(counts / 7))


def test_emnist_images_are_upright(balanced):
    assert_upright(balanced)


def test_as_float():
    x, _ = tiny(3)
    f = as_float(x)
    assert f.shape == (3, 1, 28, 28) and f.dtype == np.float32
    np.testing.assert_allclose(f[:, 0], x / 255.0, rtol=1e-7)


def test_mnist_and_fashion_layouts(tmp_path):
    x, y = tiny(20)
    write_set(tmp_path / "fashion_mnist", "train", x, y)
    write_set(tmp_path / "fashion_mnist", "t10k", x[:6], y[:6], compress=False)
    ds = load_dataset(("fashion_mnist",), data_dir=tmp_path)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and ds.note == ""
    np.testing.assert_array_equal(ds.train_x, x)  # MNIST files are stored upright
    np.testing.assert_array_equal(ds.test_y, y[:6])
    assert all(a.flags.c_contiguous and a.flags.writeable for a in (ds.train_x, ds.test_x))
    with pytest.raises(OdcError, match="holds no mnist data set"):
        load_dataset(("mnist",), data_dir=tmp_path)  # no mnist/ there, and no files at the top


def test_idx_folder_with_emnist_names_and_mapping(tmp_path):
    x, y = tiny(8, classes=4)
    # official EMNIST files store images transposed; labels as in a 'letters' mapping start at 1
    write_set(tmp_path, "emnist-letters-train", x.transpose(0, 2, 1), y + 1)
    write_set(tmp_path, "emnist-letters-test", x[:4].transpose(0, 2, 1), y[:4] + 1)
    (tmp_path / "emnist-letters-mapping.txt").write_text("1 65 97\n2 66 98\n3 67 99\n4 68 100\n")
    ds = load_dataset(("idx", str(tmp_path)))
    assert ds.classes == ["Aa", "Bb", "Cc", "Dd"]
    np.testing.assert_array_equal(ds.train_x, x)
    np.testing.assert_array_equal(ds.train_y, y)


def test_idx_folder_with_only_a_train_part_is_split(tmp_path):
    x, y = tiny(70, classes=7)
    write_set(tmp_path, "train", x, y)
    ds = load_dataset(("idx", str(tmp_path)))
    assert ds.classes == [str(i) for i in range(7)]
    assert np.bincount(ds.test_y).tolist() == [1] * 7 and np.bincount(ds.train_y).tolist() == [9] * 7
    assert "only a train part here: stratified split into 63 train / 7 test" in ds.note
    rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in rows for r in np.concatenate([ds.train_x, ds.test_x]))


@pytest.mark.parametrize("damage, expected", [
    ("label 10", "label 10 is not one of the 10 classes of mnist"),
    ("fewer labels", "9 labels for the 10 images"),
    ("no labels file", "found no matching labels file"),
])
def test_inconsistent_data_sets(tmp_path, damage, expected):
    x, y = tiny(10)
    folder = tmp_path / "mnist"
    write_set(folder, "t10k", x, y)
    write_set(folder, "train", x, np.where(np.arange(10) == 3, 10, y) if damage == "label 10" else
              y[:9] if damage == "fewer labels" else y)
    if damage == "no labels file":
        (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(OdcError, match=expected):
        load_dataset(("mnist",), data_dir=tmp_path)


def test_bad_specs(tmp_path):
    for spec in [("emnist", "klingon"), ("cifar100",), ("cifar10", "x"), ("mnist", "x")]:
        with pytest.raises(OdcError, match="unknown data set"):
            load_dataset(spec)
    with pytest.raises(OdcError, match="no such folder"):
        load_dataset(("idx", str(tmp_path / "nope")))
    with pytest.raises(OdcError, match="holds no IDX data set"):
        load_dataset(("idx", str(tmp_path)))
    with pytest.raises(OdcError, match="--data .*: no such folder"):
        load_dataset(("mnist",), data_dir=tmp_path / "nope")


@pytest.mark.parametrize("sizes, culprit, message", [
    ({"train": 0, "t10k": 5}, "train-images-idx3-ubyte.gz", "holds 0 images: the train part of mnist needs at least one"),
    ({"train": 20, "t10k": 0}, "t10k-images-idx3-ubyte.gz", "holds 0 images: the test part of mnist needs at least one"),
    ({"train": 0}, "train-images-idx3-ubyte.gz", "holds 0 images: the train part of mnist needs at least one"),
    ({"t10k": 1}, "t10k-images-idx3-ubyte.gz", "1 image of mnist, too few to split into train and test"),
    ({"train": 3}, "train-images-idx3-ubyte.gz", "3 images of mnist, too few to split into train and test"),
], ids=["empty train", "empty test", "lone empty part", "lone 1-image part", "lone 3-image part"])
def test_a_part_without_images_is_an_error_naming_the_file(sizes, culprit, message, tmp_path):
    """It was 'ValueError: need at least one array to concatenate' (or a division by zero) later."""
    for stem, n in sizes.items():
        write_set(tmp_path / "mnist", stem, *tiny(n))
    with pytest.raises(OdcError) as e:
        load_dataset(("mnist",), data_dir=tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'mnist' / culprit}: error: {message}")
    assert "\nhint: " in str(e.value)


def test_one_train_and_one_test_image_train_a_model(tmp_path, capsys):
    """The smallest data set there is still trains and evaluates."""
    write_set(tmp_path / "mnist", "train", *tiny(1))
    write_set(tmp_path / "mnist", "t10k", *tiny(1, seed=1))
    model = tmp_path / "m.od"
    model.write_text("model M(classes = 10):\n    input image: f32[N, 1, 28, 28]\n"
                     "    return dense(flatten(image), classes)\n\n"
                     "train M:\n    data = mnist()\n    epochs = 1\n")
    assert main(["compile-and-train", str(model), "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 0
    assert "on mnist: 1 train / 1 test images" in capsys.readouterr().out
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()


# ---------------------------------------------------------------------------- where data is found

def test_location_order_data_flag_then_env_then_cache(tmp_path, monkeypatch):
    for place, n in (("flag", 7), ("env", 8), ("cache", 9)):
        x, y = tiny(n)
        write_set(tmp_path / place / "mnist", "train", x, y)
        write_set(tmp_path / place / "mnist", "t10k", x, y)
    monkeypatch.setenv("ODC_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("ODC_DATA_HOME", str(tmp_path / "cache"))
    assert len(load_dataset(("mnist",), data_dir=tmp_path / "flag").train_y) == 7
    assert len(load_dataset(("mnist",), data_dir=tmp_path / "flag" / "mnist").train_y) == 7  # the folder
    assert len(load_dataset(("mnist",)).train_y) == 8
    monkeypatch.delenv("ODC_DATA")
    assert len(load_dataset(("mnist",)).train_y) == 9


def test_a_named_folder_is_the_only_place_looked_in(tmp_path, monkeypatch):
    """--data DIR wins over $ODC_DATA and the cache even when the data set is only there."""
    x, y = tiny(7)
    for place in ("env", "cache"):
        write_set(tmp_path / place / "mnist", "train", x, y)
    (tmp_path / "flag").mkdir()
    monkeypatch.setenv("ODC_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("ODC_DATA_HOME", str(tmp_path / "cache"))
    with pytest.raises(OdcError, match=f"--data {tmp_path / 'flag'}: error: holds no mnist data set"):
        load_dataset(("mnist",), data_dir=tmp_path / "flag")
    monkeypatch.setenv("ODC_DATA", str(tmp_path / "flag"))
    with pytest.raises(OdcError, match=f"ODC_DATA {tmp_path / 'flag'}: error: holds no mnist data set"):
        load_dataset(("mnist",))


@pytest.mark.parametrize("named", ["--data", "$ODC_DATA"])
@pytest.mark.parametrize("split", ["balanced", "bymerge", "letters"])
def test_a_named_folder_without_the_data_is_an_error_not_the_sample(named, split, tmp_path, monkeypatch):
    """A user who names a folder means it: no fall back to the embedded sample. The error lists
    the file names looked for and the folders looked in, with a hint."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    if named == "$ODC_DATA":
        monkeypatch.setenv("ODC_DATA", str(folder))
    with pytest.raises(OdcError) as e:
        load_dataset(("emnist", split), data_dir=folder if named == "--data" else None)
    text = str(e.value)
    assert text.startswith(f"{named} {folder}: error: holds no emnist('{split}') data set")
    assert f"looked in {folder / 'emnist'} and {folder} for " in text
    assert f"emnist-{split}-{{train,test}}-{{images-idx3,labels-idx1}}-ubyte[.gz]" in text
    assert f"emnist-{split}-mapping.txt" in text
    assert ("or the same files of emnist-bymerge" in text) == (split == "balanced")
    assert "hint: name the folder that holds these files, or run 'odc data fetch emnist' and " in text
    assert ("leave out --data" if named == "--data" else "unset $ODC_DATA") in text


def test_cli_data_folder_without_the_data_exits_1_before_training(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    code = main(["compile-and-train", str(LENET5), "--data", str(tmp_path / "empty"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and f"--data {tmp_path / 'empty'}: error: holds no emnist('balanced') data set" in err
    assert "hint:" in err and "Traceback" not in err and "embedded sample of" not in err
    assert not out.exists()


def test_nothing_found_without_a_named_folder(tmp_path):
    with pytest.raises(OdcError) as e:
        load_dataset(("mnist",))
    cache = tmp_path / "cache"
    assert str(e.value).startswith(f"cache {cache}: error: holds no mnist data set")
    assert f"looked in {cache / 'mnist'} and {cache} for {{train,t10k}}-" in str(e.value)
    assert f"hint: put the files into {cache / 'mnist'}, set $ODC_DATA or pass --data DIR" in str(e.value)
    with pytest.raises(OdcError, match="hint: run 'odc data fetch emnist'"):
        load_dataset(("emnist", "letters"))
    for split in ("balanced", "bymerge"):  # the embedded sample stands in, and says so
        ds = load_dataset(("emnist", split))
        assert ds.source == str(data.SAMPLE)
        assert f"no EMNIST {split} files in {cache}" in ds.note
        assert "using the embedded sample of 16,450 train / 2,350 test" in ds.note
        assert "odc data fetch emnist" in ds.note


# ---------------------------------------------------------------------------- the embedded sample

def test_embedded_sample_is_balanced_upright_and_small():
    ds = data.load_sample()
    assert len(ds.classes) == 47 and ds.classes[36:] == list("abdefghnqrt")
    assert np.bincount(ds.train_y).tolist() == [350] * 47 and np.bincount(ds.test_y).tolist() == [50] * 47
    assert ds.train_x.shape == (16450, 28, 28) and ds.train_x.dtype == np.uint8
    assert data.SAMPLE.stat().st_size < 5_000_000
    assert_upright(ds)


def test_embedded_sample_is_drawn_from_shared_emnist(shared):
    x = read_idx(shared / IMAGES, 3).transpose(0, 2, 1)
    y = read_idx(shared / LABELS, 1)
    classes = list(data.read_mapping(shared / "emnist-bymerge-mapping.txt").values())
    made = data.make_sample(x, y, classes)
    with np.load(data.SAMPLE) as stored:
        assert sorted(stored.files) == sorted(made)
        for key in made:
            np.testing.assert_array_equal(stored[key], made[key], err_msg=key)


# ---------------------------------------------------------------------------- odc data list / fetch

def emnist_zip() -> tuple[bytes, np.ndarray, np.ndarray]:
    x, y = tiny(47 * 2, classes=47)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # laid out like the official gzip.zip
        for part, (xs, ys) in (("train", (x, y)), ("test", (x[:47], y[:47]))):
            for kind, a in (("images-idx3", xs.transpose(0, 2, 1)), ("labels-idx1", ys)):
                z.writestr(f"gzip/emnist-balanced-{part}-{kind}-ubyte.gz", gzip.compress(idx_bytes(a)))
        z.writestr("gzip/emnist-balanced-mapping.txt", "".join(f"{i} {48 + i}\n" for i in range(47)))
    return buf.getvalue(), x, y


@pytest.fixture
def server():
    archive, x, y = emnist_zip()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/gzip.zip" else 404)
            self.send_header("Content-Length", str(len(archive) if self.path == "/gzip.zip" else 0))
            self.end_headers()
            if self.path == "/gzip.zip":
                self.wfile.write(archive)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", hashlib.sha256(archive).hexdigest(), x, y
    httpd.shutdown()
    thread.join()


def test_fetch_good_checksum_unpacks_into_dest(server, tmp_path, capsys):
    base, sha, x, y = server
    dest = tmp_path / "dest"
    for _ in range(2):  # a second fetch replaces the first
        assert main(["data", "fetch", "emnist", "--url", f"{base}/gzip.zip", "--sha256", sha.upper(),
                     "--dest", str(dest)]) == 0
    assert sorted(os.listdir(dest)) == ["emnist"]
    assert len(os.listdir(dest / "emnist")) == 5
    ds = load_dataset(("emnist", "balanced"), data_dir=dest)
    np.testing.assert_array_equal(ds.train_x, x)
    np.testing.assert_array_equal(ds.train_y, y)
    assert ds.note == "" and ds.classes[:3] == ["0", "1", "2"]
    capsys.readouterr()
    assert main(["data", "list", "--data", str(dest)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"emnist balanced +train \+ test +{re.escape(str(dest / 'emnist'))}\n", out)
    assert "16,450 train / 2,350 test" in out


def test_fetch_bad_checksum_leaves_nothing(server, tmp_path, capsys):
    base, sha, _, _ = server
    dest = tmp_path / "dest"
    dest.mkdir()
    bad = ("0" if sha[0] != "0" else "1") + sha[1:]
    assert main(["data", "fetch", "emnist", "--url", f"{base}/gzip.zip", "--sha256", bad,
                 "--dest", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "SHA-256 mismatch" in err and sha in err and "Traceback" not in err
    assert os.listdir(dest) == []


def test_fetch_errors(server, tmp_path):
    base, sha, _, _ = server
    with pytest.raises(OdcError, match="--sha256 HEX is required with --url"):
        data.fetch_emnist(tmp_path, f"{base}/gzip.zip")
    with pytest.raises(OdcError, match="not a SHA-256"):
        data.fetch_emnist(tmp_path, f"{base}/gzip.zip", "abc")
    with pytest.raises(OdcError, match="cannot download .*/missing.zip: HTTP Error 404"):
        data.fetch_emnist(tmp_path, f"{base}/missing.zip", sha)
    assert os.listdir(tmp_path) == []
