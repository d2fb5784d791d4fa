"""Splitting a linen decoder over tensor-parallel ranks (Megatron style): q/k/v and
gate/up column-parallel (each rank its heads and its slice of the MLP), o and down
row-parallel with a psum after each (linen.Block), everything else replicated."""

from __future__ import annotations

import jax

from .config import DecoderConfig

# Module name -> the kernel axis that splits (negative: the same under nn.scan's layer axis).
# q/k/v kernels are [dim, heads, head_dim], o is [heads * head_dim, dim].
SPLIT_AXES = {"q": -2, "k": -2, "v": -2, "gate": -1, "up": -1, "o": -2, "down": -2}


def rank_config(cfg: DecoderConfig, axis: str, size: int) -> DecoderConfig:
    """The config one rank of `size` runs: its share of the heads and of the MLP."""
    if cfg.heads % size or cfg.kv_heads % size or cfg.mlp_dim % size:
        raise ValueError(f"{cfg.heads} heads, {cfg.kv_heads} kv heads and an MLP of "
                         f"{cfg.mlp_dim} do not split evenly over {size} ranks")
    if cfg.family == "gpt2":  # a row-parallel bias would be added once per rank
        raise ValueError("tensor parallelism of models with biases is not written")
    return cfg.replace(heads=cfg.heads // size, kv_heads=cfg.kv_heads // size,
                       mlp_dim=cfg.mlp_dim // size, tp_axis=axis)


def _take(x, axis: int, rank: int, size: int):
    n = x.shape[axis] // size
    return jax.lax.slice_in_dim(x, rank * n, (rank + 1) * n, axis=axis % x.ndim)


def shard_params(params, rank: int, size: int):
    """Rank `rank`'s share of the full model's linen params."""
    def piece(path, x):
        names = [getattr(k, "key", None) for k in path]
        axis = SPLIT_AXES.get(names[-2]) if names[-1] == "kernel" else None
        return x if axis is None else _take(x, axis, rank, size)

    return jax.tree_util.tree_map_with_path(piece, params)


def shard_cache(cache, rank: int, size: int):
    """Rank `rank`'s kv heads of a cache (kv heads are axis -2 of every cache array)."""
    return jax.tree.map(lambda c: _take(c, -2, rank, size), cache)
