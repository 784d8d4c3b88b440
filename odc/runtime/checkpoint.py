"""Checkpoints: one safetensors file that holds everything needed to use or continue a run.

Tensors: the parameters as ``param.<name>`` and the optimizer state as ``state.<name>``, with the
dtypes and layouts of `model.params` / `model.state`. Metadata (safetensors keeps string pairs):
the format tag, the odc version, the model's name, its `.od` source and path, the recipe as
trained (JSON, flags applied), the class names, the number of finished epochs, the states of the
training loop's shuffling RNG and of the model's dropout RNG, and the per-epoch metrics so far
(JSON). A checkpoint therefore rebuilds its model without the original `.od` file.

Writes are atomic: the bytes go to a temporary file in the same folder, which is flushed to disk
(fsync) and then renamed over the old file (`os.replace`), so a run killed at any moment leaves
either the previous checkpoint or the new one, never a torn file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

import odc
from odc.errors import OdcError

FORMAT = "odc-checkpoint/1"
FILENAME = "checkpoint.safetensors"


@dataclass
class Checkpoint:
    model: str                     # the model's name in its source
    source: str                    # the .od text
    source_path: str               # where that text came from (for messages)
    params: dict[str, np.ndarray]  # declaration order
    state: dict[str, np.ndarray] = field(default_factory=dict)  # optimizer state
    recipe: dict = field(default_factory=dict)   # as trained: data spec, loss, optimizer, epochs, batch, seed
    classes: list[str] = field(default_factory=list)
    epoch: int = 0                 # epochs finished
    rng: dict = field(default_factory=dict)  # numpy bit-generator states: "shuffle", "model" (dropout)
    history: list[dict] = field(default_factory=list)  # metrics.jsonl records, one per finished epoch
    data: dict = field(default_factory=dict)  # the data set trained on: name, source, dir (the --data given)


def write_atomic(path, data: bytes) -> None:
    """Replace `path` by `data` so that a crash leaves either the old file or the new one. One
    writer per file: the temporary file has a fixed name beside it, `.<name>.tmp`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path, ckpt: Checkpoint) -> None:
    tensors = {f"param.{k}": np.asarray(v, order="C") for k, v in ckpt.params.items()}
    tensors.update({f"state.{k}": np.asarray(v, order="C") for k, v in ckpt.state.items()})
    meta = {"format": FORMAT, "odc_version": odc.__version__, "model": ckpt.model, "source": ckpt.source,
            "source_path": ckpt.source_path, "recipe": json.dumps(ckpt.recipe),
            "classes": json.dumps(ckpt.classes), "epoch": str(ckpt.epoch), "rng": json.dumps(ckpt.rng),
            "history": json.dumps(ckpt.history), "param_order": json.dumps(list(ckpt.params)),
            "state_order": json.dumps(list(ckpt.state)), "data": json.dumps(ckpt.data)}
    try:
        write_atomic(path, safetensors.numpy.save(tensors, metadata=meta))
    except OSError as e:
        raise OdcError(f"{path}: error: cannot write the checkpoint: {e.strerror}") from None


def resolve(path) -> Path:
    """A checkpoint file, or a run folder holding one."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / FILENAME
    if not p.is_file():
        where = f"{path} holds no {FILENAME}" if Path(path).expanduser().is_dir() else f"{path}: no such file"
        raise OdcError(f"{where}\nhint: pass a run folder written by 'odc compile-and-train' or its {FILENAME}")
    return p


def read(path) -> Checkpoint:
    p = resolve(path)
    try:
        with safetensors.safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise OdcError(f"{p}: error: not an odc checkpoint (a safetensors file without "
                               f"format={FORMAT!r} in its metadata)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        params = {k: tensors[f"param.{k}"] for k in json.loads(meta["param_order"])}
        state = {k: tensors[f"state.{k}"] for k in json.loads(meta["state_order"])}
        return Checkpoint(meta["model"], meta["source"], meta["source_path"], params, state,
                          json.loads(meta["recipe"]), json.loads(meta["classes"]), int(meta["epoch"]),
                          json.loads(meta["rng"]), json.loads(meta["history"]), json.loads(meta.get("data", "{}")))
    except OdcError:
        raise
    except Exception as e:  # safetensors reports a damaged file with several exception types
        raise OdcError(f"{p}: error: cannot read the checkpoint: {e}") from None


def compile_model(prog, recipe: dict):
    """Compile `prog` for training with `recipe` (the recipe as run: flags applied)."""
    prog.recipe = recipe
    return prog.compile()


def restore(model, ckpt: Checkpoint) -> None:
    """Copy a checkpoint's parameters and optimizer state into a compiled model, in place."""
    for what, have, saved in (("parameter", model.params, ckpt.params),
                              ("optimizer state", model.state, ckpt.state)):
        if list(have) != list(saved):
            raise OdcError(f"the checkpoint's {what} names ({', '.join(saved) or 'none'}) differ from "
                           f"the model's ({', '.join(have) or 'none'})")
        for name, value in saved.items():
            if have[name].shape != value.shape:
                raise OdcError(f"{what} {name} is {list(value.shape)} in the checkpoint but "
                               f"{list(have[name].shape)} in the model")
            have[name][...] = value
    if "model" in ckpt.rng:
        model.rng.bit_generator.state = ckpt.rng["model"]


def build(ckpt: Checkpoint):
    """The model a checkpoint holds: its source compiled with its recipe, then restored."""
    from odc.frontend import parse_source
    from odc.program import Program
    module = parse_source(ckpt.source, ckpt.source_path)
    model = compile_model(Program(module.lower(ckpt.model), module.source), ckpt.recipe)
    restore(model, ckpt)
    return model


def load_checkpoint(path):
    """The model in a checkpoint (a file, or a run folder), compiled, with its parameters and
    optimizer state: `forward`, `train_step` and the rest, as from `odc.load(...).compile()`."""
    return build(read(path))
