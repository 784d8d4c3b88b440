"""odc.runtime.bench: useful FLOPs against hand counts, the kernel profile's FLOPs per kernel,
the machine's peak (the FMA loop computes what it counts; the per-machine cache) and memory."""
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import odc
from odc.codegen.builder import VW
from odc.ir import interp
from odc.runtime import bench

MODELS = Path(__file__).resolve().parents[2] / "models"
MATMUL_OPS = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "linear", "matmul")


def lenet5_flops(batch: int) -> tuple[int, int]:
    """LeNet-5's (forward, training step) FLOPs counted by hand, 2 per multiply-add: per sample,
    conv1 6x28x28 outputs of 1x5x5 products, conv2 16x10x10 of 6x5x5, the dense layers
    400x120, 120x84, 84x47. The step adds the weight gradients (as many as the forward pass) and
    the input gradients of every layer but the first."""
    layers = [(6 * 28 * 28 * 1 * 25, False), (16 * 10 * 10 * 6 * 25, True),
              (400 * 120, True), (120 * 84, True), (84 * 47, True)]  # (MACs per sample, input grad)
    fwd = sum(m for m, _ in layers)
    step = fwd + fwd + sum(m for m, grad_input in layers if grad_input)
    return 2 * batch * fwd, 2 * batch * step


def test_lenet5_flops_are_the_hand_count():
    prog = odc.load(MODELS / "lenet5.od")
    for batch in (1, 32):
        fwd, step = lenet5_flops(batch)
        assert bench.graph_flops(prog.lower("forward", prog.batch_bindings(batch))) == fwd
        assert bench.graph_flops(prog.lower("train", prog.batch_bindings(batch))) == step


GROUPED = """
model Grouped(classes = 3):
    input image: f32[N, 8, 9, 9]
    x = relu(conv2d(image, out=8, kernel=1))                          # f32[N, 8, 9, 9]
    x = conv2d(x, out=12, kernel=3, stride=2, pad=1, groups=4)        # f32[N, 12, 5, 5]
    x = conv2d(x, out=12, kernel=3, pad=2, dilation=2, groups=12)     # depthwise: f32[N, 12, 5, 5]
    return dense(flatten(x), classes)
"""


