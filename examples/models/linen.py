"""Flax linen decoders (Llama-, Qwen3- and GPT-2-style) with an explicit KV cache."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .config import DecoderConfig
from .layers import activation, apply_rope, cached_attention


class RMSNorm(nn.Module):
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.normal(0.1), (x.shape[-1],), self.dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jnp.reciprocal(jnp.sqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6))
        return (normed * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)


def norm(cfg: DecoderConfig, name: str) -> nn.Module:
    if cfg.norm == "rms":
        return RMSNorm(cfg.dtype, name=name)
    return nn.LayerNorm(epsilon=1e-5, dtype=cfg.dtype, param_dtype=cfg.dtype, name=name,
                        bias_init=nn.initializers.normal(0.1),
                        scale_init=nn.initializers.normal(0.1))


def reduce_ranks(x, cfg: DecoderConfig):
    """The sum over tensor-parallel ranks of a row-parallel linear's partial output."""
    return jax.lax.psum(x, cfg.tp_axis) if cfg.tp_axis else x


class Block(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x, cache, pos):
        cfg = self.cfg
        cache_k, cache_v = cache
        dense = dict(dtype=cfg.dtype, param_dtype=cfg.dtype, use_bias=cfg.family == "gpt2")
        h = norm(cfg, "attn_norm")(x)
        q = nn.DenseGeneral((cfg.heads, cfg.head_dim), name="q", **dense)(h)
        k = nn.DenseGeneral((cfg.kv_heads, cfg.head_dim), name="k", **dense)(h)
        v = nn.DenseGeneral((cfg.kv_heads, cfg.head_dim), name="v", **dense)(h)
        if cfg.qk_norm:
            q = RMSNorm(cfg.dtype, name="q_norm")(q)
            k = RMSNorm(cfg.dtype, name="k_norm")(k)
        if cfg.positions == "rope":
            positions = pos + jnp.arange(x.shape[1])
            q, k = apply_rope(q, positions, cfg), apply_rope(k, positions, cfg)
        attn, cache_k, cache_v = cached_attention(q, k, v, cache_k, cache_v, pos, cfg)
        x = x + reduce_ranks(nn.Dense(cfg.dim, name="o", **dense)(attn), cfg)
        h = norm(cfg, "mlp_norm")(x)
        if cfg.mlp == "swiglu":
            gate = nn.Dense(cfg.mlp_dim, name="gate", **dense)(h)
            up = nn.Dense(cfg.mlp_dim, name="up", **dense)(h)
            h = activation(gate, cfg) * up
        else:
            h = activation(nn.Dense(cfg.mlp_dim, name="up", **dense)(h), cfg)
        x = x + reduce_ranks(nn.Dense(cfg.dim, name="down", **dense)(h), cfg)
        return x, (cache_k, cache_v)


class ScannedBlock(nn.Module):
    """Block with the (carry, xs) signature nn.scan expects."""

    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x, cache, pos):
        return Block(self.cfg, name="block")(x, cache, pos)


class Decoder(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, tokens, cache, pos):
        """tokens [B, S] at positions pos.. pos+S-1; cache (k, v) per layer or stacked."""
        cfg = self.cfg
        embed = nn.Embed(cfg.vocab, cfg.dim, dtype=cfg.dtype, param_dtype=cfg.dtype,
                         embedding_init=nn.initializers.normal(1.0), name="embed")
        x = embed(tokens)
        if cfg.positions == "learned":
            wpe = self.param("wpe", nn.initializers.normal(0.5), (cfg.max_len, cfg.dim),
                             cfg.dtype)
            x = x + jnp.take(wpe, pos + jnp.arange(tokens.shape[1]), axis=0)[None]
        if cfg.scan_layers:
            layers = nn.scan(ScannedBlock, variable_axes={"params": 0},
                             split_rngs={"params": True}, in_axes=(0, nn.broadcast),
                             length=cfg.layers)
            x, cache = layers(cfg, name="layers")(x, cache, pos)
        else:
            new_cache = []
            for i in range(cfg.layers):
                x, layer_cache = Block(cfg, name=f"layer_{i}")(x, cache[i], pos)
                new_cache.append(layer_cache)
            cache = new_cache
        x = norm(cfg, "final_norm")(x)
        if cfg.tied_embeddings:
            logits = embed.attend(x)
        else:
            logits = nn.Dense(cfg.vocab, use_bias=False, dtype=cfg.dtype,
                              param_dtype=cfg.dtype, name="lm_head")(x)
        return logits.astype(jnp.float32), cache
