"""The graph IR: typed nodes on a networkx DiGraph, the op registry, the verifier, text form."""
from odc.ir.graph import Graph, Node, TensorType  # noqa: F401
