"""Checkpoint files: what they hold, atomic replacement, damaged files, and restoring a model."""
import errno
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

import odc
from odc.errors import OdcError
from odc import checkpoint, program
from odc.checkpoint import Checkpoint

SOURCE = """\
model Small(classes = 10):
    input image: f32[N, 1, 28, 28]
    return dense(flatten(image), classes)

train Small:
    data = mnist()
    optimizer = adam(lr=0.01)
    seed = 3
"""


def sample_checkpoint() -> Checkpoint:
    rng = np.random.default_rng(7)
    rng.random(10)
    return Checkpoint(
        model="Small", source=SOURCE, source_path="models/small.od",
        params={"dense1.weight": rng.standard_normal((10, 784)).astype(np.float32),
                "dense1.bias": rng.standard_normal(10).astype(np.float32)},
        state={"step": np.array(4.0, np.float32), "dense1.weight.exp_avg": np.ones((10, 784), np.float32)},
        recipe={"data": ["mnist"], "loss": "cross_entropy", "optimizer": {"name": "adam", "lr": 0.01},
                "epochs": 3, "batch": 16, "seed": 3},
        classes=["0", "a", "B", "é", "?", "5", "6", "7", "8", "9"], epoch=2,
        rng={"shuffle": rng.bit_generator.state},
        history=[{"epoch": 1, "train_loss": 1.5, "test_loss": 1.75, "test_accuracy": 0.5},
                 {"epoch": 2, "train_loss": 1.25, "test_loss": 1.5, "test_accuracy": 0.625}])


def test_round_trip_keeps_everything(tmp_path):
    ckpt = sample_checkpoint()
    checkpoint.save(tmp_path / "c.safetensors", ckpt)
    back = checkpoint.read(tmp_path / "c.safetensors")
    for field in ("model", "source", "source_path", "recipe", "classes", "epoch", "rng", "history"):
        assert getattr(back, field) == getattr(ckpt, field), field
    for saved, loaded in ((ckpt.params, back.params), (ckpt.state, back.state)):
        assert list(loaded) == list(saved)
        for k in saved:
            assert loaded[k].dtype == saved[k].dtype and np.array_equal(loaded[k], saved[k])
    # the RNG continues exactly where it was saved
    a, b = np.random.default_rng(), np.random.default_rng()
    a.bit_generator.state, b.bit_generator.state = ckpt.rng["shuffle"], back.rng["shuffle"]
    assert np.array_equal(a.permutation(100), b.permutation(100))


def test_a_run_folder_stands_for_its_checkpoint(tmp_path):
    checkpoint.save(tmp_path / checkpoint.FILENAME, sample_checkpoint())
    assert checkpoint.read(tmp_path).epoch == 2


