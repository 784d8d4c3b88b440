"""The JIT disk cache under damage and concurrency: an entry that cannot be read or is not what
`store` wrote is a miss (compiled again and replaced), and processes that compile the same
model into one cache at once all succeed."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from odc.codegen import cache, jit
from planned import compile_graph
from odc.ir.graph import Graph, TensorType


def small_graph(rows=4):
    g = Graph("small")
    x = g.add("input", type=TensorType("f32", (rows, 5)), name="x")
    r = g.add("relu", [x], type=TensorType("f32", (rows, 5)))
    g.outputs = [("y", r), ("s", g.add("sum", [r], {"axis": [0]}, TensorType("f32", (5,))))]
    return g


X = np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5)


def check_result(exe):
    out = exe(x=X)
    np.testing.assert_array_equal(out["y"], np.maximum(X, 0))
    np.testing.assert_allclose(out["s"], np.maximum(X, 0).sum(0), rtol=1e-6)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The folder of a cache holding the one entry of `small_graph()`, and its key."""
    root = tmp_path_factory.mktemp("pristine")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ODC_CACHE_DIR", str(root))
        check_result(compile_graph(small_graph()))
    (meta,) = (root / "jit").glob("*.json")
    return root / "jit", meta.stem


@pytest.fixture
def entry(pristine, tmp_path, monkeypatch):
    """A private copy of the pristine cache: (folder, key)."""
    folder, k = pristine
    monkeypatch.setenv("ODC_CACHE_DIR", str(tmp_path))
    shutil.copytree(folder, tmp_path / "jit")
    return tmp_path / "jit", k


def edited(**changes):
    """Damage: the metadata with some keys changed (None: removed), its stored checksum kept."""
    def damage(meta_bytes):
        meta = json.loads(meta_bytes)
        for key, value in changes.items():
            if value is None:
                del meta[key]
            else:
                meta[key] = value
        return json.dumps(meta).encode()
    return damage


JSON_DAMAGE = {
    "a JSON list": lambda b: b"[]",
    "a JSON number": lambda b: b"3",
    "a JSON string": lambda b: b'"entry"',
    "JSON null": lambda b: b"null",
    "an empty object": lambda b: b"{}",
    "empty": lambda b: b"",
    "truncated": lambda b: b[: len(b) // 2],
    "not UTF-8": lambda b: b"\xff\xfe" + b[2:],
    "deeply nested": lambda b: b"[" * 100_000,
    "no checksum": edited(sha256=None),
    "args missing": edited(args=None),
    "outputs missing": edited(outputs=None),
    "arena_bytes missing": edited(arena_bytes=None),
    "args a number": edited(args=3),
    "args not triples": edited(args=[["x"]]),
    "kernels a string": edited(kernels="all"),
    "arena_bytes a string": edited(arena_bytes="lots"),
}
OBJECT_DAMAGE = {
    "object truncated": lambda b: b[:100],
    "object garbled": lambda b: bytes(c ^ 0x5A for c in b[:64]) + b[64:],
    "object empty": lambda b: b"",
}


def assert_miss_then_replaced(folder, k, monkeypatch):
    assert cache.load(k) is None
    check_result(compile_graph(small_graph()))  # compiled again ...
    assert cache.load(k) is not None  # ... and the entry replaced: the next run loads it

    def no_compiling(text):
        raise AssertionError("compiled although the cache holds the code")
    monkeypatch.setattr(jit, "optimize", no_compiling)
    check_result(compile_graph(small_graph()))
    assert sorted(p.name for p in folder.iterdir()) == [f"{k}.json", f"{k}.o"]  # no temporary files


@pytest.mark.parametrize("damage", JSON_DAMAGE.values(), ids=JSON_DAMAGE.keys())
def test_damaged_metadata_is_a_miss(damage, entry, monkeypatch):
    folder, k = entry
    path = folder / f"{k}.json"
    path.write_bytes(damage(path.read_bytes()))
    assert_miss_then_replaced(folder, k, monkeypatch)


@pytest.mark.parametrize("damage", OBJECT_DAMAGE.values(), ids=OBJECT_DAMAGE.keys())
def test_damaged_object_is_a_miss(damage, entry, monkeypatch):
    folder, k = entry
    path = folder / f"{k}.o"
    path.write_bytes(damage(path.read_bytes()))
    assert_miss_then_replaced(folder, k, monkeypatch)


@pytest.mark.parametrize("missing", [".o", ".json"])
def test_half_an_entry_is_a_miss(missing, entry, monkeypatch):
    folder, k = entry
    (folder / f"{k}{missing}").unlink()
    assert_miss_then_replaced(folder, k, monkeypatch)


def test_unreadable_entry_is_a_miss(entry, monkeypatch):
    folder, k = entry
    (folder / f"{k}.json").unlink()
    (folder / f"{k}.json").mkdir()  # reading it fails with IsADirectoryError
    assert cache.load(k) is None
    check_result(compile_graph(small_graph()))  # it cannot be replaced, but compiling works


def test_files_of_two_entries_do_not_mix(entry):
    """The metadata of one store beside the object of another (two processes storing the same
    key at once, with different code) is a miss, not a wrong layout for the code."""
    folder, k = entry
    obj, meta = cache.load(k)
    cache.store(k, obj + b"\0", meta)  # a store of other bytes under the same key
    other_obj = (folder / f"{k}.o").read_bytes()
    cache.store(k, obj, meta)
    (folder / f"{k}.o").write_bytes(other_obj)  # its object, with the metadata of the first store
    assert cache.load(k) is None


def test_a_failed_store_leaves_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ODC_CACHE_DIR", str(tmp_path))

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", disk_full)
    check_result(compile_graph(small_graph()))  # the store fails quietly
    assert list((tmp_path / "jit").iterdir()) == []


def test_usage_skips_files_that_vanish(entry):
    folder, k = entry
    (folder / ".tmpgone").symlink_to(folder / "removed-meanwhile")  # stat fails, as for a removed file
    entries, size = cache.usage()
    assert entries == 1 and size == sum(p.stat().st_size for p in folder.glob(f"{k}.*"))


CONCURRENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_cache import X, check_result, small_graph
    from planned import compile_graph
    while not Path(sys.argv[2]).exists():  # start together
        time.sleep(0.001)
    for rows in (4, 6, 8):  # three entries, stored by every process at about the same time
        exe = compile_graph(small_graph(rows))
        if rows == 4:
            check_result(exe)
    print("ok")
""")


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_compiling_the_same_model_at_once_all_succeed(processes, tmp_path, monkeypatch):
    monkeypatch.setenv("ODC_CACHE_DIR", str(tmp_path / "cache"))  # fresh: nobody has compiled yet
    go = tmp_path / "go"
    here = os.path.dirname(__file__)
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, here, str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and out.strip() == "ok", err
    folder = tmp_path / "cache" / "jit"
    assert sorted(p.suffix for p in folder.iterdir()) == [".json"] * 3 + [".o"] * 3  # no temporary files
    for meta in folder.glob("*.json"):
        assert cache.load(meta.stem) is not None  # every entry whole and consistent
