"""Learning-rate schedules of the train block (`schedule = ...`), as torch.optim.lr_scheduler
defines them, and the arguments each takes.

A schedule is a dict: {"name": ..., argument: value, ...}, every argument present (the front end
fills in the defaults). The rate of a step is computed in Python floats, by replaying PyTorch's
own (recursive) formulas, so it equals the `lr` PyTorch's scheduler puts into the optimizer to
the last bit; the runtime feeds it to the compiled step as an input (`odc.ir.passes.optimizer`).

Stepped once per epoch (the rate of epoch e, 1-based, is the scheduler's after e - 1 calls of
`scheduler.step()`), from the optimizer's `lr`:
- `step(every, gamma=0.1)`: StepLR(step_size=every, gamma).
- `multistep([e1, e2, ...], gamma=0.1)`: MultiStepLR(milestones, gamma).
- `exponential(gamma)`: ExponentialLR(gamma).
- `cosine(min_lr=0)`: CosineAnnealingLR(T_max = the run's epochs, eta_min = min_lr).
- `plateau(factor=0.1, patience=10)`: ReduceLROnPlateau(mode="min", factor, patience, and
  PyTorch's threshold 1e-4 (relative), cooldown 0, min_lr 0, eps 1e-8), stepped with the loss
  the run measures after each epoch (on the validation part, or the test part without one).
Stepped once per optimizer step (with `accumulate = k`, every k-th batch):
- `onecycle(max_lr)`: OneCycleLR(max_lr, total_steps = the optimizer steps of the whole run),
  with PyTorch's defaults: pct_start 0.3, cosine annealing, div_factor 25 (the first rate is
  max_lr / 25, whatever the optimizer's lr), final_div_factor 1e4. The momentum is not cycled
  (as cycle_momentum=False): the optimizer's momentum stays what the train block says.
- `warmup(epochs, then=SCHEDULE)`: over the first `epochs` epochs (W optimizer steps), step t
  (from 0) has the rate lr * (t + 1) / W, rising linearly to lr (as LinearLR(start_factor=1/W,
  end_factor=1, total_iters=W - 1)); then `then` (default: the constant lr) runs as if the run
  started after the warmup, as SequentialLR hands over: its epochs count from there, and
  `cosine`'s T_max and `onecycle`'s steps are what is left of the run.
"""
from __future__ import annotations

import math
from collections import Counter

SCHEDULES = {  # name -> argument -> default (None: required)
    "step": {"every": None, "gamma": 0.1},
    "multistep": {"milestones": None, "gamma": 0.1},
    "exponential": {"gamma": None},
    "cosine": {"min_lr": 0.0},
    "onecycle": {"max_lr": None},
    "plateau": {"factor": 0.1, "patience": 10},
    "warmup": {"epochs": None, "then": None},
}
PER_STEP = ("onecycle", "warmup")


def _integer(lo: int):
    return f"an integer >= {lo}", lambda v: type(v) is int and v >= lo


def _number(words: str, ok):
    return words, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and ok(v)


VALID = {  # (schedule, argument) -> (what it must be, in words; the test)
    ("step", "every"): _integer(1),
    ("step", "gamma"): _number("a number > 0", lambda v: v > 0),
    ("multistep", "milestones"): ("a list of epochs (integers >= 1)",
                                  lambda v: isinstance(v, list) and v and all(type(m) is int and m >= 1 for m in v)),
    ("multistep", "gamma"): _number("a number > 0", lambda v: v > 0),
    ("exponential", "gamma"): _number("a number > 0", lambda v: v > 0),
    ("cosine", "min_lr"): _number("a number >= 0", lambda v: v >= 0),
    ("onecycle", "max_lr"): _number("a number > 0", lambda v: v > 0),
    ("plateau", "factor"): _number("a number in (0, 1)", lambda v: 0 < v < 1),
    ("plateau", "patience"): _integer(0),
    ("warmup", "epochs"): _integer(1),
    ("warmup", "then"): ("a schedule other than warmup, e.g. then=cosine()",
                         lambda v: v is None or isinstance(v, dict) and v.get("name") in set(SCHEDULES) - {"warmup"}),
}


def invalid(name: str, key: str, value) -> str | None:
    """What argument `key` of schedule `name` must be, in words, if `value` is not that; else None."""
    words, ok = VALID[name, key]
    return None if ok(value) else words


