"""Decoder configurations for the three model families the tests cover."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    family: str
    vocab: int
    dim: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_dim: int
    max_len: int
    norm: str  # "rms" | "layer"
    positions: str  # "rope" | "learned"
    mlp: str  # "swiglu" | "gelu"
    qk_norm: bool
    tied_embeddings: bool
    dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False
    # RoPE's pairs of a head's dims: "half" (i, i + head_dim / 2: Llama in Hugging Face's
    # layout) or "interleaved" (2i, 2i + 1: GPT-J, Meta's Llama code).
    rope: str = "half"
    # Tensor parallelism (examples/models/tp.py): a per-rank config of a model split over
    # the mesh axis named here; heads, kv_heads and mlp_dim count this rank's share.
    tp_axis: str | None = None

    def replace(self, **changes) -> DecoderConfig:
        return dataclasses.replace(self, **changes)

    def cache_shape(self, batch: int) -> tuple[int, ...]:
        per_layer = (batch, self.max_len, self.kv_heads, self.head_dim)
        return (self.layers, *per_layer) if self.scan_layers else per_layer


LLAMA = DecoderConfig(family="llama", vocab=96, dim=64, layers=2, heads=4, kv_heads=2,
                      head_dim=16, mlp_dim=128, max_len=16, norm="rms", positions="rope",
                      mlp="swiglu", qk_norm=False, tied_embeddings=True)
QWEN3 = DecoderConfig(family="qwen3", vocab=80, dim=64, layers=2, heads=4, kv_heads=1,
                      head_dim=32, mlp_dim=96, max_len=16, norm="rms", positions="rope",
                      mlp="swiglu", qk_norm=True, tied_embeddings=False)
GPT2 = DecoderConfig(family="gpt2", vocab=72, dim=48, layers=2, heads=3, kv_heads=3,
                     head_dim=16, mlp_dim=192, max_len=16, norm="layer", positions="learned",
                     mlp="gelu", qk_norm=False, tied_embeddings=False)
FAMILIES = {c.family: c for c in (LLAMA, QWEN3, GPT2)}
