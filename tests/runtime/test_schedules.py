"""Learning-rate schedules (`schedule = ...` in a train block) against torch.optim.lr_scheduler:
`odc.schedules.Schedule.rate` for every call of every epoch equals the `lr` a real scheduler
puts into a real torch.optim.SGD's param_groups[0], stepped as the usual loop steps it (per
epoch, with the loss for plateau, per optimizer step for onecycle and warmup, with gradient
accumulation too); short real runs log the same rates in metrics.jsonl and train with them;
and the front end reports each bad schedule at its place."""
import math
import warnings

import numpy as np
import pytest

import odc
from odc.cli import main
from odc.ir import interp
from odc.runtime.train import compile_and_train
from odc.schedules import Schedule
from odc.frontend import parse_source
from tests.diagnostics import single, where
from tests.runtime.files import idx_bytes, metrics

PER_STEP = ("onecycle", "warmup")

# the defaults the docstring and docs/dsl.md give, written out here (not read from odc)
DEFAULTS = {"step": {"gamma": 0.1}, "multistep": {"gamma": 0.1}, "exponential": {}, "cosine": {"min_lr": 0.0},
            "onecycle": {}, "plateau": {"factor": 0.1, "patience": 10}, "warmup": {"then": None}}


def spec(name, **args):
    """A schedule dict as the front end makes it: every argument present."""
    return {"name": name, **DEFAULTS[name], **args}


# ---------------------------------------------------------------------------- the torch side

def _scheduler(torch, opt, s, epochs, steps):
    """The torch.optim.lr_scheduler object of schedule `s` for a run of `epochs` epochs and
    `steps` optimizer steps, on `opt`."""
    S = torch.optim.lr_scheduler
    name = s["name"]
    if name == "step":
        return S.StepLR(opt, step_size=s["every"], gamma=s["gamma"])
    if name == "multistep":
        return S.MultiStepLR(opt, milestones=s["milestones"], gamma=s["gamma"])
    if name == "exponential":
        return S.ExponentialLR(opt, gamma=s["gamma"])
    if name == "cosine":
        return S.CosineAnnealingLR(opt, T_max=epochs, eta_min=s["min_lr"])
    if name == "plateau":
        return S.ReduceLROnPlateau(opt, mode="min", factor=s["factor"], patience=s["patience"], threshold=1e-4,
                                   threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8)
    if name == "onecycle":
        return S.OneCycleLR(opt, max_lr=s["max_lr"], total_steps=steps, cycle_momentum=False)
    raise AssertionError(name)


class _Plain:
    """One scheduler on one SGD: per epoch (plateau with the epoch's loss) or per optimizer step."""

    def __init__(self, torch, s, lr, epochs, steps):
        self.opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        self.sched = _scheduler(torch, self.opt, s, epochs, steps)
        self.name = s["name"]

    def lr(self):
        return self.opt.param_groups[0]["lr"]

    def after_step(self, t):  # optimizer step t (from 0) was taken
        self.opt.step()
        if self.name in PER_STEP:
            self.sched.step()

    def after_epoch(self, e, loss):  # epoch e (from 1) ended, and measured `loss`
        if self.name == "plateau":
            self.sched.step(loss)
        elif self.name not in PER_STEP:
            self.sched.step()


class _SequentialWarmup:
    """warmup(W0 epochs, then=...) as SequentialLR([LinearLR(1/W, 1, W - 1), then], milestones=[W]),
    stepped per optimizer step over the W steps of the warmup (the W-th hands over to `then`),
    then, for a per-epoch `then`, once per epoch from the second epoch after the warmup on. No
    `then` is the constant rate: LambdaLR(lambda _: 1.0)."""

    def __init__(self, torch, s, lr, epochs, warm, warm_epochs):
        S = torch.optim.lr_scheduler
        self.opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        linear = S.LinearLR(self.opt, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1)
        then = (S.LambdaLR(self.opt, lambda _: 1.0) if s["then"] is None else
                _scheduler(torch, self.opt, s["then"], epochs - warm_epochs, None))
        self.seq = S.SequentialLR(self.opt, [linear, then], milestones=[warm])
        self.warm, self.warm_epochs = warm, warm_epochs

    def lr(self):
        return self.opt.param_groups[0]["lr"]

    def after_step(self, t):
        self.opt.step()
        if t < self.warm:
            self.seq.step()

    def after_epoch(self, e, loss):
        if e > self.warm_epochs:
            self.seq.step()


