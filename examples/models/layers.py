"""Math shared by the linen and nnx decoders: rope, cached attention, activations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .config import DecoderConfig


def rope_tables(cfg: DecoderConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables [max_len, head_dim // 2], closed over by the step as constants."""
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, cfg.head_dim, 2) / cfg.head_dim))
    angles = np.arange(cfg.max_len)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, cfg: DecoderConfig) -> jax.Array:
    """Rotary embedding of x [B, S, H, D] at positions [S], over cfg.rope's pairs of dims."""
    cos_table, sin_table = rope_tables(cfg)
    cos = jnp.take(jnp.asarray(cos_table), positions, axis=0)[None, :, None, :]
    sin = jnp.take(jnp.asarray(sin_table), positions, axis=0)[None, :, None, :]
    if cfg.rope == "interleaved":
        pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
        x1, x2 = pairs[..., 0], pairs[..., 1]
        rotated = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
        return rotated.reshape(x.shape).astype(x.dtype)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def cached_attention(q, k, v, cache_k, cache_v, pos, cfg: DecoderConfig):
    """Append k/v [B, S, Hkv, D] to the caches at pos and attend with a causal mask."""
    cache_k = lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, pos, 0, 0))
    cache_v = lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, pos, 0, 0))
    batch, seq = q.shape[:2]
    group = cfg.heads // cfg.kv_heads
    if cfg.family == "qwen3":  # repeat kv heads
        keys = jnp.repeat(cache_k, group, axis=2)
        values = jnp.repeat(cache_v, group, axis=2)
        scores = jnp.einsum("bshd,bthd->bhst", q, keys)
    else:  # group the query heads
        keys, values = cache_k, cache_v
        grouped = q.reshape(batch, seq, cfg.kv_heads, group, cfg.head_dim)
        scores = jnp.einsum("bskgd,btkd->bkgst", grouped, keys)
        scores = scores.reshape(batch, cfg.heads, seq, cfg.max_len)
    scores = scores.astype(jnp.float32) / np.sqrt(cfg.head_dim).astype(np.float32)
    query_pos = pos + jnp.arange(seq)
    mask = jnp.arange(cfg.max_len)[None, :] <= query_pos[:, None]
    scores = jnp.where(mask[None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    if cfg.family == "qwen3":
        out = jnp.einsum("bhst,bthd->bshd", probs, values)
    else:
        probs = probs.reshape(batch, cfg.kv_heads, group, seq, cfg.max_len)
        out = jnp.einsum("bkgst,btkd->bskgd", probs, values)
    return out.reshape(batch, seq, cfg.heads * cfg.head_dim), cache_k, cache_v


def activation(x: jax.Array, cfg: DecoderConfig) -> jax.Array:
    return jax.nn.gelu(x, approximate=True) if cfg.mlp == "gelu" else jax.nn.silu(x)