def test_write_atomic_replaces_or_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    checkpoint.write_atomic(path, b"old")
    checkpoint.write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    with pytest.raises(TypeError):
        checkpoint.write_atomic(path, "not bytes")  # fails while writing the temporary file
    assert path.read_bytes() == b"new"
    checkpoint.write_atomic(path, b"newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_damaged_or_foreign_files_are_user_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    checkpoint.save(good, sample_checkpoint())
    data = good.read_bytes()
    cases = {"truncated.safetensors": data[:len(data) // 2], "empty.safetensors": b"",
             "text.safetensors": b"model X(): pass\n"}
    import safetensors.numpy
    cases["foreign.safetensors"] = safetensors.numpy.save({"w": np.zeros(3, np.float32)})
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(OdcError, match=name):
            checkpoint.read(tmp_path / name)
    with pytest.raises(OdcError, match="no such file"):
        checkpoint.read(tmp_path / "missing.safetensors")
    (tmp_path / "run").mkdir()
    with pytest.raises(OdcError, match="holds no checkpoint.safetensors"):
        checkpoint.read(tmp_path / "run")


def test_load_checkpoint_restores_parameters_and_optimizer_state(tmp_path):
    path = tmp_path / "small.od"
    path.write_text(SOURCE)
    prog = odc.load(path)
    model = program.compile_model(prog, prog.recipe)
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 8)
    for _ in range(3):
        model.train_step(x, y)
    ckpt = Checkpoint("Small", SOURCE, str(path), dict(model.params), dict(model.state), prog.recipe)
    checkpoint.save(tmp_path / "c.safetensors", ckpt)
    path.unlink()  # the checkpoint alone rebuilds the model
    loaded = odc.load_checkpoint(tmp_path / "c.safetensors")
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    # the optimizer state came back too: the next step is the same step
    assert loaded.train_step(x, y) == model.train_step(x, y)
    for k in model.params:
        np.testing.assert_array_equal(loaded.params[k], model.params[k])


def test_restore_rejects_another_model(tmp_path):
    path = tmp_path / "small.od"
    path.write_text(SOURCE)
    prog = odc.load(path)
    model = program.compile_model(prog, prog.recipe)
    ckpt = sample_checkpoint()
    ckpt.params["dense1.weight"] = np.zeros((10, 10), np.float32)
    ckpt.state = dict(model.state)
    with pytest.raises(OdcError, match=r"dense1.weight is \[10, 10\] in the checkpoint but \[10, 784\]"):
        program.restore(model, ckpt)


def test_a_checkpoint_that_cannot_be_written_is_a_user_error(tmp_path):
    with pytest.raises(OdcError, match="no/such/dir/x.safetensors: error: cannot write the checkpoint"):
        checkpoint.save(tmp_path / "no" / "such" / "dir" / "x.safetensors", sample_checkpoint())


# ---------------------------------------------------------------------------- damaged contents

def raw(path) -> tuple[dict, dict]:
    """A safetensors file's metadata and tensors, read without odc."""
    with safetensors.safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def write_raw(path, meta: dict, tensors: dict, checksums: bool = True) -> None:
    """A checkpoint file with these contents and, unless `checksums` is False, the checksums the
    format defines (written here independently of odc): the SHA-256 of each tensor's bytes and
    of the other metadata entries as sorted JSON, in the metadata entry "sha256"."""
    meta = {k: v for k, v in meta.items() if k != "sha256"}
    if checksums:
        digests = {"metadata": hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()}
        digests |= {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in tensors.items()}
        meta["sha256"] = json.dumps(digests)
    Path(path).write_bytes(safetensors.numpy.save(tensors, metadata=meta))


def small_model_checkpoint(tmp_path) -> Path:
    """A checkpoint of the Small model after two Adam steps, as Model.save writes it."""
    path = tmp_path / "small.od"
    path.write_text(SOURCE)
    model = odc.load(path).compile()
    rng = np.random.default_rng(0)
    for _ in range(2):
        model.train_step(rng.random((4, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 4))
    model.save(tmp_path / "c.safetensors")
    return tmp_path / "c.safetensors"


def test_a_flipped_byte_in_tensor_data_is_refused(tmp_path):
    """Found by its checksum: the flipped value is still a finite float32 of the right shape."""
    good = small_model_checkpoint(tmp_path)
    data = bytearray(good.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    meta, tensors = raw(good)
    offsets = json.loads(data[8:header])["param.dense1.weight"]["data_offsets"]
    data[header + offsets[0] + 101] ^= 0x01  # the lowest mantissa bit of one byte of one weight
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    _, damaged = raw(bad)
    assert np.isfinite(damaged["param.dense1.weight"]).all()
    assert (damaged["param.dense1.weight"] != tensors["param.dense1.weight"]).sum() == 1
    for load in (checkpoint.read, odc.load_checkpoint):
        with pytest.raises(OdcError, match=r"flipped.safetensors: error: tensor param.dense1.weight is damaged"):
            load(bad)


def test_changed_metadata_is_refused(tmp_path):
    """A byte of the stored source changed in place (lr=0.01 -> 0.09): valid JSON, a valid model,
    a different run; the metadata checksum finds it."""
    good = small_model_checkpoint(tmp_path)
    data = good.read_bytes()
    assert data.count(b"lr=0.01") == 1
    bad = tmp_path / "edited.safetensors"
    bad.write_bytes(data.replace(b"lr=0.01", b"lr=0.09"))
    assert "lr=0.09" in raw(bad)[0]["source"]
    with pytest.raises(OdcError, match=r"edited.safetensors: error: the checkpoint's metadata is damaged"):
        odc.load_checkpoint(bad)


@pytest.mark.parametrize("key, change, message", [
    ("param.dense1.weight", lambda a: a.astype(np.float64),
     r"parameter dense1.weight is float64 in the checkpoint but float32 in the model"),
    ("param.dense1.bias", lambda a: a.astype(np.float16),
     r"parameter dense1.bias is float16 in the checkpoint but float32 in the model"),
    ("state.dense1.bias.exp_avg", lambda a: a.astype(np.int32),
     r"optimizer state dense1.bias.exp_avg is int32 in the checkpoint but float32 in the model"),
    ("param.dense1.weight", lambda a: np.ascontiguousarray(a.T),
     r"parameter dense1.weight is \[784, 10\] in the checkpoint but \[10, 784\] in the model"),
])
def test_tensors_the_model_does_not_declare_are_refused(tmp_path, key, change, message):
    """With valid checksums (a hand-made file): the dtype and the shape are checked against the
    model, not cast or reshaped silently."""
    meta, tensors = raw(small_model_checkpoint(tmp_path))
    tensors[key] = change(tensors[key])
    bad = tmp_path / "other.safetensors"
    write_raw(bad, meta, tensors)
    with pytest.raises(OdcError, match=rf"other.safetensors: error: {message}"):
        odc.load_checkpoint(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_tensors_are_neither_written_nor_read(tmp_path, value):
    ckpt = sample_checkpoint()
    ckpt.params["dense1.weight"][3, 5] = value
    with pytest.raises(OdcError, match=r"refusing to write a checkpoint whose parameter dense1.weight "
                                       r"\(1 of 7,840 values NaN or infinite\)"):
        checkpoint.save(tmp_path / "c.safetensors", ckpt)
    assert list(tmp_path.iterdir()) == []
    meta, tensors = raw(small_model_checkpoint(tmp_path))
    tensors["state.dense1.weight.exp_avg_sq"][0, 0] = value
    write_raw(tmp_path / "nan.safetensors", meta, tensors)
    with pytest.raises(OdcError, match=r"nan.safetensors: error: the checkpoint's optimizer state "
                                       r"dense1.weight.exp_avg_sq \(1 of 7,840 .*\n.*lower learning rate"):
        odc.load_checkpoint(tmp_path / "nan.safetensors")


def test_checkpoints_of_the_first_format_are_read_without_checksums(tmp_path):
    """As odc wrote them before checksums: format odc-checkpoint/1, no sha256 entry, no data."""
    good = small_model_checkpoint(tmp_path)
    meta, tensors = raw(good)
    meta = {k: v for k, v in meta.items() if k not in ("sha256", "data")} | {"format": "odc-checkpoint/1"}
    write_raw(tmp_path / "old.safetensors", meta, tensors, checksums=False)
    old, new = odc.load_checkpoint(tmp_path / "old.safetensors"), odc.load_checkpoint(good)
    for k in new.params:
        np.testing.assert_array_equal(old.params[k], new.params[k])
    tensors["param.dense1.bias"] = tensors["param.dense1.bias"].astype(np.float64)  # still checked
    write_raw(tmp_path / "old64.safetensors", meta, tensors, checksums=False)
    with pytest.raises(OdcError, match="dense1.bias is float64"):
        odc.load_checkpoint(tmp_path / "old64.safetensors")


def test_a_checkpoint_without_checksums_in_the_current_format_is_refused(tmp_path):
    meta, tensors = raw(small_model_checkpoint(tmp_path))
    write_raw(tmp_path / "bare.safetensors", meta, tensors, checksums=False)
    with pytest.raises(OdcError, match=r"bare.safetensors: error: the checkpoint's checksums"):
        checkpoint.read(tmp_path / "bare.safetensors")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The metadata and tensors of a checkpoint of the Small model as the training loop writes one:
    after two epochs, with both RNG states, the history and the data set."""
    folder = tmp_path_factory.mktemp("trained")
    (folder / "small.od").write_text(SOURCE)
    prog = odc.load(folder / "small.od")
    model = prog.compile()
    rng = np.random.default_rng(0)
    for _ in range(2):
        model.train_step(rng.random((4, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 4))
    record = {"test_loss": 2.0, "test_accuracy": 0.25, "samples_per_s": 900.0, "train_seconds": 1.5,
              "eval_seconds": 0.25}
    ckpt = Checkpoint("Small", SOURCE, str(folder / "small.od"), dict(model.params), dict(model.state),
                      recipe=prog.recipe, classes=list("0123456789"), epoch=2,
                      rng={"shuffle": np.random.default_rng(1).bit_generator.state,
                           "model": model.rng.bit_generator.state},
                      history=[{"epoch": 1, "train_loss": 2.25, **record},
                               {"epoch": 2, "train_loss": 2.125, **record}],
                      data={"name": "mnist", "source": "/data/mnist", "dir": None})
    checkpoint.save(folder / "c.safetensors", ckpt)
    odc.load_checkpoint(folder / "c.safetensors")  # the undamaged file loads
    return (folder, *raw(folder / "c.safetensors"))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                max_size=3), max_leaves=6)


def mutated(value, draw):
    """`value` with one part replaced by any JSON value, or one key of an object removed."""
    if isinstance(value, (dict, list)) and value and draw(st.booleans()):
        keys = list(value) if isinstance(value, dict) else list(range(len(value)))
        k = draw(st.sampled_from(keys))
        if isinstance(value, dict) and draw(st.booleans()):
            return {key: v for key, v in value.items() if key != k}
        copy = dict(value) if isinstance(value, dict) else list(value)
        copy[k] = mutated(value[k], draw)
        return copy
    return draw(JSON)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_odd_metadata_is_an_odc_error(trained, data):
    """Hand-made checkpoints (with valid checksums, or in the first format, which has none, so that
    every check behind them is exercised) with one metadata entry removed, replaced, or changed
    somewhere inside: loading either works or is an OdcError naming the file, never another
    exception."""
    folder, meta, tensors = trained
    key = data.draw(st.sampled_from(sorted(set(meta) - {"sha256", "format"})))
    meta = dict(meta)
    if data.draw(st.integers(0, 9)) == 0:
        del meta[key]
    else:
        try:
            value = json.loads(meta[key])
        except ValueError:  # a plain string: the model's name, its source...
            value = meta[key]
        new = mutated(value, data.draw)
        meta[key] = new if isinstance(new, str) and not isinstance(value, (dict, list)) else json.dumps(new)
    checksums = data.draw(st.booleans())  # else the first format: read with every check but the checksums
    if not checksums:
        meta["format"] = "odc-checkpoint/1"
    write_raw(folder / "odd.safetensors", meta, tensors, checksums)
    try:
        odc.load_checkpoint(folder / "odd.safetensors")
    except OdcError as e:
        assert "odd.safetensors" in str(e)


# ---------------------------------------------------------------------------- failed writes

class FullDisk:
    """Stand-ins for what write_atomic calls, one of which fails with ENOSPC as a full disk does:
    open (creating the file), write (after writing half of the bytes), fsync of the file, the
    read-back check, os.replace, or the fsync of the folder after the rename."""

    def __init__(self, monkeypatch, stage):
        self.stage, self.fsyncs = stage, 0
        real_open, real_fsync, real_replace, fail = open, os.fsync, os.replace, self.fail

        class HalfWriter:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[:len(data) // 2])
                fail()

            def __getattr__(self, name):
                return getattr(self.f, name)

        def fake_open(path, mode="r", *args, **kw):
            if stage == "open":
                fail()
            f = real_open(path, mode, *args, **kw)
            return HalfWriter(f) if stage == "write" else f

        def fake_fsync(fd):
            self.fsyncs += 1
            if (stage, self.fsyncs) in (("fsync", 1), ("fsync folder", 2)):
                fail()
            return real_fsync(fd)

        def fake_replace(a, b):
            if stage == "replace":
                fail()
            return real_replace(a, b)

        monkeypatch.setattr(checkpoint, "open", fake_open, raising=False)
        monkeypatch.setattr(checkpoint.os, "fsync", fake_fsync)
        monkeypatch.setattr(checkpoint.os, "replace", fake_replace)

    @staticmethod
    def fail():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def verify(self, tmp):
        if self.stage == "read back":
            self.fail()


STAGES = ["open", "write", "fsync", "read back", "replace", "fsync folder"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_failed_write_is_an_odc_error_and_leaves_no_temporary_file(tmp_path, monkeypatch, stage):
    path = tmp_path / "curves.png"
    checkpoint.write_atomic(path, b"old")
    disk = FullDisk(monkeypatch, stage)
    with pytest.raises(OdcError) as e:
        checkpoint.write_atomic(path, b"new contents", "the plot", verify=disk.verify)
    assert str(e.value).splitlines() == [
        f"{path}: error: cannot write the plot: No space left on device",
        f"hint: free some disk space where {tmp_path} is, or choose another folder"]
    assert path.read_bytes() == (b"new contents" if stage == "fsync folder" else b"old")
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


@pytest.mark.parametrize("code, hint", [(errno.EACCES, "check that you may write to"),
                                        (errno.EROFS, "is on a read-only file system")])
def test_a_write_refused_by_the_file_system_says_why(tmp_path, monkeypatch, code, hint):
    def refuse(*args, **kw):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(checkpoint, "open", refuse, raising=False)
    with pytest.raises(OdcError, match=rf"x.bin: error: cannot write the file: {os.strerror(code)}\nhint: .*{hint}"):
        checkpoint.write_atomic(tmp_path / "x.bin", b"data")


@pytest.mark.parametrize("stage", STAGES)
def test_a_checkpoint_that_fails_to_write_keeps_the_old_one(tmp_path, monkeypatch, stage):
    path = tmp_path / checkpoint.FILENAME
    checkpoint.save(path, sample_checkpoint())
    before = path.read_bytes()
    newer = sample_checkpoint()
    newer.epoch, newer.history = 3, newer.history + [{**newer.history[-1], "epoch": 3}]
    disk = FullDisk(monkeypatch, stage)
    read = checkpoint.read
    monkeypatch.setattr(checkpoint, "read", lambda p: (disk.verify(p), read(p))[1])
    with pytest.raises(OdcError, match=rf"{path}: error: cannot write the checkpoint: No space left on device"):
        checkpoint.save(path, newer)
    monkeypatch.undo()
    assert checkpoint.read(path).epoch == (3 if stage == "fsync folder" else 2)
    if stage != "fsync folder":
        assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.FILENAME]


def test_a_checkpoint_that_does_not_read_back_replaces_nothing(tmp_path, monkeypatch):
    """The disk returns other bytes than were written (one bit flipped in the tensor data): the
    check before the rename finds it, and the old checkpoint stays."""
    path = tmp_path / checkpoint.FILENAME
    checkpoint.save(path, sample_checkpoint())
    before = path.read_bytes()
    real_open = open

    def flipping_open(p, mode="r", *args, **kw):
        f = real_open(p, mode, *args, **kw)
        if "w" in mode:
            write = f.write
            f.write = lambda data: write(data[:-5] + bytes([data[-5] ^ 0x10]) + data[-4:])
        return f
    monkeypatch.setattr(checkpoint, "open", flipping_open, raising=False)
    with pytest.raises(OdcError, match=r"\.checkpoint\.safetensors\.tmp: error: tensor \S+ is damaged"):
        checkpoint.save(path, sample_checkpoint())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.FILENAME]


def test_json_text_is_strict_json():
    text = checkpoint.json_text({"a": [1.5, float("nan")], "b": float("inf"), "c": (-float("inf"), "x")})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}")) == \
        {"a": [1.5, None], "b": None, "c": [None, "x"]}
