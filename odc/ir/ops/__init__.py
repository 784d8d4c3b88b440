"""The op catalog: one definition per op, read by every layer.

`OPS` maps each IR op to its `OpDef` (type rule, numpy reference, derivative rule and traits:
see `odc.ir.ops.core`); `BUILTINS` maps each call of the language to its `Builtin` (arguments,
how the front end lowers it). The entries are grouped by kind of op, one module each:
`elementwise` (activations and arithmetic), `nn` (dense, dropout), `conv` (convolution and its
gradients), `pool` (pooling and its gradients), `norm` (normalisation layers), `tensor`
(arguments, shapes, products, reductions, softmax, losses), `augment` (the image input's
conversion, augmentation and normalisation in the training step). The front end's argument checks, shape inference, the verifier, autodiff,
fusion, memory planning and code generation all look ops up here.
"""
from odc.ir.ops import augment, conv, elementwise, nn, norm, pool, tensor  # noqa: F401 (they fill the tables)
from odc.ir.ops.core import (BUILTINS, OPS, Arg, Builtin, Emit, OpDef, ShapeError, axes_of,  # noqa: F401
                             broadcast_shapes, evaluate, get, gradient, normalize_axis)
from odc.ir.ops.tensor import cross_entropy_ref, log_softmax_ref  # noqa: F401
