"""The JIT disk cache: object code keyed by everything that determines it.

Key = SHA-256 of the canonical IR text (after fusion and memory planning, so their choices
are in it), the code generation options, the odc version, a hash of the compiler's own
source (so an edited compiler never loads stale code), the LLVM version and the target CPU
name and features (the host's, or those `$ODC_CPU` chooses). No modification times are
involved. An entry is ``KEY.o`` (the object file) and ``KEY.json`` (how to call it), under
``$ODC_CACHE_DIR/jit`` (default ``~/.cache/odc/jit``). ``ODC_ALWAYS_COMPILE=1`` bypasses
the cache.

Each file is written to a temporary file in the same folder and renamed over the entry, the
object first; the metadata holds a SHA-256 of the object and of the metadata itself
(`checksum`), checked before anything is used. So an entry that cannot be read, is damaged
(truncated, garbled, not a JSON object, keys missing or changed) or mixes the files of two
processes that stored the same key at once is a miss: the code is compiled again and the entry
replaced. Processes never see a half-written file.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from odc.version import __version__


def cache_dir() -> Path:
    root = os.environ.get("ODC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "odc")
    return Path(root) / "jit"


def enabled() -> bool:
    return os.environ.get("ODC_ALWAYS_COMPILE", "") not in ("1", "true", "yes")


@functools.lru_cache(maxsize=None)
def compiler_hash() -> str:
    """Hash of the source files that turn IR into machine code (the op catalog, whose scalar
    formulas kernels are made of, the dtype table and the graph included: kernel order comes from
    the graph)."""
    root = Path(__file__).resolve().parent.parent
    files = sorted((root / "codegen").rglob("*.py")) + sorted((root / "ir" / "ops").rglob("*.py")) + [
        root / "ir" / name for name in ("dtypes.py", "graph.py", "passes/fuse.py", "passes/plan_memory.py")]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def key(ir_text: str, options: dict, llvm_version: str, cpu: str, features: str) -> str:
    h = hashlib.sha256()
    for part in (ir_text, json.dumps(options, sort_keys=True), __version__, compiler_hash(),
                 llvm_version, cpu, features):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def checksum(obj: bytes, meta: dict) -> str:
    """SHA-256 of an entry: its object code and its metadata (as JSON, so tuples and the lists
    they come back as agree)."""
    h = hashlib.sha256(obj)
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def load(k: str) -> tuple[bytes, dict] | None:
    """The object code and metadata stored under key `k`, or None: no entry, or one that cannot
    be read or does not match its checksum."""
    if not enabled():
        return None
    d = cache_dir()
    try:
        meta = json.loads((d / f"{k}.json").read_bytes())
        obj = (d / f"{k}.o").read_bytes()
    except (OSError, ValueError, RecursionError):  # RecursionError: deeply nested garbage
        return None
    if not isinstance(meta, dict) or meta.pop("sha256", None) != checksum(obj, meta):
        return None
    return obj, meta


def store(k: str, obj: bytes, meta: dict) -> None:
    """Store an entry (see the module docstring). A read-only or full disk only costs a
    recompile next time."""
    if not enabled():
        return
    d = cache_dir()
    meta = {**meta, "sha256": checksum(obj, meta)}
    try:
        d.mkdir(parents=True, exist_ok=True)
        for name, data in ((f"{k}.o", obj), (f"{k}.json", json.dumps(meta).encode())):
            _write_atomic(d / name, data)
    except OSError:
        pass


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def usage() -> tuple[int, int]:
    """(entries, bytes) in the cache; files that another process removes meanwhile do not count."""
    d = cache_dir()
    entries = size = 0
    for f in (d.iterdir() if d.is_dir() else ()):
        try:
            size += f.stat().st_size
        except OSError:
            continue
        entries += f.suffix == ".o"
    return entries, size


def clear() -> int:
    """Delete every cached entry; returns how many there were."""
    d = cache_dir()
    n = len(list(d.glob("*.o"))) if d.is_dir() else 0
    shutil.rmtree(d, ignore_errors=True)
    return n
