"""Runs with the train-block keys of recipes v2: a run interrupted in the middle of an epoch and
resumed ends exactly where an uninterrupted one ends (parameters, optimizer state and gradient
sums, schedule position, data order, augmentation draws); early stopping stops, says why and keeps the best
checkpoint; the recipe line names every key a flag overrides."""
import json

import numpy as np
import pytest

from odc import checkpoint
from odc.cli import main
from odc.program import Model
from odc.runtime import train as train_mod
from tests.runtime.files import metrics
from tests.runtime.test_train import TINY

def write(tmp_path, lines: str, epochs: int = 3):
    """test_train's tiny model with a validation part, Nesterov SGD at lr 0.1 and `lines`."""
    path = tmp_path / "tiny.od"
    path.write_text(TINY.replace("sgd(lr=0.05, momentum=0.9)", "sgd(lr=0.1, momentum=0.9, nesterov=true)")
                    .replace("    epochs = 2\n", f"    valid = 0.2\n    {lines}\n    epochs = {epochs}\n"))
    return path


def quiet(*_):
    pass


class Interrupted(Exception):
    pass


def test_a_run_stopped_mid_epoch_resumes_exactly(tmp_path, data_dir, monkeypatch):
    """376 training images at batch 32 make 12 calls an epoch; with accumulate = 5 the gradient
    sums run across epochs, and the run is stopped inside an accumulation in epoch 2 (after the
    checkpoint of epoch 1), then resumed. The augmentations' draws continue the same stream."""
    path = write(tmp_path, "schedule = warmup(1, then=cosine(min_lr=0.001))\n    accumulate = 5\n"
                           "    clip_grad_norm = 1\n    augment = [random_crop(28, pad=2), rotate(10), gaussian_noise(0.05)]\n"
                           "    normalize = normalize(mean=[0.17], std=[0.33])")
    whole = train_mod.compile_and_train(path, data_dir=data_dir, out=tmp_path / "whole", log=quiet)
    calls, step = [0], Model.train_step

    def stop_at_call_17(self, x, y):
        calls[0] += 1
        if calls[0] == 17:
            raise Interrupted
        return step(self, x, y)
    monkeypatch.setattr(Model, "train_step", stop_at_call_17)
    with pytest.raises(Interrupted):
        train_mod.compile_and_train(path, data_dir=data_dir, out=tmp_path / "cut", log=quiet)
    monkeypatch.setattr(Model, "train_step", step)
    assert checkpoint.read(tmp_path / "cut").epoch == 1
    train_mod.compile_and_train(path, data_dir=data_dir, resume=tmp_path / "cut", log=quiet)
    a, b = checkpoint.read(whole), checkpoint.read(tmp_path / "cut")
    assert a.epoch == b.epoch == 3
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k
    assert set(a.state) == set(b.state) and "accumulate.count" in a.state
    assert float(a.state["accumulate.count"]) == 3 * 12 % 5  # two calls wait in the sums
    for k in a.state:
        assert np.array_equal(a.state[k], b.state[k]), k
    drop = ("samples_per_s", "train_seconds", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in metrics(whole)] == \
           [{k: v for k, v in r.items() if k not in drop} for r in metrics(tmp_path / "cut")]
    lrs = [r["lr"] for r in metrics(whole)]
    assert lrs[0] < lrs[1] and lrs[2] < lrs[1]  # warming up, then annealing


def test_early_stop_stops_says_why_and_keeps_the_best(tmp_path, data_dir, capsys):
    """A rate far too high makes the validation loss worse after the first epochs; patience 2."""
    path = write(tmp_path, "early_stop = early_stop(2)", epochs=30)
    out = tmp_path / "run"
    assert main(["compile-and-train", str(path), "--data", str(data_dir), "--out", str(out), "--lr", "2"]) == 0
    text = capsys.readouterr().out
    recs = metrics(out)
    losses = [r["valid_loss"] for r in recs]
    best = int(np.argmin(losses)) + 1
    assert len(recs) == best + 2 < 30  # stopped after two epochs without a better loss
    assert f"early stop after epoch {best + 2}: valid_loss has not improved for 2 epochs" in text
    kept = checkpoint.read(out / "best.safetensors")
    assert kept.epoch == best
    assert recs[-1]["test_accuracy"] is not None  # the final test evaluation still happens
    again = main(["compile-and-train", str(path), "--data", str(data_dir), "--resume", str(out), "--lr", "2"])
    assert again == 0 and "the run stopped early" in capsys.readouterr().out
    assert len(metrics(out)) == len(recs)


def test_early_stop_on_validation_needs_a_validation_part(tmp_path, data_dir, capsys):
    path = write(tmp_path, "early_stop = early_stop(2)")
    path.write_text(path.read_text().replace("    valid = 0.2\n", ""))
    assert main(["compile-and-train", str(path), "--data", str(data_dir), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "early_stop watches valid_loss, but this run holds out no validation part" in err
    assert "valid = 0.1" in err and not (tmp_path / "r").exists()


def test_recipe_line_shows_the_recipe_and_each_override(tmp_path, data_dir, capsys):
    path = write(tmp_path, "schedule = step(1, gamma=0.5)\n    accumulate = 2", epochs=1)
    argv = ["compile-and-train", str(path), "--data", str(data_dir), "--out", str(tmp_path / "r"),
            "--lr", "0.05", "--batch", "16", "--clip-grad-norm", "0.5"]
    assert main(argv) == 0
    line = next(t for t in capsys.readouterr().out.splitlines() if t.startswith("recipe:"))
    assert line.startswith("recipe: cross_entropy, sgd(lr=0.05 [--lr], momentum=0.9, dampening=0.0, nesterov=true, "
                           "weight_decay=0.0), schedule step(every=1, gamma=0.5), clip_grad_norm 0.5 "
                           "[--clip-grad-norm], accumulate 2, batch 16 [--batch], 1 epoch, seed 0;")
    saved = json.loads(json.dumps(checkpoint.read(tmp_path / "r").recipe))
    assert (saved["optimizer"]["lr"], saved["batch"], saved["clip_grad_norm"]) == (0.05, 16, 0.5)