class _HandedOverWarmup:
    """warmup(W0 epochs, then=plateau(...) or onecycle(...)): LinearLR(1/W, 1, W - 1) on one SGD
    over the first W optimizer steps, then the `then` scheduler on a fresh SGD with the same lr,
    made for what is left of the run (its epochs and optimizer steps) and stepped as if that run
    started after the warmup. SequentialLR cannot express these two: it refuses ReduceLROnPlateau,
    and OneCycleLR's constructor rewrites the optimizer's `initial_lr` (to max_lr / 25), which
    SequentialLR then restores before the warmup, so its warmup would rise to max_lr / 25, not to
    the optimizer's lr as odc's docstring defines it."""

    def __init__(self, torch, s, lr, epochs, steps, warm, warm_epochs):
        S = torch.optim.lr_scheduler
        self.first = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        self.linear = S.LinearLR(self.first, start_factor=1 / warm, end_factor=1.0, total_iters=warm - 1)
        self.then = _Plain(torch, s["then"], lr, epochs - warm_epochs, max(1, steps - warm))
        self.warm, self.warm_epochs, self.steps_taken = warm, warm_epochs, 0

    def lr(self):
        return self.first.param_groups[0]["lr"] if self.steps_taken < self.warm else self.then.lr()

    def after_step(self, t):
        self.steps_taken = t + 1
        if t < self.warm:
            self.first.step()
            self.linear.step()
        else:
            self.then.after_step(t - self.warm)

    def after_epoch(self, e, loss):
        if e > self.warm_epochs:
            self.then.after_epoch(e - self.warm_epochs, loss)


