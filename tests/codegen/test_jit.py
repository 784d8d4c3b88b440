"""The executable and the JIT around the kernels: threads, argument checking, the disk cache,
the LLVM IR and assembly dumps."""
import numpy as np
import pytest

from odc.codegen import cache, jit
from planned import assembly, compile_graph, llvm_ir
from odc.codegen.builder import VW
from odc.errors import OdcError
from odc.ir.graph import Graph, TensorType
from odc.ir.printer import print_graph


def conv_graph(batch=16):
    """A convolution big enough to be split across threads, with a fused ReLU and a sum."""
    g = Graph("conv")
    x = g.add("input", type=TensorType("f32", (batch, 3, 20, 20)), name="x")
    w = g.add("param", type=TensorType("f32", (8, 3, 3, 3)), name="w")
    c = g.add("conv2d", [x, w], {"pad": 1}, TensorType("f32", (batch, 8, 20, 20)))
    r = g.add("relu", [c], type=TensorType("f32", (batch, 8, 20, 20)))
    s = g.add("sum", [r], {"axis": [0, 2, 3]}, TensorType("f32", (8,)))
    g.outputs = [("y", r), ("s", s)]
    return g


def feeds(g, seed=0):
    rng = np.random.default_rng(seed)
    return {a.name: rng.standard_normal(a.type.shape).astype(np.float32) for a in g.args_of()}


def test_threads_split_the_work_and_agree_with_one_thread(monkeypatch):
    g = conv_graph()
    assert "GOMP_parallel" in llvm_ir(g)
    f = feeds(g)
    monkeypatch.setenv("ODC_NUM_THREADS", "1")
    one = compile_graph(g)(f)
    monkeypatch.setenv("ODC_NUM_THREADS", "2")
    exe = compile_graph(g)
    assert exe.num_threads == 2
    two = exe(f)
    for name in one:  # each output element is computed by one thread, in the same order
        np.testing.assert_array_equal(one[name], two[name])


def test_a_bad_thread_count_is_a_user_error(monkeypatch):
    monkeypatch.setenv("ODC_NUM_THREADS", "zero")
    with pytest.raises(OdcError, match="ODC_NUM_THREADS"):
        compile_graph(conv_graph(1))


def test_arguments_are_checked_and_converted():
    g = conv_graph(2)
    exe = compile_graph(g)
    f = feeds(g)
    with pytest.raises(OdcError, match="no value given for w"):
        exe(x=f["x"])
    with pytest.raises(OdcError, match=r"'x' should be of shape \[2, 3, 20, 20\]"):
        exe(x=f["x"][:1], w=f["w"])
    want = exe(f)["y"]
    got = exe(x=f["x"].astype(np.float64), w=np.asfortranarray(f["w"]))["y"]  # converted copies
    np.testing.assert_array_equal(got, want)
    assert exe(f)["y"] is not exe(f)["y"]  # every call returns fresh arrays


def test_symbolic_shapes_are_refused():
    g = Graph("sym")
    x = g.add("input", type=TensorType("f32", ("N", 4)), name="x")
    g.outputs = [("y", g.add("relu", [x], type=TensorType("f32", ("N", 4))))]
    with pytest.raises(OdcError, match="symbolic"):
        compile_graph(g)


def test_the_disk_cache_is_hit_and_can_be_bypassed(tmp_path, monkeypatch):
    monkeypatch.setenv("ODC_CACHE_DIR", str(tmp_path))
    g = conv_graph(3)
    f = feeds(g)
    first = compile_graph(g)(f)
    assert len(list((tmp_path / "jit").glob("*.o"))) == 1

    def no_compiling(text):
        raise AssertionError("compiled although the cache has the code")
    with monkeypatch.context() as m:
        m.setattr(jit, "optimize", no_compiling)
        again = compile_graph(g)(f)  # loaded from the cache
        m.setenv("ODC_ALWAYS_COMPILE", "1")
        with pytest.raises(AssertionError, match="compiled although"):
            compile_graph(g)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    (obj,) = (tmp_path / "jit").glob("*.o")
    obj.write_bytes(obj.read_bytes()[:100])  # a damaged entry is recompiled, not loaded
    np.testing.assert_array_equal(compile_graph(g)(f)["y"], first["y"])
    compile_graph(conv_graph(4))  # another graph, another entry
    assert len(list((tmp_path / "jit").glob("*.o"))) == 2
    assert cache.clear() == 2 and not (tmp_path / "jit").exists()


def test_cache_keys_cover_the_ir_and_the_host():
    text = print_graph(conv_graph(3))
    base = cache.key(text, {}, "22.1.0", "znver5", "+avx512f")
    assert base != cache.key(print_graph(conv_graph(4)), {}, "22.1.0", "znver5", "+avx512f")
    assert base != cache.key(text, {"threads": False}, "22.1.0", "znver5", "+avx512f")
    assert base != cache.key(text, {}, "21.1.0", "znver5", "+avx512f")
    assert base != cache.key(text, {}, "22.1.0", "skylake", "+avx512f")
    assert base != cache.key(text, {}, "22.1.0", "znver5", "-avx512f")


def test_dumps_show_vector_code():
    g = conv_graph(2)
    raw, optimized = llvm_ir(g, optimized=False), llvm_ir(g)
    assert "define i32 @odc_step(" in raw.replace('"', "") and f"<{VW} x float>" in raw
    assert "noalias" in optimized
    asm = assembly(g)
    assert "vfmadd" in asm
    assert {16: "zmm", 8: "ymm", 4: "xmm"}[VW] in asm  # the target's widest registers


def test_returned_arguments_views_and_duplicates_are_copied():
    g = Graph("outs")
    x = g.add("input", type=TensorType("f32", (3, 5)), name="x")
    r = g.add("relu", [x], type=TensorType("f32", (3, 5)))
    v = g.add("reshape", [r], {"shape": [15]}, TensorType("f32", (15,)))
    k = g.add("const", attrs={"value": 2.5}, type=TensorType("f32", ()))
    g.outputs = [("arg", x), ("relu", r), ("again", r), ("view", v), ("const", k)]
    xv = np.linspace(-1, 1, 15, dtype=np.float32).reshape(3, 5)
    out = compile_graph(g)(x=xv)
    np.testing.assert_array_equal(out["arg"], xv)
    for name in ("relu", "again"):
        np.testing.assert_array_equal(out[name], np.maximum(xv, 0))
    np.testing.assert_array_equal(out["view"], np.maximum(xv, 0).reshape(15))
    assert out["const"].shape == () and out["const"] == 2.5
    out["arg"][0, 0] = 99  # outputs never alias the arguments
    assert xv[0, 0] == -1
