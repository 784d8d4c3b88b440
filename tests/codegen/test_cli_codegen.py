"""The user-facing side of code generation: `odc dump-ir --emit`, `odc bench`, `odc cache`, the
per-kernel timers (ODC_PROFILE) and code for another CPU (ODC_CPU): AVX2 code without AVX-512
registers that still computes what the numpy reference interpreter computes."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
import pytest

import odc
from odc.cli import main
from odc.codegen import compile_graph
from odc.errors import OdcError
from odc.ir import interp

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "models" / "mlp.od")
# the host's vector width, from LLVM's view of the host (not from odc's choice)
HOST_AVX512 = "+avx512f" in llvm.get_host_cpu_features().flatten()


def odc_cli(capsys, *argv) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_emit_llvm_and_asm_show_vector_code_for_the_host():
    host = {k: v for k, v in os.environ.items() if k not in ("ODC_CPU", "ODC_CPU_FEATURES")}

    def dump(emit):
        run = subprocess.run([sys.executable, "-m", "odc.cli", "dump-ir", MLP, "--emit", emit, "--graph",
                              "forward", "--batch", "3"], env=host, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout

    text = dump("llvm")
    assert "define i32 @odc_step(" in text.replace('"', "")
    assert re.search(r"define internal .*void @\"?k\d+\.linear", text)  # one function per kernel
    assert f"<{16 if HOST_AVX512 else 8} x float>" in text
    asm = dump("asm")
    assert "odc_step:" in asm and "vfmadd" in asm
    assert ("%zmm" if HOST_AVX512 else "%ymm") in asm


def test_a_dump_is_the_same_on_a_cache_hit(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ODC_CACHE_DIR", str(tmp_path))
    args = ("dump-ir", MLP, "--emit", "llvm", "--batch", "4")
    cold = odc_cli(capsys, *args)
    assert not (tmp_path / "jit").exists()  # a dump neither needs nor fills the cache
    prog = odc.load(MLP)
    compile_graph(prog.lower("train", {"N": 4}))  # the graph the dump shows, now cached
    assert len(list((tmp_path / "jit").glob("*.o"))) == 1
    assert odc_cli(capsys, *args) == cold
    assert odc_cli(capsys, *args) == cold


def test_cache_info_and_clear(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ODC_CACHE_DIR", str(tmp_path))
    prog = odc.load(MLP)
    for n in (1, 2):
        compile_graph(prog.lower("forward", {"N": n}))
    size = sum(f.stat().st_size for f in (tmp_path / "jit").iterdir())
    assert odc_cli(capsys, "cache", "info") == f"{tmp_path / 'jit'}: 2 entries, {size / 1e6:.1f} MB\n"
    assert odc_cli(capsys, "cache", "clear") == f"removed 2 entries from {tmp_path / 'jit'}\n"
    assert not (tmp_path / "jit").exists()
    assert odc_cli(capsys, "cache", "info").endswith(": 0 entries, 0.0 MB\n")


def test_emit_refuses_pass_flags(capsys):
    assert main(["dump-ir", MLP, "--emit", "asm", "--after", "dce"]) == 1
    assert "leave out --after" in capsys.readouterr().err
    assert main(["dump-ir", MLP, "--graph", "forward"]) == 1
    assert "add --emit" in capsys.readouterr().err


def test_text_dump_with_a_batch_shows_the_memory_plan(capsys):
    """Specialised to a batch, the training step's stored intermediates get arena offsets;
    left symbolic, memory planning has nothing to place."""
    assert main(["dump-ir", MLP, "--after", "plan-memory", "--batch", "4"]) == 0
    text = capsys.readouterr().out
    assert "f32[4, " in text and "[N, " not in text and "arena=" in text
    assert main(["dump-ir", MLP, "--after", "plan-memory"]) == 0
    symbolic = capsys.readouterr().out
    assert "f32[N, " in symbolic and "arena=" not in symbolic


def test_bench_prints_compile_times_throughput_memory_and_a_profile(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ODC_NUM_THREADS", "2")
    monkeypatch.setenv("ODC_CACHE_DIR", str(tmp_path))  # where the measured peak is kept
    out = odc_cli(capsys, "bench", MLP, "--batch", "5", "--threads", "1", "--reps", "3", "--profile")
    assert out.startswith("MLP (") and ": 1 thread, " in out and "median of 3 calls" in out
    assert "compile cold" in out and "cached" in out and "train step" in out and "inference" in out
    row = re.search(r"^\s+5\s+([\d.]+) s\s+([\d.]+) s\s+([\d.]+) ms\s+([\d,]+)/s\s+([\d.]+) ms\s+([\d,]+)/s"
                    r"\s+([\d.]+) MB\s+([\d.]+) MB$", out, re.M)
    assert row, out
    cold, cached, train_ms, train_rate, fwd_ms, fwd_rate, arena, rss = (float(v.replace(",", "")) for v in row.groups())
    assert cached < cold
    for ms, rate in ((train_ms, train_rate), (fwd_ms, fwd_rate)):  # ms is printed to 3 decimals
        assert 5 / ((ms + 0.0005) / 1e3) - 1 <= rate <= 5 / ((ms - 0.0005) / 1e3) + 1
    assert arena < rss  # the process holds the arena (tests/runtime/test_bench.py checks its size)
    assert re.search(r"batch 5, training step: [\d.]+ ms per call", out)
    peak = json.loads((tmp_path / "peak.json").read_text())
    one = next(iter(peak.values()))["one"] / 1e9
    assert re.search(rf"% peak is of {one:.0f} GFLOP/s, the peak of 1 thread$", out, re.M), out
    kernels = re.findall(r"^  k\d+\.linear\S* +([\d.]+) ms +[\d.]+%(?: +([\d.]+) GFLOP/s +([\d.]+)%)?$", out, re.M)
    assert kernels, out
    for _, rate, share in kernels:  # each share of the peak is the kernel's rate over it
        if rate:
            assert float(share) == pytest.approx(float(rate) / one * 100, abs=0.1)
    summary = out.split("kernels by first op")[1]
    assert re.search(r"^  linear \(3\) +[\d.]+ ms", summary, re.M), out
    assert os.environ["ODC_NUM_THREADS"] == "2"  # --threads leaves the environment alone


def test_kernel_timers_add_up_and_change_no_result(monkeypatch, tmp_path):
    monkeypatch.setenv("ODC_CACHE_DIR", str(tmp_path))
    g = odc.load(MLP).lower("forward", {"N": 64})
    feeds = {a.name: np.random.default_rng(0).standard_normal(a.type.shape).astype(np.float32)
             for a in g.args_of()}
    plain = compile_graph(g)
    with pytest.raises(OdcError, match="ODC_PROFILE=1"):
        plain.profile()
    monkeypatch.setenv("ODC_PROFILE", "1")
    timed = compile_graph(g)
    assert len(list((tmp_path / "jit").glob("*.o"))) == 2  # timers are part of the cache key
    np.testing.assert_array_equal(timed(feeds)["logits"], plain(feeds)["logits"])
    first = timed.profile()
    t = time.perf_counter()
    for _ in range(20):
        timed(feeds)
    wall = time.perf_counter() - t
    spent = {k: v - first[k] for k, v in timed.profile().items()}
    assert any(k.split(".")[1] == "linear" for k in spent)
    assert all(v >= 0 for v in spent.values())
    assert 0 < sum(spent.values()) <= wall


AVX2_RUN = """
import json, sys
import numpy as np
import odc
from odc.codegen import assembly, compile_graph, jit, llvm_ir
g = odc.load(sys.argv[2]).lower("train", {"N": 5})
out = {"vector_bits": jit.vector_bits(), "cpu": jit.target()[0], "asm": assembly(g),
       "llvm": llvm_ir(g, optimized=False)}
