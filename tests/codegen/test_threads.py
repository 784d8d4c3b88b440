"""The thread count of compiled code: fixed by ODC_NUM_THREADS, else chosen call by call."""
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from odc.codegen import threads
from planned import compile_graph
from odc.errors import OdcError
from tests.codegen.test_jit import conv_graph, feeds


def simulate(choice: threads.Choice, cost, calls: int) -> tuple[float, list[int]]:
    """Run `calls` calls whose seconds `cost(call, threads)` gives; total seconds and the counts used."""
    total, used = 0.0, []
    for i in range(calls):
        n = choice.next()
        s = cost(i, n)
        choice.took(s)
        total += s
        used.append(n)
    return total, used


def noisy(seconds_1, seconds_most, seed=0):
    rng = random.Random(seed)
    return lambda i, n: (seconds_1 if n == 1 else seconds_most) * rng.uniform(0.9, 1.3)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(one=st.floats(1e-4, 1.0), ratio=st.sampled_from([0.3, 0.55, 0.8, 1.3, 3.0, 10.0, 30.0]),
       seed=st.integers(0, 1000))
def test_the_choice_costs_little_more_than_the_best_fixed_count(one, ratio, seed):
    # ratio: the time of a call with all threads over one with one thread (30: a busy machine)
    cost = noisy(one, one * ratio, seed)
    calls = max(400, int(120 / one))  # two minutes of calls at least: long enough to settle
    total, used = simulate(threads.Choice(2, adaptive=True), cost, calls)
    best = min(one, one * ratio) * 1.1 * calls  # 1.1: the mean of the noise
    assert total <= 1.05 * best + 10 * one * max(1.0, ratio)  # a few calls to learn, then ~1%
    faster = 2 if ratio < 1 else 1
    assert used[-50:].count(faster) >= 40


def test_a_load_that_comes_and_goes_is_followed():
    # idle: 2 threads take 4 ms, 1 thread 7 ms; busy (calls 3000-6000): 2 threads take 80 ms
    def cost(i, n):
        busy = 3000 <= i < 6000
        return 0.007 * (1.2 if busy else 1) if n == 1 else (0.080 if busy else 0.004)
    total, used = simulate(threads.Choice(2, adaptive=True), cost, 9000)
    assert used[2500:3000].count(2) == 500
    assert used[5500:6000].count(1) >= 495  # at most one probe of 2 threads
    assert used[8500:].count(2) >= 495
    best = 3000 * 0.004 + 3000 * 0.0084 + 3000 * 0.004
    assert total < 1.1 * best


def test_odc_num_threads_fixes_the_count(monkeypatch):
    monkeypatch.setenv("ODC_NUM_THREADS", "2")
    exe = compile_graph(conv_graph())
    assert exe.num_threads == 2 and not exe.threads.adaptive
    assert {exe.threads.next() for _ in range(100)} == {2}
    monkeypatch.delenv("ODC_NUM_THREADS")
    exe = compile_graph(conv_graph())
    assert exe.num_threads == threads.available() and exe.threads.adaptive == (threads.available() > 1)


def test_results_do_not_depend_on_the_count_chosen(monkeypatch):
    monkeypatch.delenv("ODC_NUM_THREADS", raising=False)
    g = conv_graph()
    f = feeds(g)
    exe = compile_graph(g)
    exe.threads = threads.Choice(2, adaptive=True)
    exe.threads.took = lambda s: None  # keep its first count
    outs = []
    for current in (1, 2, 1):
        exe.threads.current = current
        outs.append(exe(f))
    for name in outs[0]:
        np.testing.assert_array_equal(outs[0][name], outs[1][name])
        np.testing.assert_array_equal(outs[0][name], outs[2][name])


def test_available_respects_a_cgroup_quota(monkeypatch, tmp_path):
    real_open = open
    quota = tmp_path / "cpu.max"

    def fake_open(path, *a, **k):
        return real_open(quota if path == "/sys/fs/cgroup/cpu.max" else path, *a, **k)
    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)))
    quota.write_text("150000 100000\n")
    assert threads.available() == 2
    quota.write_text("max 100000\n")
    assert threads.available() == 8
    quota.write_text("garbage\n")
    assert threads.available() == 8


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_a_bad_odc_num_threads_is_a_user_error(monkeypatch, value):
    monkeypatch.setenv("ODC_NUM_THREADS", value)
    with pytest.raises(OdcError, match="ODC_NUM_THREADS must be a positive integer"):
        threads.fixed()
