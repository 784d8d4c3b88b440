"""How many threads a call of compiled code uses.

`available` is what the process may use: the CPUs of its affinity mask, capped by a cgroup CPU
quota (a container limited to 1.5 CPUs gets 2 threads). ``$ODC_NUM_THREADS`` fixes the count.

Without it, each executable chooses call by call between all available threads and one
(`Choice`). The kernels split their work evenly and the entry point waits for the slowest
thread, so when other processes keep the cores busy a helper thread that the scheduler leaves
waiting delays every kernel: a batch-32 LeNet-5 step took 7-17 times longer with 2 threads
than with 1 beside another training process. A fixed count cannot be right both on an idle
machine and on a busy one, so the executable measures. It times every call (a few hundred
nanoseconds) and now and then runs `PROBE_CALLS` calls with the other count, a *probe*. It
switches when the probe's mean is 5% below the mean of the last `WINDOW` calls: means, not
medians, since on a busy machine threads make a few calls very slow (median 1.8 ms, mean 5.9 ms
for 2 threads, against 4.4 and 4.6 ms for 1), and a training run waits for the mean. A probe
call twice as slow as usual ends the probe at once. It starts with one thread and probes
early: one thread too many costs far more (10 times the time of a call, and more) than one
too few. A probe call does its real work, only perhaps more slowly. Probes grow rare while they
lose: the next comes after twice the last interval, from `PROBE_EVERY` seconds of calls up to
`PROBE_MOST`. A change of load is noticed sooner: when the recent calls have become 1.5 times
slower or 1.15 times faster than when the count was chosen, the next call starts a probe.
Either way no probe comes before 100 times the extra time the last one cost has passed,
which keeps the cost of probing near 1% of the running time.
"""
from __future__ import annotations

import math
import os
import statistics
from collections import deque

from odc.errors import OdcError

PROBE_EVERY = 1.0  # seconds of calls between probes, at first and after a switch
PROBE_MOST = 64.0  # ... and at most, while probes lose
PROBE_CALLS = 3
WINDOW = 8  # recent calls whose mean stands for the current count
SLOWER, FASTER = 1.5, 1.15  # recent calls this much slower or faster than at the last choice start a probe
LOST = 2.0  # a probe call this much slower than usual ends its probe at once

def available() -> int:
    """The CPUs this process may run on, capped by its cgroup's CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:  # cgroup v2: "max 100000" or "<quota> <period>" in microseconds
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def fixed() -> int | None:
    """The count that ``$ODC_NUM_THREADS`` fixes, or None when it is not set."""
    value = os.environ.get("ODC_NUM_THREADS")
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise OdcError(f"ODC_NUM_THREADS must be a positive integer, got {value!r}")
    return n


class Choice:
    """The thread count for each call of one executable: `next()` before the call, `took(s)`
    after it with its seconds. Fixed at `most` when `adaptive` is false or `most` is 1."""

    def __init__(self, most: int, adaptive: bool):
        self.most = most
        self.adaptive = adaptive and most > 1
        self.current = 1 if self.adaptive else most  # a wrong 1 costs little, a wrong `most` much
        self._recent: deque[float] = deque(maxlen=WINDOW)  # seconds of the last calls with `current`
        self._probe: list[float] = []  # seconds of this probe's calls so far
        self._probing = False
        self._clock = 0.0  # seconds of calls so far
        self._next_probe = 0.0  # the first probe comes as soon as the window is half full
        self._interval = PROBE_EVERY
        self._paid = 0.0  # no probe before this clock: 100 times the last one's extra time
        self._chosen = math.inf  # mean call time when the count was last chosen

    def next(self) -> int:
        if not self.adaptive:
            return self.current
        if (not self._probing and len(self._recent) >= WINDOW // 2 and self._clock >= self._paid
                and (self._clock >= self._next_probe or self._changed())):
            self._probing = True
        return self._other() if self._probing else self.current

    def took(self, seconds: float) -> None:
        if not self.adaptive:
            return
        self._clock += seconds
        if not self._probing:
            self._recent.append(seconds)
            return
        self._probe.append(seconds)
        usual = statistics.fmean(self._recent)
        lost = seconds > LOST * usual
        if len(self._probe) < PROBE_CALLS and not lost:
            return
        probe = statistics.fmean(self._probe)
        extra = max(0.0, sum(self._probe) - usual * len(self._probe))
        if not lost and probe < 0.95 * usual:
            self.current = self._other()
            self._recent.clear()
            self._recent.extend(self._probe)
            self._interval, self._chosen = PROBE_EVERY, probe
        else:
            self._interval, self._chosen = min(PROBE_MOST, 2 * self._interval), usual
        self._next_probe = self._clock + self._interval
        self._paid = self._clock + 100 * extra
        self._probe, self._probing = [], False

    def _changed(self) -> bool:
        """Have the recent calls become much slower or faster than when the count was chosen?"""
        m = statistics.fmean(self._recent)
        return m > SLOWER * self._chosen or m * FASTER < self._chosen

    def _other(self) -> int:
        return 1 if self.current == self.most else self.most
