"""Checkpoints: one safetensors file that holds everything needed to use or continue a run.

Tensors: the parameters as ``param.<name>`` and the optimizer state as ``state.<name>``, with the
dtypes and layouts of `model.params` / `model.state`. Metadata (safetensors keeps string pairs):
the format tag, the odc version, the model's name, its `.od` source and path, the recipe as
trained (JSON, flags applied), the class names, the number of finished epochs, the states of the
training loop's shuffling RNG and of the model's dropout RNG, and the per-epoch metrics so far
(JSON). A checkpoint therefore rebuilds its model without the original `.od` file.

Integrity: the metadata entry ``sha256`` holds the SHA-256 of each tensor's bytes and of the
rest of the metadata (as sorted JSON). `read` recomputes them, so a flipped byte anywhere in the
file is an error naming the tensor (or the metadata), never a silently different model. `read`
then checks the metadata against the schema the training loop writes (`_check_metadata`) and
refuses tensors holding NaN or infinity; `restore` refuses a tensor whose dtype or shape the
model does not declare, and a class list that does not match the model's outputs. Checkpoints
of the first format (``odc-checkpoint/1``, written before checksums) are still read, with every
check but the checksums; odc writes only the current format.

JSON in the metadata (and in `metrics.jsonl`) is strict (`json_text`): a number that is not
finite would be written as null, but none is: the training loop stops before recording one, and
`save` refuses parameters or state holding NaN or infinity, so a diverged run never replaces a
good checkpoint.

Writes are atomic (`write_atomic`): the bytes go to a temporary file in the same folder, which is
flushed to disk (fsync), read back and checked (a checkpoint with `read`), and then renamed over
the old file (`os.replace`), so a run killed at any moment, or a disk that fills up, leaves either
the previous file or the new one, never a torn file. A write that fails is an `OdcError` naming
the file, and leaves no temporary file behind.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from odc import schedules
from odc.errors import OdcError
from odc.frontend.recipe import EARLY_STOP_METRICS
from odc.ir.passes.autodiff import LOSSES
from odc.ir.passes.optimizer import hyper_parameters
from odc.version import __version__

FORMAT = "odc-checkpoint/2"
OLD_FORMATS = ("odc-checkpoint/1",)  # without checksums; still read
FILENAME = "checkpoint.safetensors"
DAMAGED = "hint: the file is damaged or was not written by odc; use another checkpoint, or train again"


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
    path: str = ""                 # the file it was read from (for messages; not saved)


def json_text(value) -> str:
    """`value` as strict JSON (no NaN or Infinity, which strict JSON lacks): a float that is not
    finite becomes null."""
    def strict(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: strict(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strict(x) for x in v]
        return v
    return json.dumps(strict(value), allow_nan=False)


def _write_hint(e: OSError, folder: Path) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free some disk space where {folder} is, or choose another folder"
    if e.errno == errno.EROFS:
        return f"{folder} is on a read-only file system; choose another folder"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"check that you may write to {folder}, or choose another folder"
    if e.errno == errno.ENOENT:
        return f"check that the folder {folder} exists"
    return f"check that {folder} is writable, or choose another folder"


def write_atomic(path, data: bytes, what: str = "the file", verify=None) -> None:
    """Replace `path` by `data` so that a crash leaves either the old file or the new one. One
    writer per file: the temporary file has a fixed name beside it, `.<name>.tmp`. `verify(tmp)`,
    if given, checks the written file before it replaces the old one (and raises if it is bad).
    An OSError (a full disk, a read-only folder...) becomes an OdcError that names `path` and
    `what` it is; the temporary file is removed whatever went wrong."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise OdcError(f"{path}: error: cannot write {what}: {e.strerror or e}\n"
                       f"hint: {_write_hint(e, path.parent)}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def nonfinite(params: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> str | None:
    """The first parameter or optimizer state holding NaN or infinity, in words with how many such
    values ("parameter w (3 of 10 values NaN or infinite)"); None when every value is finite."""
    for what, tensors in (("parameter", params), ("optimizer state", state)):
        for name, a in tensors.items():
            bad = a.size - int(np.count_nonzero(np.isfinite(a)))
            if bad:
                return f"{what} {name} ({bad:,} of {a.size:,} values NaN or infinite)"
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _metadata_digest(meta: dict[str, str]) -> str:
    return _sha256(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())


