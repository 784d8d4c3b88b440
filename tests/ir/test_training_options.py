"""The training options of recipes v2 against the usual PyTorch loop: `clip_grad_norm` (as
torch.nn.utils.clip_grad_norm_), `accumulate = k` (`(loss / k).backward()` on every batch and an
optimizer step every k-th one) and the learning rate as an input of the step (changed between
steps as a schedule does, without compiling again). Six `train_step` calls from the same
parameters give the same losses and final parameters as PyTorch (1e-4 relative), on both
executors; and the options are reported at their place in the train block."""
import numpy as np
import pytest

import odc
from odc.errors import CompileError
from odc.frontend import parse_source
from odc.ir import interp
from tests.ir.test_optimizers_v2 import MODEL, rel_err, tiny, torch_params, twin

LRS = [0.05, 0.02, 0.1, 0.07, 0.01, 0.04]  # a different rate at each step

CASES = {  # train-block lines after `optimizer =`, the torch optimizer, k, max norm, rates change
    "clip-bites": ("sgd(lr=0.05, momentum=0.9)\n    clip_grad_norm = 0.05",
                   lambda t, ps: t.optim.SGD(ps, lr=0.05, momentum=0.9), 1, 0.05, False),
    "clip-loose": ("adam(lr=0.01)\n    clip_grad_norm = 100",
                   lambda t, ps: t.optim.Adam(ps, lr=0.01), 1, 100.0, False),
    "accumulate-3": ("sgd(lr=0.05, momentum=0.9, nesterov=true)\n    accumulate = 3",
                     lambda t, ps: t.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True), 3, None, False),
    "accumulate-4-adam": ("adam(lr=0.01, weight_decay=0.1)\n    accumulate = 4",  # 6 calls: one update, 2 pending
                          lambda t, ps: t.optim.Adam(ps, lr=0.01, weight_decay=0.1), 4, None, False),
    "accumulate-clip-rates": ("rmsprop(lr=0.01, momentum=0.5, centered=true)\n    accumulate = 2\n    clip_grad_norm = 0.1",
                              lambda t, ps: t.optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True), 2, 0.1, True),
    "rates-adamw": ("adamw(lr=0.01)", lambda t, ps: t.optim.AdamW(ps, lr=0.01), 1, None, True),
    "rates-adagrad": ("adagrad(lr=0.05, lr_decay=0.1)", lambda t, ps: t.optim.Adagrad(ps, lr=0.05, lr_decay=0.1),
                      1, None, True),
    "rates-sgd-dampening": ("sgd(lr=0.05, momentum=0.9, dampening=0.5, weight_decay=0.01)\n    accumulate = 2",
                            lambda t, ps: t.optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.5, weight_decay=0.01),
                            2, None, True),
}