for path in sys.argv[2:]:
    prog = odc.load(path)
    model = prog.compile(executor=compile_graph, seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 5)
    out[path] = {"logits": model.forward(x).tolist(), "losses": [model.train_step(x, y) for _ in range(2)],
                 "params": {k: v.tolist() for k, v in model.params.items()}}
json.dump(out, open(sys.argv[1], "w"))
"""


def test_code_for_an_avx2_cpu_has_no_avx512_registers_and_computes_the_same(tmp_path):
    """LeNet-5 and a strided convolution net, compiled for Haswell (AVX2 and FMA, no AVX-512),
    run on this host and checked against the interpreter."""
    models = [str(ROOT / "models" / m) for m in ("lenet5.od", "smallcnn.od")]
    env = {**os.environ, "ODC_CPU": "haswell", "ODC_CACHE_DIR": str(tmp_path)}
    env.pop("ODC_CPU_FEATURES", None)
    run = subprocess.run([sys.executable, "-c", AVX2_RUN, str(tmp_path / "out.json"), *models],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["vector_bits"] == 256 and got["cpu"] == "haswell"
    assert "llvm.fma.v8f32" in got["llvm"] and "llvm.fma.v16f32" not in got["llvm"]  # as the kernels wrote it
    assert "vfmadd" in got["asm"] and "%ymm" in got["asm"] and "zmm" not in got["asm"]
    for path in models:
        reference = odc.load(path).compile(executor=interp.compile_graph, seed=3)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((5, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, 5)
        np.testing.assert_allclose(got[path]["logits"], reference.forward(x), rtol=1e-4, atol=1e-5)
        losses = [reference.train_step(x, y) for _ in range(2)]
        np.testing.assert_allclose(got[path]["losses"], losses, rtol=1e-4)
        for name, value in reference.params.items():
            np.testing.assert_allclose(got[path]["params"][name], value, rtol=1e-3, atol=1e-5, err_msg=name)


def test_an_unknown_cpu_is_a_user_error():
    run = subprocess.run([sys.executable, "-m", "odc.cli", "dump-ir", MLP, "--emit", "asm"],
                         env={**os.environ, "ODC_CPU": "no-such-cpu"}, capture_output=True, text=True)
    assert run.returncode == 1
    assert "ODC_CPU='no-such-cpu'" in run.stderr and "not a recognized processor" in run.stderr
    assert "Traceback" not in run.stderr
