"""`odc gradcheck`: a model's autodiff gradients against central finite differences.

Everything runs in float64 in the reference interpreter, on a small random batch (normal
images, uniform labels, fixed dropout masks) and parameters drawn as `compile()` draws them.
For each parameter, `samples` of its elements (all of them if it has fewer) are perturbed by
±h (h = `H`) and the loss's central difference is compared with the gradient element; the
error of an element is |grad - fd| / max(|grad|, |fd|, floor), with floor = `FLOOR` H / h (it
keeps the rounding noise of the differences, about 1e-9 at h = H and growing as 1/h, from
counting on elements with tiny gradients), and a parameter's error is the worst of its
elements'.

A ReLU, max-pool or other kink within ±h of a sample point makes the central difference
meaningless there (it averages two slopes), and a correct gradient would fail. So the loss is
also taken at the point itself: where the one-sided differences (L(x+h) - L(x)) / h and
(L(x) - L(x-h)) / h disagree by more than `KINK` of the larger (or of the floor; on a smooth
loss they differ by about h times the curvature, far less), the point is near a kink. It is
taken again with h = H / 10, which clears a kink between H / 10 and H away; a point still near
a kink then (a tie in a max-pool window, a ReLU input at exactly 0) is counted and left out.
Every other point is compared. The batch holds at most `MAX_BATCH` images: each sampled element
runs the model two to four times.
"""
from __future__ import annotations

import numpy as np

from odc.errors import OdcError
from odc.ir.passes import dce
from odc.program import Program, dropout_masks, init_param
from odc.ir import interp

H = 1e-6
STEPS = (H, H / 10)  # the second only where the first meets a kink
FLOOR = 1e-5
KINK = 1e-3
MAX_BATCH = 1024


def gradcheck(prog: Program, batch: int = 2, samples: int = 16,
              seed: int = 0) -> tuple[dict[str, float], dict[str, int]]:
    """The worst relative error of each parameter's gradient (declaration order; None when
    every sample point was near a kink), and how many of its points were left out so."""
    if not 1 <= batch <= MAX_BATCH:
        raise OdcError(f"gradcheck: the batch size must be between 1 and {MAX_BATCH}, got {batch}")
    rng = np.random.default_rng(seed)
    g = prog.lower("grads")
    loss_only = g.copy()
    loss_only.outputs = [("loss", g.output("loss"))]
    loss_only = dce.run(loss_only)
    sizes = {d: batch for a in g.inputs() for d in a.type.shape if isinstance(d, str)}
    feeds = dropout_masks(g, sizes, rng)
    for a in g.inputs():
        shape = a.type.substitute(sizes).shape
        if a.name == "label":
            feeds[a.name] = rng.integers(0, g.type(g.output("logits")).shape[1], shape)
        elif a.name not in feeds:
            feeds[a.name] = rng.standard_normal(shape)
    feeds.update({s.name: init_param(s, rng) for s in g.args_of("state")})  # batchnorm statistics
    params = {p.name: init_param(p, rng).astype(np.float64) for p in g.params()}
    out = interp.run(g, {**feeds, **params}, np.float64)
    here = float(interp.run(loss_only, {**feeds, **params}, np.float64)["loss"])
    errors, kinks = {}, {}
    for name, value in params.items():
        grad = out[f"grad.{name}"]
        flat = rng.permutation(value.size)[:samples]
        worst, kinks[name] = 0.0, 0
        for i in flat:
            idx = np.unravel_index(i, value.shape)
            for h in STEPS:
                losses = []
                for step in (h, -h):
                    x = value.copy()
                    x[idx] += step
                    losses.append(float(interp.run(loss_only, {**feeds, **params, name: x}, np.float64)["loss"]))
                up, down = (losses[0] - here) / h, (here - losses[1]) / h
                floor = FLOOR * H / h
                if abs(up - down) <= KINK * max(abs(up), abs(down), floor):
                    fd = (losses[0] - losses[1]) / (2 * h)
                    worst = max(worst, abs(grad[idx] - fd) / max(abs(grad[idx]), abs(fd), floor))
                    break
            else:
                kinks[name] += 1
        errors[name] = worst if kinks[name] < len(flat) else None
    return errors, kinks