@pytest.mark.parametrize("case", CASES)
def test_six_steps_equal_the_torch_loop(torch, tmp_path, executor, case):
    text, make, k, max_norm, rates = CASES[case]
    model = tiny(tmp_path, text, executor)
    F = torch.nn.functional
    p = torch_params(torch, model)
    opt = make(torch, list(p.values()))
    rng = np.random.default_rng(1)
    losses, expected, updates = [], [], 0
    for i in range(6):
        x, y = rng.random((4, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 4)
        if rates:
            model.lr = LRS[i]
            for group in opt.param_groups:
                group["lr"] = LRS[i]
        losses.append(model.train_step(x, y))
        loss = F.cross_entropy(twin(F, p, torch.tensor(x)), torch.tensor(y))
        (loss / k).backward()
        expected.append(loss.item())
        if (i + 1) % k == 0:
            if max_norm is not None:
                torch.nn.utils.clip_grad_norm_(list(p.values()), max_norm)
            opt.step()
            opt.zero_grad()
            updates += 1
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    assert updates == 6 // k and losses[-1] != losses[0]
    for name, v in model.params.items():
        assert rel_err(v, p[name].detach().numpy()) <= 1e-4, name
    if k > 1:  # the gradient of the calls after the last update waits in the sums
        for name, t in p.items():
            pending = t.grad.numpy() if t.grad is not None else np.zeros(t.shape, np.float32)
            assert rel_err(model.state[f"{name}.grad_sum"], pending) <= 1e-4, name
        assert model.state["accumulate.count"] == 6 % k


def test_clipping_bites_and_a_loose_bound_changes_nothing(tmp_path):
    """A test that could fail: with a small bound the update is smaller than without one."""
    steps = {}
    for name, extra in (("none", ""), ("tight", "\n    clip_grad_norm = 0.01"), ("loose", "\n    clip_grad_norm = 1e6")):
        path = tmp_path / f"{name}.od"
        path.write_text(MODEL.format(optimizer="sgd(lr=0.1)" + extra))
        model = odc.load(path).compile(executor=interp.compile_graph, seed=3)
        before = {k: v.copy() for k, v in model.params.items()}
        x, y = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32), np.arange(4)
        model.train_step(x, y)
        steps[name] = np.sqrt(sum(((model.params[k] - before[k]) ** 2).sum() for k in before))
    assert steps["tight"] == pytest.approx(0.1 * 0.01, rel=1e-3)  # lr times the clipped norm
    assert steps["loose"] == pytest.approx(steps["none"], rel=1e-6) and steps["none"] > 10 * steps["tight"]


def test_a_new_rate_needs_no_new_compilation(tmp_path):
    path = tmp_path / "tiny.od"
    path.write_text(MODEL.format(optimizer="sgd(lr=0.1)"))
    lines = []
    model = odc.load(path).compile(log=lines.append)
    x, y = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32), np.arange(4)
    for lr in (0.1, 0.01, 0.3):
        model.lr = lr
        model.train_step(x, y)
    assert sum(line.startswith("compiling") for line in lines) == 1


@pytest.mark.parametrize("line, needle, message", [
    ("clip_grad_norm = -1", "-1", "clip_grad_norm must be a number > 0, got -1"),
    ("clip_grad_norm = true", "true", "clip_grad_norm must be a number > 0, got true"),
    ("accumulate = 0", "0", "accumulate must be an integer from 1 to 1,000,000, got 0"),
    ("accumulate = 2.5", "2.5", "accumulate must be an integer from 1 to 1,000,000, got 2.5"),
    ('early_stop = early_stop(0)', "0)", "early_stop: patience must be an integer >= 1, got 0"),
    ('early_stop = early_stop(3, metric="valid_acc")', '"valid_acc"',
     'early_stop: metric must be one of "valid_loss", "valid_accuracy", "train_loss", got "valid_acc"'),
    ('early_stop = early_stop(metric="valid_loss")', "early_stop(", "early_stop is missing argument 'patience'"),
])
def test_train_block_reports_bad_options_at_their_place(line, needle, message):
    src = MODEL.format(optimizer="sgd(lr=0.1)") + f"    {line}\n"
    with pytest.raises(CompileError) as e:
        parse_source(src, "t.od")
    d = e.value.first
    at = src.index(needle, src.index(line.split(" =")[0] + " ="))
    assert (d.span.line, d.span.col, d.message) == (src.count("\n", 0, at) + 1, at - src.rfind("\n", 0, at), message)


def test_options_land_in_the_recipe():
    src = MODEL.format(optimizer="sgd(lr=0.1)") + "    clip_grad_norm = 2\n    accumulate = 4\n    early_stop = early_stop(5)\n"
    recipe = parse_source(src, "t.od").recipes["Tiny"].as_dict()
    assert (recipe["clip_grad_norm"], recipe["accumulate"], recipe["early_stop"]) == (
        2.0, 4, {"patience": 5, "metric": "valid_loss"})
    plain = parse_source(MODEL.format(optimizer="sgd(lr=0.1)"), "t.od").recipes["Tiny"].as_dict()
    assert not {"clip_grad_norm", "accumulate", "early_stop", "schedule"} & set(plain)
