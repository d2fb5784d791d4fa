"""Flax nnx decoders, the same three families as tests/models/linen.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .config import DecoderConfig
from .layers import activation, apply_rope, cached_attention


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, dtype, rngs: nnx.Rngs):
        self.scale = nnx.Param(0.1 * jax.random.normal(rngs.params(), (dim,), dtype))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-6)
        return (normed * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)


def norm(cfg: DecoderConfig, dim: int, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.norm == "rms":
        return RMSNorm(dim, cfg.dtype, rngs)
    return nnx.LayerNorm(dim, epsilon=1e-5, dtype=cfg.dtype, param_dtype=cfg.dtype,
                         scale_init=nnx.initializers.normal(0.1),
                         bias_init=nnx.initializers.normal(0.1), rngs=rngs)


class Block(nnx.Module):
    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        dense = dict(dtype=cfg.dtype, param_dtype=cfg.dtype, use_bias=cfg.family == "gpt2",
                     rngs=rngs)
        self.attn_norm = norm(cfg, cfg.dim, rngs)
        self.q = nnx.Linear(cfg.dim, cfg.heads * cfg.head_dim, **dense)
        self.k = nnx.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, **dense)
        self.v = nnx.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, **dense)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.dtype, rngs)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.dtype, rngs)
        self.o = nnx.Linear(cfg.heads * cfg.head_dim, cfg.dim, **dense)
        self.mlp_norm = norm(cfg, cfg.dim, rngs)
        if cfg.mlp == "swiglu":
            self.gate = nnx.Linear(cfg.dim, cfg.mlp_dim, **dense)
        self.up = nnx.Linear(cfg.dim, cfg.mlp_dim, **dense)
        self.down = nnx.Linear(cfg.mlp_dim, cfg.dim, **dense)

    def __call__(self, x, cache, pos):
        cfg = self.cfg
        batch, seq = x.shape[:2]
        h = self.attn_norm(x)
        q = self.q(h).reshape(batch, seq, cfg.heads, cfg.head_dim)
        k = self.k(h).reshape(batch, seq, cfg.kv_heads, cfg.head_dim)
        v = self.v(h).reshape(batch, seq, cfg.kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if cfg.positions == "rope":
            positions = pos + jnp.arange(seq)
            q, k = apply_rope(q, positions, cfg), apply_rope(k, positions, cfg)
        attn, cache_k, cache_v = cached_attention(q, k, v, *cache, pos, cfg)
        x = x + self.o(attn)
        h = self.mlp_norm(x)
        if cfg.mlp == "swiglu":
            h = activation(self.gate(h), cfg) * self.up(h)
        else:
            h = activation(self.up(h), cfg)
        return x + self.down(h), (cache_k, cache_v)


class Decoder(nnx.Module):
    def __init__(self, cfg: DecoderConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab, cfg.dim, dtype=cfg.dtype, param_dtype=cfg.dtype,
                               embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        if cfg.positions == "learned":
            self.wpe = nnx.Param(0.5 * jax.random.normal(rngs.params(), (cfg.max_len, cfg.dim),
                                                         cfg.dtype))
        if cfg.scan_layers:
            keys = jax.random.split(rngs.params(), cfg.layers)
            self.layers = nnx.vmap(lambda key: Block(cfg, nnx.Rngs(key)))(keys)
        else:
            self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
        self.final_norm = norm(cfg, cfg.dim, rngs)
        if not cfg.tied_embeddings:
            self.lm_head = nnx.Linear(cfg.dim, cfg.vocab, use_bias=False, dtype=cfg.dtype,
                                      param_dtype=cfg.dtype, rngs=rngs)

    def __call__(self, tokens, cache, pos):
        cfg = self.cfg
        x = self.embed(tokens)
        if cfg.positions == "learned":
            x = x + jnp.take(self.wpe[...], pos + jnp.arange(tokens.shape[1]), axis=0)[None]
        if cfg.scan_layers:
            graphdef, stacked = nnx.split(self.layers)

            def body(x, layer):
                state, layer_cache = layer
                return nnx.merge(graphdef, state)(x, layer_cache, pos)

            x, cache = jax.lax.scan(body, x, (stacked, cache))
        else:
            new_cache = []
            for block, layer_cache in zip(self.layers, cache, strict=True):
                x, layer_cache = block(x, layer_cache, pos)
                new_cache.append(layer_cache)
            cache = new_cache
        x = self.final_norm(x)
        logits = self.embed.attend(x) if cfg.tied_embeddings else self.lm_head(x)
        return logits.astype(jnp.float32), cache
