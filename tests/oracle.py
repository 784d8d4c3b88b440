"""What the tests that compare odc with PyTorch share: the error measure, and the check of a
compiled model against a torch twin that holds the same parameters."""
import numpy as np


def rel_err(a, b) -> float:
    """The largest difference, relative to the largest magnitude of `b` (the reference)."""
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


def check_twin(torch, model, params: dict, forward, x, y, tol=1e-4) -> None:
    """The loss and every gradient of `model` on (x, y), and its logits, equal those of the twin
    (`forward(t)` on a float64 tensor, using the torch parameters `params`, named as odc names
    them) to `tol` relative; the twin's parameters take the model's values first."""
    assert sorted(params) == sorted(model.params)
    with torch.no_grad():
        for k, p in params.items():
            assert tuple(p.shape) == model.params[k].shape, k
            p.copy_(torch.tensor(model.params[k], dtype=torch.float64))
    value, grads = model.loss_and_grads(x, y)
    logits = forward(torch.tensor(x, dtype=torch.float64))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    loss.backward()
    assert rel_err(value, loss.item()) <= tol
    assert sorted(grads) == sorted(params)
    for k, g in grads.items():
        assert rel_err(g, params[k].grad.numpy()) <= tol, k
    assert rel_err(model.forward(x), logits.detach().numpy()) <= tol
