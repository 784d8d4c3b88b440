"""Automatic differentiation: the forward graph becomes a loss-and-gradients graph.

The graph must be in training form (the train-mode pass: dropout masks, running statistics).

1. The loss: a new `input %label: i32[N]` and, on the model's output (the logits),
   `cross_entropy(logits, label)` (the batch mean of -log_softmax(logits)[label], computed with
   a stable log-sum-exp; with label smoothing eps, as PyTorch's, (1 - eps) times that plus eps
   times the mean of -log_softmax(logits) over the batch and the classes), `nll` (the model
   returns log-probabilities: the batch mean of -logits[label], through a one-hot mask) or
   `mse(logits, one_hot(label))`. With a mixup or cutmix of the augment pass (its weight input
   w, [1, 1, 1, 1] or [1, 1, H, W], and its roll matrix P), cross_entropy takes soft targets, as
   torchvision's MixUp/CutMix make them: lam = mean(w), target = lam one_hot(label) + (1 - lam)
   P one_hot(label), smoothed as PyTorch smooths a soft target, loss = the batch mean of
   -sum(target * log_softmax(logits)). With ``target="float"`` mse compares
   with a float `input %target` of the logits' type instead. The front end reserves both names
   (`RESERVED`), and checks that the logits are floats [batch, classes].
2. Reverse mode: the gradient of the loss is 1; the nodes are visited in reverse topological
   order and each node's VJP rule (the op catalog's `vjp`) turns the gradient of its result into
   gradients of its operands. A value used several times gets the sum of the contributions
   (`add`). Only values that depend on a parameter and are floats get gradients. Every leaf is
   its own node, so two parameters are never merged, whatever their values; a parameter that
   the loss does not depend on gets a zero gradient.
3. Outputs: `loss`, `logits`, `grad.<param>` for each parameter in declaration order, then the
   outputs the graph had besides the logits (train-mode's `new.<state>`). Nodes
   built by the rules that no output needs (the gradient of the image) are removed (DCE).
"""
from __future__ import annotations

import networkx as nx

from odc.errors import CompileError, Diagnostic, OdcError
from odc.ir import ops
from odc.ir.ops import Emit, gradient
from odc.ir.graph import ARG_OPS, Graph, TensorType
from odc.ir.passes import dce
from odc.ir.passes.augment import mixing

name = "autodiff"
summary = "add the label input, the loss and the reverse-mode gradient of every parameter"
options = {"loss": "cross_entropy, mse or nll (default: the train block's)",
           "label_smoothing": "cross_entropy's, in [0, 1] (default: the train block's)",
           "target": "label (integer classes) or float (mse against a float input %target)"}
requires = ("train-mode",)
LOSSES = {"cross_entropy": "label_smoothing=0", "mse": "", "nll": ""}  # name -> its arguments
RESERVED = ("label", "target")  # the names of the inputs this pass adds


def done(g: Graph) -> bool:
    return any(name == "loss" for name, _ in g.outputs)


def run(g: Graph, loss: str | None = None, target: str = "label", label_smoothing: float | None = None) -> Graph:
    """`loss` and `label_smoothing` default to the train block's."""
    g = g.copy()
    recipe = g.meta.get("recipe", {})
    loss = loss or recipe.get("loss", "cross_entropy")
    eps = recipe.get("label_smoothing", 0.0) if label_smoothing is None else label_smoothing
    if not (isinstance(eps, (int, float)) and 0 <= eps <= 1):
        raise OdcError(f"label_smoothing must be a number in [0, 1], got {eps!r}")
    if loss not in LOSSES:
        raise OdcError(f"unknown loss '{loss}'; odc knows {', '.join(LOSSES)}")
    if not g.outputs:
        raise OdcError(f"autodiff needs a graph that returns the logits; @{g.name} returns nothing")
    logits, carried = g.outputs[0][1], g.outputs[1:]
    lt = g.type(logits)
    e = Emit(g, g.node(logits).span)
    if lt.rank != 2 or not lt.is_float or not isinstance(lt.shape[1], int):
        raise CompileError(Diagnostic(f"{loss} needs float logits [batch, classes] with a known number of "
                                      f"classes; the model returns {lt}", g.node(logits).span))
    if loss == "mse" and target == "float":
        y = g.add("input", type=lt, name="target")
    else:
        y = g.add("input", type=TensorType("i32", lt.shape[:1]), name="label")
        if loss == "mse":
            y = e("one_hot", y, classes=lt.shape[1], dtype=lt.dtype)
    mixed = mixing(g)
    if mixed and loss != "cross_entropy":
        raise OdcError(f"mixup and cutmix mix the labels, which needs the loss cross_entropy, not {loss}")
    if mixed:  # soft targets: lam one_hot(label) + (1 - lam) one_hot(label of the image before)
        weight, roll = mixed
        lam = e("mean", weight)
        hot = e("one_hot", y, classes=lt.shape[1], dtype=lt.dtype)
        soft = e("add", e("mul", hot, lam), e("mul", e("matmul", roll, hot), e("sub", e.const(1, lt.dtype), lam)))
        if eps:  # PyTorch's label smoothing of a soft target: (1 - eps) target + eps / classes
            soft = e("add", e("mul", soft, e.const(1 - eps, lt.dtype)), e.const(eps / lt.shape[1], lt.dtype))
        value = e("neg", e("mean", e("sum", e("mul", soft, e("log_softmax", logits, axis=-1)), axis=1)))
    elif loss == "nll":  # the logits are log-probabilities: the batch mean of -logits[label]
        picked = e("sum", e("mul", logits, e("one_hot", y, classes=lt.shape[1], dtype=lt.dtype)), axis=1)
        value = e("neg", e("mean", picked))
    else:
        value = e(loss, logits, y)
    if loss == "cross_entropy" and eps and not mixed:  # PyTorch's: (1 - eps) CE + eps * mean over classes of -log p
        uniform = e("neg", e("mean", e("log_softmax", logits, axis=-1)))
        value = e("add", e("mul", value, e.const(1 - eps, lt.dtype)), e("mul", uniform, e.const(eps, lt.dtype)))
    grads = backprop(g, value, [p.id for p in g.params()])
    g.outputs = [("loss", value), ("logits", logits)]
    for p in g.params():
        gp = grads.get(p.id)
        if gp is None:
            gp = e("broadcast_to", e.const(0, p.type.dtype), shape=list(p.type.shape))
        g.outputs.append((f"grad.{p.name}", gp))
    g.outputs += carried
    return dce.run(g)


def backprop(g: Graph, loss: int, wrt: list[int]) -> dict[int, int]:
    """Add the gradient of scalar `loss` wrt each node in `wrt` to `g`; returns {node: gradient}
    for those the loss depends on."""
    varying = set(wrt).union(*(nx.descendants(g.nx, w) for w in wrt))
    needed = {i for i in varying & (nx.ancestors(g.nx, loss) | {loss}) if g.type(i).is_float}
    order = g.order()
    grad = {loss: Emit(g, g.node(loss).span).const(1, g.type(loss).dtype)}
    for nid in reversed(order):
        n = g.node(nid)
        if nid not in grad or n.op in ARG_OPS:
            continue
        if ops.get(n.op).vjp is None:
            raise CompileError(Diagnostic(f"odc cannot differentiate {n.op}", n.span))
        for a, ga in zip(n.args, gradient(g, n, nid, grad[nid])):
            if ga is None or a not in needed:
                continue
            grad[a] = ga if a not in grad else Emit(g, n.span)("add", grad[a], ga)
    return {w: grad[w] for w in wrt if w in grad}
