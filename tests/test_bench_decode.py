"""The decode benchmark's sweep runs end to end on a tiny model (reference executor
without a GPU) and its two jits agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from tests.harness import TOLERANCE

ROOT = Path(__file__).resolve().parents[1]


def test_bench_decode_sweeps_models_batches_and_contexts(tmp_path):
    out = tmp_path / "decode.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_decode.py"), "--models",
                    "tiny", "--batches", "1,3", "--contexts", "16,24", "--repeats", "1",
                    "--json", str(out)], check=True, timeout=600, cwd=tmp_path)
    cases = json.loads(out.read_text())["cases"]
    assert [(c["batch"], c["context"]) for c in cases] == [(1, 16), (1, 24), (3, 16), (3, 24)]
    assert all(c["position"] == c["context"] - 1 for c in cases)  # the cache's last
    for c in cases:
        assert c["logits_relative_l2"] < TOLERANCE[np.dtype(jnp.bfloat16)]
        for label in ("jax.jit", "jax_mpk.jit"):
            assert np.isfinite(c[label]["ms"]) and np.isfinite(c[label]["back_to_back_ms"])


def test_bench_decode_times_variants_beside(tmp_path):
    """Variants timed beside the default, with a quarter of the cache in use (--fill)."""
    out = tmp_path / "decode.json"
    variants = ["fused_attention=0", "prefetch=0,fold_norms=0"]
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_decode.py"), "--models",
                    "tiny", "--contexts", "128", "--fill", "0.25", "--repeats", "1",
                    "--variants", ";".join(variants), "--json", str(out)], check=True,
                   timeout=600, cwd=tmp_path)
    (case,) = json.loads(out.read_text())["cases"]
    assert case["position"] == 31
    for text in variants:
        variant = case[f"jax_mpk.jit {text}"]
        assert variant["logits_relative_l2"] < TOLERANCE[np.dtype(jnp.bfloat16)]
        assert np.isfinite(variant["ms"]) and np.isfinite(variant["back_to_back_ms"])


def test_a_variant_overrides_what_tiling_set(monkeypatch):
    """Variants go on top of --tiling, the same key included (an A/B of a flag that --tiling
    turned off for every runtime: session 23 found it raised)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as the script sees its siblings
    from benchmarks import bench_decode

    monkeypatch.setattr(bench_decode, "has_gpu", lambda: True)
    monkeypatch.setattr(bench_decode.runtime, "device_info",
                        lambda: {"sm_count": 132, "shared_memory_per_block": 232448})
    monkeypatch.setattr(bench_decode, "TILING", {"prefetch": 0, "fold_norms": 0})
    spec = bench_decode.device_spec(prefetch=1)
    assert spec.prefetch and not spec.fold_norms and spec.sm_count == 132