def save(path, ckpt: Checkpoint) -> None:
    """Write `ckpt` to `path` atomically, with checksums; the file is read back and checked before it
    replaces an older one. Refuses parameters or state holding NaN or infinity."""
    bad = nonfinite(ckpt.params, ckpt.state)
    if bad:
        raise OdcError(f"{path}: error: refusing to write a checkpoint whose {bad}\n"
                       f"hint: the training diverged; lower the learning rate (--lr)")
    tensors = {f"param.{k}": np.asarray(v, order="C") for k, v in ckpt.params.items()}
    tensors.update({f"state.{k}": np.asarray(v, order="C") for k, v in ckpt.state.items()})
    meta = {"format": FORMAT, "odc_version": __version__, "model": ckpt.model, "source": ckpt.source,
            "source_path": ckpt.source_path, "recipe": json_text(ckpt.recipe),
            "classes": json_text(ckpt.classes), "epoch": str(ckpt.epoch), "rng": json_text(ckpt.rng),
            "history": json_text(ckpt.history), "param_order": json_text(list(ckpt.params)),
            "state_order": json_text(list(ckpt.state)), "data": json_text(ckpt.data)}
    digests = {k: _sha256(v.tobytes()) for k, v in tensors.items()}
    meta["sha256"] = json.dumps({"metadata": _metadata_digest(meta), **digests})
    write_atomic(path, safetensors.numpy.save(tensors, metadata=meta), "the checkpoint", verify=read)


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
    """The checkpoint in `path` (a file or a run folder), checked: checksums, metadata, finite tensors.
    Every problem is an OdcError naming the file and the field or tensor."""
    p = resolve(path)
    try:
        with safetensors.safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") not in (FORMAT, *OLD_FORMATS):
                raise OdcError(f"{p}: error: not an odc checkpoint (a safetensors file without "
                               f"format={FORMAT!r} in its metadata)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except OdcError:
        raise
    except Exception as e:  # safetensors reports a damaged file with several exception types
        raise OdcError(f"{p}: error: cannot read the checkpoint: {e}\n{DAMAGED}") from None
    if meta["format"] == FORMAT:
        _check_digests(p, meta, tensors)
    ckpt = _check_metadata(p, meta, tensors)
    bad = nonfinite(ckpt.params, ckpt.state)
    if bad:
        raise OdcError(f"{p}: error: the checkpoint's {bad}\n"
                       f"hint: its run diverged; train again with a lower learning rate (--lr)")
    return ckpt


def _check_digests(p: Path, meta: dict[str, str], tensors: dict[str, np.ndarray]) -> None:
    try:
        digests = json.loads(meta["sha256"])
        if not (isinstance(digests, dict) and all(isinstance(v, str) for v in digests.values())):
            raise ValueError
    except (KeyError, ValueError):
        raise OdcError(f"{p}: error: the checkpoint's checksums (metadata 'sha256') are missing or "
                       f"damaged\n{DAMAGED}") from None
    if digests.get("metadata") != _metadata_digest(meta):
        raise OdcError(f"{p}: error: the checkpoint's metadata is damaged: its SHA-256 differs from the "
                       f"one saved with it\n{DAMAGED}")
    for key in sorted(set(tensors) | set(digests) - {"metadata"}):
        if key not in tensors or key not in digests:
            raise OdcError(f"{p}: error: tensor {key} has no {'data' if key not in tensors else 'checksum'}"
                           f"\n{DAMAGED}")
        if _sha256(tensors[key].tobytes()) != digests[key]:
            raise OdcError(f"{p}: error: tensor {key} is damaged: its SHA-256 differs from the one saved "
                           f"with it\n{DAMAGED}")


class _Bad(Exception):
    """A metadata field that does not fit the schema: (field, what it must be)."""


def _need(ok, name: str, must: str) -> None:
    if not ok:
        raise _Bad(name, must)


def _is_int(v, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_metric(v) -> bool:  # a number, or null for one that was not finite
    return v is None or isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _names(v, name: str) -> list[str]:
    _need(isinstance(v, list) and all(isinstance(s, str) for s in v) and len(set(v)) == len(v),
          name, "a list of distinct names")
    return v


def _check_schedule(spec, name: str) -> None:
    _need(isinstance(spec, dict) and spec.get("name") in schedules.SCHEDULES, name,
          f"a schedule: {{\"name\": one of {', '.join(schedules.SCHEDULES)}, its arguments}}")
    kind = spec["name"]
    _need(set(spec) == {"name", *schedules.SCHEDULES[kind]}, name, f"{kind}'s arguments, each once")
    for key, value in spec.items():
        if key == "then" and value is not None:
            _check_schedule(value, f"{name}.then")
        elif key != "name":
            problem = schedules.invalid(kind, key, value)
            _need(problem is None, f"{name}.{key}", problem)


def _check_options(recipe: dict) -> None:
    """The train-block keys a recipe may hold besides the required ones, each as the front end
    writes it (augment and normalize are checked against the model when it is compiled)."""
    if "valid" in recipe:
        v = recipe["valid"]
        _need(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1, "recipe.valid",
              "a fraction between 0 and 1")
    if recipe.get("schedule") is not None:
        _check_schedule(recipe["schedule"], "recipe.schedule")
    if recipe.get("accumulate") is not None:
        _need(_is_int(recipe["accumulate"], 1), "recipe.accumulate", "an integer >= 1")
    if recipe.get("clip_grad_norm") is not None:
        v = recipe["clip_grad_norm"]
        _need(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf,
              "recipe.clip_grad_norm", "a number > 0")
    stop = recipe.get("early_stop")
    if stop is not None:
        _need(isinstance(stop, dict) and set(stop) == {"patience", "metric"} and _is_int(stop["patience"], 1)
              and stop["metric"] in EARLY_STOP_METRICS, "recipe.early_stop",
              f'{{"patience": an integer >= 1, "metric": one of {", ".join(EARLY_STOP_METRICS)}}}')
    augment = recipe.get("augment")
    _need(augment is None or isinstance(augment, list) and all(isinstance(a, dict) for a in augment),
          "recipe.augment", "a JSON array of augmentations (objects)")
    _need(recipe.get("normalize") is None or isinstance(recipe["normalize"], dict), "recipe.normalize",
          "a JSON object")


def _check_metadata(p: Path, meta: dict[str, str], tensors: dict[str, np.ndarray]) -> Checkpoint:
    """The Checkpoint that `meta` and `tensors` describe, each field checked against the schema the
    training loop writes: an OdcError naming the file and the first field that does not fit."""
    def entry(key: str, kind=None):  # a metadata entry, decoded from JSON unless kind is str
        _need(key in meta, key, "present")
        if kind is str:
            return meta[key]
        try:
            value = json.loads(meta[key])
        except ValueError:
            raise _Bad(key, "valid JSON") from None
        _need(isinstance(value, kind), key, f"a JSON {'object' if kind is dict else 'array'}")
        return value

    try:
        model, source, source_path = (entry(k, str) for k in ("model", "source", "source_path"))
        _need(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", model), "model", "a model name")
        recipe = entry("recipe", dict)
        for key in ("data", "loss", "optimizer", "epochs", "batch", "seed"):
            _need(key in recipe, f"recipe.{key}", "present")
        data = recipe["data"]
        _need(data is None or isinstance(data, list) and data and all(isinstance(s, str) for s in data),
              "recipe.data", 'null or a data set as a list of strings, e.g. ["emnist", "balanced"]')
        _need(isinstance(recipe["loss"], str) and recipe["loss"] in LOSSES, "recipe.loss",
              f"one of {', '.join(LOSSES)}")
        _need(isinstance(recipe["optimizer"], dict), "recipe.optimizer", "a JSON object")
        try:
            hyper_parameters(recipe["optimizer"])
        except OdcError as e:
            raise _Bad("recipe.optimizer", f"a valid optimizer ({e})") from None
        for key, lo in (("epochs", 1), ("batch", 1), ("seed", 0)):
            _need(_is_int(recipe[key], lo), f"recipe.{key}", f"an integer >= {lo}")
        _check_options(recipe)
        classes = _names(entry("classes", list), "classes")
        epoch = entry("epoch", str)
        _need(re.fullmatch(r"[0-9]{1,9}", epoch), "epoch", "a number of epochs >= 0")
        epoch = int(epoch)
        rng = entry("rng", dict)
        for key, state in rng.items():
            _need(key in ("shuffle", "model"), f"rng.{key}", "absent (the RNGs are shuffle and model)")
            try:
                np.random.default_rng().bit_generator.state = state
            except Exception:  # numpy's setter reports a bad state with several exception types
                raise _Bad(f"rng.{key}", "a numpy PCG64 bit-generator state") from None
        history = entry("history", list)
        _need(len(history) == epoch, "history", f"a list of one record per finished epoch ({epoch})")
        for i, record in enumerate(history):
            at = f"history[{i}]"
            _need(isinstance(record, dict), at, "a JSON object")
            _need(record.get("epoch") == i + 1 and _is_int(record["epoch"]), f"{at}.epoch", f"{i + 1}")
            for key in ("train_loss", "test_loss", "test_accuracy"):
                _need(key in record, f"{at}.{key}", "present")
            for key, v in record.items():
                _need(key == "epoch" or _is_metric(v), f"{at}.{key}", "a finite number or null")
        run_data = entry("data", dict) if "data" in meta else {}
        if run_data:
            for key in ("name", "source"):
                _need(isinstance(run_data.get(key), str), f"data.{key}", "a string")
            _need(isinstance(run_data.get("dir"), (str, type(None))), "data.dir", "a string or null")
        order = {}
        for what in ("param", "state"):
            order[what] = _names(entry(f"{what}_order", list), f"{what}_order")
            stored = sorted(k[len(what) + 1:] for k in tensors if k.startswith(f"{what}."))
            _need(sorted(order[what]) == stored, f"{what}_order",
                  f"the names of the stored {what}.* tensors: {', '.join(stored) or 'none'}")
        for k in tensors:
            _need(k.startswith(("param.", "state.")), "tensors", f"named param.* or state.*, not {k}")
    except _Bad as bad:
        name, must = bad.args
        raise OdcError(f"{p}: error: the checkpoint's metadata field '{name}' must be {must}\n"
                       f"{DAMAGED}") from None
    return Checkpoint(model, source, source_path, {k: tensors[f"param.{k}"] for k in order["param"]},
                      {k: tensors[f"state.{k}"] for k in order["state"]}, recipe, classes, epoch, rng,
                      history, run_data, str(p))
