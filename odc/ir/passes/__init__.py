"""The pass pipeline, in order, in one place.

Each pass is a module with a `name` and a `run(graph, ...) -> graph` that returns a new graph.
"""
from odc.ir.passes import autodiff, dce, inference, optimizer, shape_infer

PIPELINE = [shape_infer, dce, inference, autodiff, optimizer]
