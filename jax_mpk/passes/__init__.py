"""Graph passes, in the order `optimize` runs them."""

from __future__ import annotations

from jax_mpk.frontend.builder import GraphBuilder
from jax_mpk.ir import Graph
from jax_mpk.passes.attention import bound_attention_to_live_cache
from jax_mpk.passes.cache_append import fold_cache_appends
from jax_mpk.passes.dataflow import (
    assign_results,
    coalesce_copies,
    remove_dead_ops,
    remove_duplicate_ops,
    update_in_place,
)
from jax_mpk.passes.decode_attention import fuse_decode_attention
from jax_mpk.passes.fusion import fuse_elementwise, fuse_into_writers
from jax_mpk.passes.gating_linear import fold_gating_into_linears
from jax_mpk.passes.norm_linear import fold_norms_into_linears
from jax_mpk.passes.repeated_heads import read_repeated_heads_in_place
from jax_mpk.passes.rope_attention import fold_rope_into_attention
from jax_mpk.passes.patterns import (
    fold_linear_epilogues,
    fold_output_casts,
    fold_output_copies,
    group_sibling_matmuls,
    label_layers,
)
from jax_mpk.passes.sequence import fuse_sequences

__all__ = ["optimize"]


def optimize(graph: Graph, fuse_attention: bool = False, fold_norms: bool = False,
             fold_gating: bool = False, fold_appends: bool = False, fold_rope: bool = False,
             device=None) -> Graph:
    """fuse_attention: decode attention as one op (DeviceSpec.fused_attention); fold_norms,
    fold_gating: RMS norms and silu(g) * up into the matmuls that read them
    (DeviceSpec.fold_norms, DeviceSpec.fold_gating), as far as the tiling of `device` (a
    DeviceSpec; None: no tensor cores) lets their tasks compute them; fold_appends: cache
    appends into the elementwise ops that compute them (DeviceSpec.fold_cache_appends);
    fold_rope: RoPE and the appends into the decode attention after them
    (DeviceSpec.fold_rope)."""
    remove_dead_ops(graph)
    update_in_place(graph)
    coalesce_copies(graph)
    builder = GraphBuilder()
    builder.ops = graph.ops
    assign_results(graph, builder.copy)
    fold_linear_epilogues(graph)
    fuse_elementwise(graph)
    fuse_into_writers(graph)
    remove_dead_ops(graph)
    label_layers(graph)
    read_repeated_heads_in_place(graph)
    bound_attention_to_live_cache(graph)
    remove_duplicate_ops(graph)
    fold_output_copies(graph)
    fold_output_casts(graph)
    if fold_norms:
        fold_norms_into_linears(graph, device)
    if fold_gating:
        tensor_core_rows = device.matmul_tensor_core_rows if device is not None else 0
        fold_gating_into_linears(graph, tensor_core_rows or None)
    if fuse_attention:
        fuse_decode_attention(graph)
        if fold_rope:
            fold_rope_into_attention(graph)
    if fold_appends:
        fold_cache_appends(graph)
    group_sibling_matmuls(graph)
    fuse_sequences(graph)
    return graph