def test_flops_of_grouped_strided_and_depthwise_convolutions_are_the_hand_count(tmp_path):
    (tmp_path / "grouped.od").write_text(GROUPED)
    prog = odc.load(tmp_path / "grouped.od")
    # multiply-adds at batch 2: outputs x products per output
    conv1 = 2 * 8 * 9 * 9 * (8 * 1 * 1)
    grouped = 2 * 12 * 5 * 5 * (8 // 4 * 3 * 3)  # 2 input channels per group
    depthwise = 2 * 12 * 5 * 5 * (1 * 3 * 3)
    dense = 2 * 300 * 3
    g = prog.lower("forward", prog.batch_bindings(2))
    assert bench.graph_flops(g) == 2 * (conv1 + grouped + depthwise + dense)
    g = prog.lower("train", prog.batch_bindings(2))
    per_op = {}
    for n in g.nodes():
        per_op[n.op] = per_op.get(n.op, 0) + bench.flops(g, n.id)
    assert {op: f for op, f in per_op.items() if f} == {
        "conv2d": 2 * (conv1 + grouped + depthwise),
        "conv2d_grad_weight": 2 * (conv1 + grouped + depthwise),
        "conv2d_grad_input": 2 * (grouped + depthwise),  # none for the image
        "linear": 2 * dense,
        "matmul": 2 * (dense + dense),  # the dense layer's input gradient and weight gradient
    }


def test_a_kernel_profile_gives_each_kernel_the_flops_of_its_ops(monkeypatch, tmp_path):
    monkeypatch.setenv("ODC_CACHE_DIR", str(tmp_path))
    prog = odc.load(MODELS / "lenet5.od")
    prof = bench.kernel_profile(prog, 4, reps=2, threads=1)
    assert sum(f for _, f in prof.kernels.values()) == lenet5_flops(4)[1]
    for name, (sec, fl) in prof.kernels.items():
        assert sec >= 0 and (fl > 0) == (bench.Profile.op(name) in MATMUL_OPS), name
    conv2_input_grad, = (fl for name, (_, fl) in prof.kernels.items() if ".conv2d_grad_input" in name)
    assert conv2_input_grad == 2 * 4 * 16 * 10 * 10 * 6 * 25
    seconds = [sec for sec, _ in prof.kernels.values()]
    assert seconds == sorted(seconds, reverse=True)
    summary = prof.by_op()
    assert sum(count for count, _, _ in summary.values()) == len(prof.kernels)
    assert summary["conv2d"][0] == 2 and summary["conv2d"][2] == 2 * 4 * (6 * 28 * 28 * 25 + 16 * 10 * 10 * 6 * 25)
    assert sum(sec for _, sec, _ in summary.values()) == pytest.approx(sum(seconds))


def test_the_fma_loop_runs_every_iteration_it_counts():
    fn, code = bench.fma_loop()
    for n in (1, 7, 300):
        buf = np.full(VW, 0.999, np.float32)
        fn(buf.ctypes.data, n)
        a = x = 0.999
        for _ in range(n):
            a = a * x + x
        np.testing.assert_allclose(buf, x + bench.CHAINS * a, rtol=1e-5)


class Measurements:
    """Stands for `bench.measure_peak`: records each call; a short real measurement unless
    `fake` gives the result."""

    def __init__(self):
        self.calls, self.fake, self.real = [], None, bench.measure_peak

    def __call__(self, threads):
        self.calls.append(threads)
        return self.fake or self.real(threads, n=2_000_000)


@pytest.fixture
def measurements(monkeypatch, tmp_path):
    """The peak cache in a fresh folder, and its measurements recorded."""
    monkeypatch.setenv("ODC_CACHE_DIR", str(tmp_path))
    m = Measurements()
    monkeypatch.setattr(bench, "measure_peak", m)
    return m


def test_the_peak_is_measured_once_per_machine_and_kept(measurements, tmp_path):
    first = bench.peak()
    assert measurements.calls == [first.cpus] and 0 < first.one <= first.all
    assert bench.peak_file() == tmp_path / "peak.json"
    stored = json.loads((tmp_path / "peak.json").read_text())
    assert stored == {bench.machine_key(): {"one": first.one, "all": first.all, "cpus": first.cpus,
                                            "measured": first.measured}}
    assert bench.peak() == first and len(measurements.calls) == 1
    measurements.fake = (first.one / 2, first.all * 2)  # a new measurement keeps the higher of each
    again = bench.peak(measure=True)
    assert (again.one, again.all) == (first.one, first.all * 2) and len(measurements.calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["peak.json"]  # no temporary file left


def test_a_damaged_peak_file_is_measured_again_and_other_machines_are_kept(measurements, tmp_path):
    path = tmp_path / "peak.json"
    measurements.fake = (100e9, 180e9)
    for damaged in ("{not json", "[1, 2]", json.dumps({bench.machine_key(): {"one": "fast"}})):
        path.write_text(damaged)
        assert (bench.peak().one, bench.peak().all) == (100e9, 180e9)
        assert json.loads(path.read_text())[bench.machine_key()]["all"] == 180e9
    other = {"one": 1e9, "all": 4e9, "cpus": 4, "measured": "2026-01-01T00:00:00"}
    path.write_text(json.dumps({"another machine": other}))
    bench.peak()
    assert json.loads(path.read_text())["another machine"] == other
    assert len(measurements.calls) == 4


def test_the_peak_of_some_threads_is_as_many_one_thread_peaks_at_most_all():
    p = bench.Peak(one=100.0, all=150.0, cpus=2, measured="")
    assert (p.at(1), p.at(2), p.at(8)) == (100.0, 150.0, 150.0)
    assert bench.Peak(one=100.0, all=700.0, cpus=8, measured="").at(4) == 400.0


PEAK_RSS_CHILD = """
import resource, sys
import numpy as np
from odc.runtime import bench
bench.reset_peak_rss()
base = bench.peak_rss()
block = np.ones(64 << 17)  # 64 MiB of float64, touched
del block
high = bench.peak_rss()
lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
bench.reset_peak_rss()
print(base, high, lifetime, bench.peak_rss())
"""


def test_the_peak_resident_set_counts_from_its_reset():
    """In a fresh process (as bench/networks.py measures each contender): the peak rises by a
    64 MiB block, is at most the lifetime peak that getrusage tells (its page counters may lag
    those of /proc/self/status by a few hundred KiB), and falls back once reset."""
    out = subprocess.run([sys.executable, "-c", PEAK_RSS_CHILD], capture_output=True, text=True, check=True)
    base, high, lifetime, after = map(int, out.stdout.split())
    assert high >= base + (60 << 20)
    assert high <= lifetime + (1 << 20)
    assert after < high - (50 << 20)


def test_throughput_reports_the_training_steps_memory(monkeypatch, tmp_path):
    monkeypatch.setenv("ODC_CACHE_DIR", str(tmp_path))
    prog = odc.load(MODELS / "mlp.od")
    t = bench.throughput(prog, 5, reps=2, threads=1)
    assert len(t.train) == len(t.forward) == 2 and min(t.train + t.forward) > 0
    g = prog.lower("train", prog.batch_bindings(5))
    hidden = 5 * 256 * 4  # a hidden activation lives in the arena
    values = sum(n.type.numel * 4 for n in g.nodes() if n.op not in ("input", "param", "state"))
    assert hidden <= t.arena_bytes
    assert t.arena_bytes <= values + (1 << 20)  # no more than every value of the step, and scratch
    assert t.arena_bytes < t.peak_rss <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 + (1 << 20)


# -- bench/networks.py ----------------------------------------------------------------------------
def test_pytorch_gets_the_images_odc_makes_of_the_pixels():
    """A normalizing model takes uint8 pixels; PyTorch gets `torch_images` of them. The same
    network with the same parameters, its recipe's normalize and augment left out, gives on
    those floats the logits that the normalizing model gives on the pixels."""
    from bench.networks import torch_images
    prog = odc.load(MODELS / "cifar_cnn.od")
    x, _ = bench.random_batch(prog, 2)
    assert x.dtype == np.uint8
    model = prog.compile(executor=interp.compile_graph)
    g = odc.load(MODELS / "cifar_cnn.od").graph  # as tests/test_zoo.py takes the network alone
    g.meta["recipe"] = {k: v for k, v in g.meta["recipe"].items() if k not in ("normalize", "augment")}
    twin = odc.Program(g).compile(executor=interp.compile_graph)
    twin.params, twin.state = model.params, model.state
    np.testing.assert_allclose(twin.forward(torch_images(prog, x)), model.forward(x), rtol=1e-4, atol=1e-5)


def test_the_lenet5_twin_computes_what_odc_does(torch):
    from bench.networks import lenet5
    from tests.test_zoo import run_twin
    model = odc.load(MODELS / "lenet5.od").compile(executor=interp.compile_graph)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 1, 28, 28)).astype(np.float32), rng.integers(0, 47, 3)
    logits, loss, grads = run_twin(torch, lambda: lenet5(torch, 47), model.params.values(), x, y, torch.float64)
    np.testing.assert_allclose(model.forward(x), logits, rtol=1e-4, atol=1e-5)
    ours, our_grads = model.loss_and_grads(x, y)
    assert ours == pytest.approx(loss, rel=1e-4)
    for mine, theirs in zip(our_grads.values(), grads):
        np.testing.assert_allclose(mine, theirs, rtol=1e-3, atol=1e-5)
