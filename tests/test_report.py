"""`jax_mpk.jit(...).lower(...).as_text()`: the report of a compiled step."""

from __future__ import annotations

import re

import jax
import numpy as np

import jax_mpk
from examples.models.config import FAMILIES
from jax_mpk.program import TaskKind
from tests.harness import SMALL_DEVICE, decode_step


def lowered_llama():
    step, args = decode_step(FAMILIES["llama"], "linen", 1, 1)
    return jax_mpk.jit(step, donate_argnums=(2,), device=SMALL_DEVICE).lower(*args), args


def test_report_counts_weights_tasks_and_events():
    lowered, (params, *_) = lowered_llama()
    text = lowered.as_text()
    weight_bytes = sum(np.asarray(p).nbytes for p in jax.tree.leaves(params))
    assert f"weights read per call: {weight_bytes / 1024:.2f} KiB" in text
    program = lowered.program
    assert f"tasks: {program.num_tasks}; events: {program.num_events}" in text
    kinds = dict(re.findall(r"^  ([A-Z_]+) +(\d+)$", text, re.M))
    assert sum(int(n) for n in kinds.values()) == program.num_tasks
    assert {"MATMUL", "ELEMENTWISE", "SEQUENCE"} <= set(kinds)
    # The norms' reductions run inside the matmuls (passes/norm_linear.py).
    assert {TaskKind.MATMUL, TaskKind.GATHER_ROWS, TaskKind.DECODE_ATTENTION} <= set(
        lowered.compiled.kinds_run)


def test_report_lists_recognized_layers_and_ops_with_source_lines():
    lowered, _ = lowered_llama()
    text = lowered.as_text()
    patterns = dict(re.findall(r"^  ([a-z_]+) +(\d+)$", text, re.M))
    layers = FAMILIES["llama"].layers
    # Each down projection computes its gating (passes/gating_linear.py): it is the gated_mlp,
    # the o projection the one residual_linear.
    assert int(patterns["gated_mlp"]) == layers
    assert int(patterns["residual_linear"]) == layers
    # RoPE and the cache appends run in the decode attention (passes/rope_attention.py).
    assert int(patterns["rope_attention"]) == layers and "rope" not in patterns
    assert "rms_norm" in patterns
    op_lines = [line for line in text.splitlines() if re.match(r"^ +\d+ [a-z_]+", line)]
    assert len(op_lines) == len(lowered.compiled.program.graph.ops)
    assert all("examples/models/" in line for line in op_lines)


def test_donated_caches_are_reported_as_aliased():
    lowered, _ = lowered_llama()
    assert "aliased results: result 1 <- arg2[0][0]" in lowered.as_text()