def torch_rates(torch, s, lr, epochs, batches, k, losses):
    """{(epoch from 1, call from 0): lr} of the usual loop: an optimizer step every k-th call
    (counted across epochs, as the compiled step's accumulation counter is), the scheduler
    stepped after it (per-step schedules) or after each epoch (the others). Only the calls that
    belong to an optimizer step are recorded: what is left over after the last one changes
    nothing."""
    steps = max(1, epochs * batches // k)
    if s is not None and s["name"] == "warmup":
        warm = max(1, s["epochs"] * batches // k)
        assert warm * k <= s["epochs"] * batches, "the warmup ends within its epochs in these cases"
        if s["then"] is not None and s["then"]["name"] in ("plateau", "onecycle"):
            run = _HandedOverWarmup(torch, s, lr, epochs, steps, warm, s["epochs"])
        else:
            run = _SequentialWarmup(torch, s, lr, epochs, warm, s["epochs"])
    else:
        run = _Plain(torch, s, lr, epochs, steps)
    rates, call, taken = {}, 0, 0
    with warnings.catch_warnings():
        # with accumulate > calls per epoch, an epoch can end before the first optimizer step
        warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before", UserWarning)
        for e in range(1, epochs + 1):
            for i in range(batches):
                if call // k < steps:
                    rates[e, i] = run.lr()
                if (call + 1) % k == 0 and taken < steps:
                    run.after_step(taken)
                    taken += 1
                call += 1
            if e < epochs:
                run.after_epoch(e, losses[e - 1])
    return rates


def odc_rates(s, lr, epochs, batches, k, losses, keys):
    """Schedule.rate for each (epoch, call), given the losses of the epochs before, as fit does."""
    schedule = Schedule(s, lr, epochs, batches, k)
    return {(e, i): schedule.rate(e, i, losses[:e - 1]) for e, i in keys}


def rel(a, b):
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------------------- the cases

# runs: (epochs, train_step calls per epoch, accumulate); 7 % 3 and 5 % 2 leave calls over
RUNS = [(5, 4, 1), (6, 7, 3), (4, 5, 2), (3, 1, 1), (7, 3, 5)]
LOSSES = [  # a loss per epoch: plateaus, improvements, rises, and improvements within the 1e-4 threshold
    [1.0, 0.9, 0.9, 0.9, 0.95, 0.8, 0.80001, 0.8, 0.7, 0.7, 0.70005, 0.69999, 0.5, 0.5, 0.5, 0.5],
    [2.0, 1.9998, 1.99961, 1.9994, 1.99941, 1.5, 1.6, 1.7, 1.4999, 1.49989, 1.3, 1.3, 1.3, 1.2, 1.3, 1.3],
]

PER_EPOCH_CASES = [
    spec("step", every=1), spec("step", every=2, gamma=0.5), spec("step", every=3, gamma=0.7),
    spec("step", every=2, gamma=1.3),
    spec("multistep", milestones=[2, 4]), spec("multistep", milestones=[1, 3, 3], gamma=0.5),
    spec("multistep", milestones=[3], gamma=0.3),
    spec("exponential", gamma=0.9), spec("exponential", gamma=0.5), spec("exponential", gamma=0.99),
    spec("cosine"), spec("cosine", min_lr=0.001), spec("cosine", min_lr=0.05), spec("cosine", min_lr=0.3),
    spec("plateau"), spec("plateau", factor=0.5, patience=0), spec("plateau", factor=0.1, patience=1),
    spec("plateau", factor=0.3, patience=2),
]
PER_STEP_CASES = [
    spec("onecycle", max_lr=0.5), spec("onecycle", max_lr=1.0), spec("onecycle", max_lr=0.01),
    spec("warmup", epochs=1), spec("warmup", epochs=2),
    spec("warmup", epochs=1, then=spec("step", every=2, gamma=0.5)),
    spec("warmup", epochs=2, then=spec("multistep", milestones=[1, 2], gamma=0.5)),
    spec("warmup", epochs=1, then=spec("exponential", gamma=0.8)),
    spec("warmup", epochs=1, then=spec("cosine", min_lr=0.01)),
    spec("warmup", epochs=2, then=spec("cosine")),
    spec("warmup", epochs=1, then=spec("plateau", factor=0.5, patience=0)),
    spec("warmup", epochs=2, then=spec("plateau", factor=0.2, patience=1)),
    spec("warmup", epochs=1, then=spec("onecycle", max_lr=0.4)),
    spec("warmup", epochs=2, then=spec("onecycle", max_lr=1.5)),
]


def case_id(s):
    args = ",".join(f"{k}={case_id(v) if isinstance(v, dict) else v}" for k, v in s.items() if k != "name")
    return f"{s['name']}({args})"


def fits(s, epochs):
    """Whether schedule `s` is one the front end accepts for a run of `epochs` epochs."""
    if s["name"] == "multistep":
        return max(s["milestones"]) <= epochs
    if s["name"] == "warmup" and s["then"] is not None:
        return s["epochs"] < epochs and fits(s["then"], epochs - s["epochs"])
    if s["name"] == "warmup":
        return s["epochs"] <= epochs
    return True


def compare(torch, s, lr, run, losses):
    """torch's and odc's rates, {(epoch, call): lr}, of the calls of one run (epochs, calls per
    epoch, accumulate) that belong to an optimizer step."""
    epochs, batches, k = run
    want = torch_rates(torch, s, lr, epochs, batches, k, losses)
    got = odc_rates(s, lr, epochs, batches, k, losses, want)
    return want, got


@pytest.mark.parametrize("s", PER_EPOCH_CASES, ids=case_id)
def test_per_epoch_schedules_equal_torch_to_the_last_bit(torch, s):
    """Every call of every epoch, for several runs, base rates and loss sequences: exactly
    torch's lr (the module claims the last bit)."""
    checked = 0
    for run in RUNS + [(12, 2, 1), (16, 3, 2)]:
        if not fits(s, run[0]):
            continue
        for lr in (0.1, 0.037, 1e-6):
            for losses in LOSSES if s["name"] == "plateau" else LOSSES[:1]:
                want, got = compare(torch, s, lr, run, losses)
                bad = [(key, got[key], want[key]) for key in want if got[key] != want[key]]
                assert not bad, f"{case_id(s)} lr={lr} run={run} losses={losses}: (epoch, call), odc, torch: {bad}"
                checked += len(want)
    assert checked > 0


def test_plateau_reduces_and_ignores_an_improvement_within_the_threshold(torch):
    """The loss sequences do make torch reduce the rate, and an improvement by less than 1e-4
    relative (0.9 → 0.89995) counts as none: with patience 0 it reduces the rate there, where a
    real improvement (0.9 → 0.8999) does not."""
    s = spec("plateau", factor=0.5, patience=0)
    for losses, changed in (([1.0, 0.9, 0.89995, 0.89995], True), ([1.0, 0.9, 0.8999, 0.8999], False)):
        want, got = compare(torch, s, 0.1, (4, 1, 1), losses)
        assert got == want
        assert (want[4, 0] < want[3, 0]) is changed  # after the third loss
    want, _ = compare(torch, spec("plateau", factor=0.5, patience=1), 0.1, (16, 1, 1), LOSSES[0])
    assert len(set(want.values())) >= 3


def test_plateau_stops_reducing_below_eps(torch):
    """A rate that would change by no more than eps = 1e-8 stays (ReduceLROnPlateau's eps)."""
    s = spec("plateau", factor=0.1, patience=0)
    losses = [1.0] * 8
    want, got = compare(torch, s, 1e-6, (8, 1, 1), losses)
    assert got == want
    assert want[8, 0] == want[7, 0] and want[3, 0] < want[2, 0]  # torch itself stopped


@pytest.mark.parametrize("s", PER_STEP_CASES, ids=case_id)
def test_per_step_schedules_equal_torch(torch, s):
    """Every call of every epoch (accumulate > 1 included, and epochs whose calls are not a
    multiple of it). Exactly torch's lr, except during a warmup: odc computes lr * (t + 1) / W
    directly where torch's LinearLR multiplies its way there, so those differ by an ulp or two
    (to 1e-12 relative here)."""
    checked = 0
    for run in RUNS + [(10, 3, 2), (5, 13, 4)]:
        epochs, batches, k = run
        if not fits(s, epochs) or s["name"] == "warmup" and s["epochs"] * batches < k:
            continue
        warm = s["epochs"] * batches // k if s["name"] == "warmup" else 0  # the warmup's optimizer steps
        for lr in (0.1, 0.037):
            for losses in LOSSES if "plateau" in case_id(s) else LOSSES[:1]:
                want, got = compare(torch, s, lr, run, losses)
                bad = [(key, got[key], want[key]) for key in want
                       if not (rel(got[key], want[key]) <= 1e-12 if ((key[0] - 1) * batches + key[1]) // k < warm
                               else got[key] == want[key])]
                assert not bad, f"{case_id(s)} lr={lr} run={run}: (epoch, call), odc, torch: {bad}"
                checked += len(want)
    assert checked > 0


def test_warmup_rises_linearly_to_the_optimizer_lr(torch):
    """The docstring's definition, as an independent closed form: step t of the W warmup steps
    (W = 2 epochs * 7 calls // 3) has the rate lr * (t + 1) / W, whatever max_lr a following
    onecycle has; odc computes it so to the last bit, torch's recursive LinearLR to 1e-12."""
    epochs, batches, k, lr = 6, 7, 3, 0.1
    warm = 2 * batches // k
    for s in (spec("warmup", epochs=2), spec("warmup", epochs=2, then=spec("onecycle", max_lr=1.5))):
        want, got = compare(torch, s, lr, (epochs, batches, k), LOSSES[0])
        for call in range(warm * k):
            key, t = (call // batches + 1, call % batches), call // k
            assert got[key] == lr * (t + 1) / warm
            assert rel(want[key], lr * (t + 1) / warm) <= 1e-12
        e, i = divmod(warm * k, batches)  # the first call after the warmup
        first = lr if s["then"] is None else s["then"]["max_lr"] / 25  # the constant lr, or onecycle's start
        assert got[e + 1, i] == pytest.approx(first, rel=1e-12) and want[e + 1, i] == pytest.approx(first, rel=1e-12)


def test_onecycle_spans_the_optimizer_steps_of_the_run(torch):
    """total_steps is epochs * calls // accumulate: the first rate is max_lr / 25, the top max_lr
    is reached at step 0.3 * total - 1, and the last step's rate is torch's final one."""
    epochs, batches, k, max_lr = 4, 5, 2, 0.8
    total = epochs * batches // k
    s = spec("onecycle", max_lr=max_lr)
    want, got = compare(torch, s, 0.1, (epochs, batches, k), LOSSES[0])
    assert got == want
    assert got[1, 0] == pytest.approx(max_lr / 25, rel=1e-12)
    top = (int(0.3 * total) - 1) * k  # the first call of step 0.3 * total - 1 = 2
    assert got[top // batches + 1, top % batches] == max_lr
    last = (total * k - 1) // batches + 1, (total * k - 1) % batches
    assert got[last] == want[last] and got[last] < max_lr / 25 / 1e4 * 1.01


# ---------------------------------------------------------------------------- the front end

def test_front_end_fills_in_the_defaults():
    for text, expected in (
            ("step(3)", spec("step", every=3)),
            ("step(every=2, gamma=0.5)", spec("step", every=2, gamma=0.5)),
            ("multistep([2, 3])", spec("multistep", milestones=[2, 3])),
            ("exponential(1)", spec("exponential", gamma=1.0)),
            ("cosine", spec("cosine")),
            ("cosine(min_lr=0.01)", spec("cosine", min_lr=0.01)),
            ("onecycle(2)", spec("onecycle", max_lr=2.0)),
            ("plateau(patience=3)", spec("plateau", patience=3)),
            ("warmup(2)", spec("warmup", epochs=2)),
            ("warmup(2, then=step(1, gamma=0.5))", spec("warmup", epochs=2, then=spec("step", every=1, gamma=0.5))),
            ("warmup(1, then=cosine)", spec("warmup", epochs=1, then=spec("cosine")))):
        r = parse_source(DIAG.format(epochs=5, schedule=text), "t.od").recipes["M"]
        assert r.schedule == expected, text
        assert r.as_dict()["schedule"] == expected


DIAG = """\
model M():
    input image: f32[N, 1, 28, 28]
    return dense(flatten(image), 10)

train M:
    data = mnist()
    epochs = {epochs}
    schedule = {schedule}
"""


@pytest.mark.parametrize("text, needle, message", [
    # wrong kind
    ("step(1.5)", "1.5", "step: every must be an integer >= 1, got 1.5"),
    ("step(every=true)", "true", "step: every must be an integer >= 1, got true"),
    ('step(2, gamma="a")', '"a"', 'step: gamma must be a number > 0, got "a"'),
    ("exponential(gamma=true)", "true", "exponential: gamma must be a number > 0, got true"),
    ("multistep(3)", "3", "multistep: milestones must be a list of epochs (integers >= 1), got 3"),
    ("multistep([2, 2.5])", "[", "multistep: milestones must be a list of epochs (integers >= 1), got [2, 2.5]"),
    ("plateau(patience=1.0)", "1.0", "plateau: patience must be an integer >= 0, got 1.0"),
    # out of range
    ("step(0)", "0", "step: every must be an integer >= 1, got 0"),
    ("step(2, gamma=0)", "0)", "step: gamma must be a number > 0, got 0"),
    ("multistep([0, 2])", "[", "multistep: milestones must be a list of epochs (integers >= 1), got [0, 2]"),
    ("multistep([])", "[", "multistep: milestones must be a list of epochs (integers >= 1), got []"),
    ("multistep([2], gamma=-0.5)", "-0.5", "multistep: gamma must be a number > 0, got -0.5"),
    ("exponential(-1)", "-1", "exponential: gamma must be a number > 0, got -1"),
    ("cosine(min_lr=-1)", "-1", "cosine: min_lr must be a number >= 0, got -1"),
    ("onecycle(max_lr=0)", "0)", "onecycle: max_lr must be a number > 0, got 0"),
    ("plateau(factor=1)", "1)", "plateau: factor must be a number in (0, 1), got 1"),
    ("plateau(factor=0)", "0)", "plateau: factor must be a number in (0, 1), got 0"),
    ("plateau(patience=-1)", "-1", "plateau: patience must be an integer >= 0, got -1"),
    ("warmup(0)", "0", "warmup: epochs must be an integer >= 1, got 0"),
    # unknown names, missing and unknown arguments
    ("cosin()", "cosin", "unknown schedule 'cosin'"),
    ("linear(2)", "linear", "unknown schedule 'linear'"),
    ("3", "3", "expected a schedule"),
    ("step()", "step", "step is missing argument 'every'"),
    ("onecycle()", "onecycle", "onecycle is missing argument 'max_lr'"),
    ("step(2, gama=0.5)", "gama", "step has no argument 'gama'"),
    # then=
    ("warmup(1, then=3)", "3", "warmup: then must be a schedule, e.g. then=cosine()"),
    ('warmup(1, then="cosine")', '"cosine"', "warmup: then must be a schedule, e.g. then=cosine()"),
    ("warmup(1, then=warmup(1))", "warmup(1))",
     "warmup: then must be a schedule other than warmup, e.g. then=cosine(), got warmup"),
    ("warmup(1, then=cosine(min_lr=-1))", "-1", "cosine: min_lr must be a number >= 0, got -1"),
    ("warmup(1, then=cosin())", "cosin", "unknown schedule 'cosin'"),
])
def test_bad_schedule_arguments_are_reported_at_their_place(text, needle, message):
    src = DIAG.format(epochs=5, schedule=text)
    d = single(src)
    assert d.message == message
    at = src.index(needle, src.index("schedule =") + len("schedule = "))
    assert (d.span.line, d.span.col) == (src.count("\n", 0, at) + 1, at - src.rfind("\n", 0, at))


def test_unknown_schedule_suggests_the_near_name_or_lists_them_all():
    assert "cosine" in single(DIAG.format(epochs=5, schedule="cosin()")).hint
    hint = single(DIAG.format(epochs=5, schedule="linear(2)")).hint
    assert all(name in hint for name in DEFAULTS)


@pytest.mark.parametrize("epochs, text, message", [
    (5, "multistep([2, 9])", "multistep: milestone 9 is past the last epoch (5); the rate would never change there"),
    (5, "warmup(6)", "warmup: 6 epochs of warmup are more than the run's 5"),
    (5, "warmup(2, then=multistep([4]))", "multistep: milestone 4 is past the last epoch (3); the rate would never "
                                          "change there (then= counts its epochs from the end of the warmup)"),
    (None, "multistep([2])", "multistep: milestone 2 is past the last epoch (1); the rate would never change there"),
    (None, "warmup(2)", "warmup: 2 epochs of warmup are more than the run's 1"),
])
def test_a_schedule_past_the_end_of_the_run_is_reported_at_the_schedule(epochs, text, message):
    src = DIAG.format(epochs=epochs, schedule=text)
    if epochs is None:  # the default: one epoch
        src = src.replace("    epochs = None\n", "")
    d = single(src)
    line = src.splitlines().index(f"    schedule = {text}") + 1
    assert d.message == message
    assert (d.span.line, d.span.col) == where(src, line, "schedule")
    assert d.hint == (f"epochs = {epochs}" if epochs else "epochs = 1 (the default)")


def test_schedules_that_fit_the_run_are_accepted():
    for text in ("multistep([4])", "warmup(5)", "warmup(2, then=multistep([2]))", "warmup(4, then=cosine())",
                 "step(9)"):
        assert parse_source(DIAG.format(epochs=5, schedule=text), "t.od").recipes["M"].schedule


def test_a_milestone_at_the_last_epoch_never_changes_the_rate_and_is_reported(torch):
    epochs = 5
    for text, s in (("multistep([5])", spec("multistep", milestones=[5])),
                    ("multistep([2, 5], gamma=0.5)", spec("multistep", milestones=[2, 5], gamma=0.5))):
        rates = torch_rates(torch, s, 0.1, epochs, 1, 1, LOSSES[0])
        assert rates[epochs, 0] == rates[epochs - 1, 0]  # torch: milestone 5 changes no epoch's rate
        d = single(DIAG.format(epochs=epochs, schedule=text))
        assert "milestone 5 is past the last epoch (5)" in d.message


# ---------------------------------------------------------------------------- real runs



TRAIN_IMAGES, TEST_IMAGES = 32, 12


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """An MNIST-style idx folder of 32 train and 12 test random 6x6 images of 3 classes."""
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for part, n in (("train", TRAIN_IMAGES), ("t10k", TEST_IMAGES)):
        (folder / f"{part}-images-idx3-ubyte").write_bytes(idx_bytes(rng.integers(0, 256, (n, 6, 6))))
        (folder / f"{part}-labels-idx1-ubyte").write_bytes(idx_bytes(rng.integers(0, 3, n)))
    return folder


SMALL = """\
model Small():
    input image: f32[N, 1, 6, 6]
    x = tanh(dense(flatten(image), 8))
    return dense(x, 3)

train Small:
    data = idx("{data}")
    optimizer = sgd(lr={lr})
    schedule = {schedule}
    epochs = {epochs}
    batch = {batch}
    accumulate = {accumulate}
"""



@pytest.mark.parametrize("text, s, lr, epochs, batch, k", [
    ("step(every=1, gamma=0.5)", spec("step", every=1, gamma=0.5), 0.2, 3, 4, 1),
    ("cosine(min_lr=0.01)", spec("cosine", min_lr=0.01), 0.3, 3, 8, 1),
    ("plateau(factor=0.5, patience=0)", spec("plateau", factor=0.5, patience=0), 2.0, 4, 4, 1),
    ("onecycle(max_lr=0.4)", spec("onecycle", max_lr=0.4), 0.1, 3, 4, 3),
    ("warmup(1, then=exponential(0.5))", spec("warmup", epochs=1, then=spec("exponential", gamma=0.5)), 0.2, 3, 4, 3),
    ("warmup(1, then=onecycle(max_lr=0.6))", spec("warmup", epochs=1, then=spec("onecycle", max_lr=0.6)),
     0.1, 3, 4, 3),
], ids=lambda v: v if isinstance(v, str) else None)
def test_metrics_lr_of_a_run_equals_torch(torch, data_dir, tmp_path, text, s, lr, epochs, batch, k):
    """A real run: the lr each epoch started with (metrics.jsonl) is torch's for the same
    settings; plateau's torch scheduler is fed the test losses the run measured."""
    path = tmp_path / "small.od"
    path.write_text(SMALL.format(data=data_dir, lr=lr, schedule=text, epochs=epochs, batch=batch,
                                 accumulate=k))
    run = compile_and_train(path, out=tmp_path / "run", log=lambda line: None)
    recs = metrics(run)
    assert [r["epoch"] for r in recs] == list(range(1, epochs + 1))
    batches = math.ceil(TRAIN_IMAGES / batch)
    want = torch_rates(torch, s, lr, epochs, batches, k, [r["test_loss"] for r in recs])
    got = [r["lr"] for r in recs]
    if s["name"] in PER_STEP:
        assert got == pytest.approx([want[e, 0] for e in range(1, epochs + 1)], rel=1e-12, abs=0)
    else:
        assert got == [want[e, 0] for e in range(1, epochs + 1)]
    assert len(set(got)) > 1  # the schedule did change the rate
    if s["name"] == "plateau":
        assert min(got) < lr  # the run's losses made torch reduce it


def test_cli_flags_reach_the_schedule(torch, data_dir, tmp_path):
    """--epochs, --accumulate and --lr of `odc compile-and-train` override the train block
    before the schedule is made: the warmup's steps, the rate it rises to and cosine's T_max
    follow them."""
    path = tmp_path / "small.od"
    s = spec("warmup", epochs=1, then=spec("cosine", min_lr=0.02))
    path.write_text(SMALL.format(data=data_dir, lr=0.1, schedule="warmup(1, then=cosine(min_lr=0.02))", epochs=2,
                                 batch=4, accumulate=1))
    argv = ["compile-and-train", path, "--out", tmp_path / "run", "--epochs", 3, "--accumulate", 3, "--lr", 0.25]
    assert main([str(a) for a in argv]) == 0
    want = torch_rates(torch, s, 0.25, 3, math.ceil(TRAIN_IMAGES / 4), 3, [0.0] * 3)
    got = [r["lr"] for r in metrics(tmp_path / "run")]
    assert got == pytest.approx([want[e, 0] for e in range(1, 4)], rel=1e-12, abs=0)
    assert len(got) == 3 and got[1] == 0.25  # --epochs, and the warmup rose to --lr
    unaccumulated = torch_rates(torch, s, 0.25, 3, math.ceil(TRAIN_IMAGES / 4), 1, [0.0] * 3)
    assert rel(got[0], unaccumulated[1, 0]) > 0.5  # the warmup's steps follow --accumulate


@pytest.mark.parametrize("executor", ["compiled", "interpreter"])
def test_the_rate_set_before_a_step_is_the_rate_of_its_update(data_dir, tmp_path, executor):
    """sgd without momentum: after `model.lr = r`, one train_step changes each parameter by
    -r * its gradient (model.loss_and_grads on the same batch), not by the recipe's lr; with
    accumulate = 2 the update at the second call uses the rate set for that call."""
    path = tmp_path / "small.od"
    kind = None if executor == "compiled" else interp.compile_graph
    rng = np.random.default_rng(5)
    x, y = rng.random((4, 1, 6, 6), dtype=np.float32), rng.integers(0, 3, 4)
    x2, y2 = rng.random((4, 1, 6, 6), dtype=np.float32), rng.integers(0, 3, 4)

    def change_error(before, after, grads, r):
        return max(float(np.abs((before[k] - after[k]) - r * grads[k]).max() / np.abs(r * grads[k]).max())
                   for k in before)

    path.write_text(SMALL.format(data=data_dir, lr=0.5, schedule="cosine", epochs=2, batch=4,
                                 accumulate=1))
    model = odc.load(path).compile(executor=kind, seed=1)
    for r in (0.0371, 1.7, 0.25):  # large enough for float32 parameters to show r * grad to 1e-5
        _, grads = model.loss_and_grads(x, y)
        before = {k: v.copy() for k, v in model.params.items()}
        model.lr = r
        model.train_step(x, y)
        assert change_error(before, model.params, grads, r) <= 1e-5
        assert change_error(before, model.params, grads, 0.5) > 1e-2  # not the recipe's lr

    path.write_text(SMALL.format(data=data_dir, lr=0.5, schedule="cosine", epochs=2, batch=4,
                                 accumulate=2))
    model = odc.load(path).compile(executor=kind, seed=1)
    _, g1 = model.loss_and_grads(x, y)
    _, g2 = model.loss_and_grads(x2, y2)
    before = {k: v.copy() for k, v in model.params.items()}
    model.lr = 0.9
    model.train_step(x, y)
    assert all(np.array_equal(before[k], model.params[k]) for k in before)  # no update at the first call
    model.lr = 0.0625
    model.train_step(x2, y2)
    mean = {k: (g1[k] + g2[k]) / 2 for k in g1}
    assert change_error(before, model.params, mean, 0.0625) <= 1e-5
