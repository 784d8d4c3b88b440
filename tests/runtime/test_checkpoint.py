"""Checkpoint files: what they hold, atomic replacement, damaged files, and restoring a model."""
import numpy as np
import pytest

import odc
from odc.errors import OdcError
from odc.runtime import checkpoint
from odc.runtime.checkpoint import Checkpoint

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
        history=[{"epoch": 1, "train_loss": 1.5}, {"epoch": 2, "train_loss": 1.25}])


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
    model = checkpoint.compile_model(prog, prog.recipe)
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
    model = checkpoint.compile_model(prog, prog.recipe)
    ckpt = sample_checkpoint()
    ckpt.params["dense1.weight"] = np.zeros((10, 10), np.float32)
    ckpt.state = dict(model.state)
    with pytest.raises(OdcError, match=r"dense1.weight is \[10, 10\] in the checkpoint but \[10, 784\]"):
        checkpoint.restore(model, ckpt)


def test_a_checkpoint_that_cannot_be_written_is_a_user_error(tmp_path):
    with pytest.raises(OdcError, match="no/such/dir/x.safetensors: error: cannot write the checkpoint"):
        checkpoint.save(tmp_path / "no" / "such" / "dir" / "x.safetensors", sample_checkpoint())