def past_the_end(spec: dict, epochs: int) -> str | None:
    """What in `spec` lies past a run of `epochs` epochs (a milestone, a warmup), in words; else None."""
    if spec["name"] == "multistep" and max(spec["milestones"]) >= epochs:  # it acts from epoch m + 1
        return (f"multistep: milestone {max(spec['milestones'])} is past the last epoch ({epochs}); "
                f"the rate would never change there")
    if spec["name"] == "warmup":
        if spec["epochs"] > epochs:
            return f"warmup: {spec['epochs']} epochs of warmup are more than the run's {epochs}"
        inner = spec["then"] and past_the_end(spec["then"], epochs - spec["epochs"])
        return inner and f"{inner} (then= counts its epochs from the end of the warmup)"
    return None


class Schedule:
    """The rates of one run: `epochs` epochs of `batches` train_step calls each, an optimizer
    step every `accumulate` calls, from the optimizer's `lr`; no schedule (None) keeps `lr`."""

    def __init__(self, spec: dict | None, lr: float, epochs: int, batches: int, accumulate: int = 1,
                 steps: int | None = None):
        self.spec, self.lr, self.epochs = spec, float(lr), epochs
        self.batches, self.accumulate = batches, accumulate
        # the optimizer steps of the run (given for a warmup's successor: what the warmup left)
        self.steps = max(1, epochs * batches // accumulate) if steps is None else steps

    def rate(self, epoch: int, batch: int, losses: list[float]) -> float:
        """The rate for call `batch` (from 0) of epoch `epoch` (from 1), given the loss measured
        after each epoch before it (`losses`; only `plateau` reads them)."""
        step = min(((epoch - 1) * self.batches + batch) // self.accumulate, self.steps - 1)
        return self._rate(epoch, step, losses)

    def _rate(self, epoch: int, step: int, losses: list[float]) -> float:
        """The rate at epoch `epoch` (from 1) and optimizer step `step` (from 0)."""
        spec = self.spec
        if spec is None:
            return self.lr
        name = spec["name"]
        if name == "onecycle":
            return _onecycle(spec["max_lr"], self.steps, step)
        if name == "plateau":
            return _plateau(spec, self.lr, losses[:epoch - 1])
        if name == "warmup":
            warm = max(1, spec["epochs"] * self.batches // self.accumulate)  # its optimizer steps
            if step < warm:
                return self.lr * (step + 1) / warm
            then = Schedule(spec["then"], self.lr, self.epochs - spec["epochs"], self.batches, self.accumulate,
                            max(1, self.steps - warm))
            return then._rate(epoch - spec["epochs"], step - warm, losses[spec["epochs"]:])
        rate, milestones = self.lr, Counter(spec.get("milestones", []))
        for t in range(1, epoch):  # scheduler.step() number t, as PyTorch's get_lr() computes it
            if name == "step":
                rate = rate * spec["gamma"] if t % spec["every"] == 0 else rate
            elif name == "multistep":
                rate = rate * spec["gamma"] ** milestones[t] if t in milestones else rate
            elif name == "exponential":
                rate = rate * spec["gamma"]
            elif name == "cosine":
                rate = _cosine_step(rate, self.lr, spec["min_lr"], self.epochs, t)
        return rate


def _cosine_step(rate: float, base: float, eta_min: float, t_max: int, t: int) -> float:
    """CosineAnnealingLR's recursive get_lr() at last_epoch = t."""
    if (t - 1 - t_max) % (2 * t_max) == 0:
        return rate + (base - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
    return ((1 + math.cos(math.pi * t / t_max)) / (1 + math.cos(math.pi * (t - 1) / t_max))
            * (rate - eta_min) + eta_min)


def _plateau(spec: dict, lr: float, losses: list[float]) -> float:
    """ReduceLROnPlateau (mode min, threshold 1e-4 relative, no cooldown, min_lr 0, eps 1e-8)
    stepped with each loss in turn."""
    best, bad, rate = math.inf, 0, lr
    for loss in losses:
        if loss < best * (1 - 1e-4):
            best, bad = loss, 0
        else:
            bad += 1
        if bad > spec["patience"]:
            new = max(rate * spec["factor"], 0.0)
            rate = new if rate - new > 1e-8 else rate
            bad = 0
    return rate


def _onecycle(max_lr: float, total: int, step: int) -> float:
    """OneCycleLR's get_lr() at step `step` of `total`: two phases, cosine annealing from
    max_lr / 25 up to max_lr over 30% of the steps, then down to max_lr / 25 / 1e4."""
    initial, end = max_lr / 25, float(0.3 * total) - 1
    if step <= end:
        start, stop, pct = initial, max_lr, step / end
    else:
        start, stop, pct = max_lr, initial / 1e4, (step - end) / (total - 1 - end)
    return stop + (start - stop) / 2.0 * (math.cos(math.pi * pct) + 1)
