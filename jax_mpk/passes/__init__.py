"""Graph passes, in the order `optimize` runs them."""

from __future__ import annotations

from jax_mpk.frontend.builder import GraphBuilder
from jax_mpk.ir import Graph
from jax_mpk.passes.dataflow import assign_results, remove_dead_ops, update_in_place
from jax_mpk.passes.fusion import fuse_elementwise

__all__ = ["optimize"]


def optimize(graph: Graph) -> Graph:
    remove_dead_ops(graph)
    update_in_place(graph)
    builder = GraphBuilder()
    builder.ops = graph.ops
    assign_results(graph, builder.copy)
    fuse_elementwise(graph)
    remove_dead_ops(graph)
    return graph
