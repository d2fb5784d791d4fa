"""Each task kind as tasks inside the megakernel, beside the HBM copy rate of the same run.

A case is a small JAX function compiled by jax_mpk.jit. Its time is the span of its tasks
in the megakernel's own timeline (first task start to last task end, the median of several
launches), so host launch latency is not counted; its bytes are what it must read and
write at least. jax.jit of the same function is timed from the host for reference.

    python benchmarks/bench_kinds.py [--json PATH] [--only SUBSTRING,...] [--tiling name=int,...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_compile import LLAMA_1B  # noqa: E402
from bench_decode import parse_tiling  # noqa: E402
from timing import median_seconds  # noqa: E402

import jax_mpk  # noqa: E402
from examples.models import layers  # noqa: E402
from jax_mpk import runtime  # noqa: E402
from jax_mpk.tiling import DeviceSpec  # noqa: E402

BF16 = jnp.bfloat16
LAUNCHES = 5


def normal(rng, shape, scale=1.0, dtype=BF16):
    return jnp.asarray(rng.standard_normal(shape) * scale, dtype)


def linear_cases(rng):
    for m in (1, 8):
        for k, n in ((2048, 2048), (2048, 8192), (8192, 2048), (4096, 14336)):
            x, w = normal(rng, (m, k)), normal(rng, (k, n), k ** -0.5)
            yield (f"linear M={m} {k}x{n}", lambda x, w: x @ w, (x, w),
                   w.nbytes + x.nbytes + m * n * 2)
        # Tied embeddings: the LM head reads the table contiguous along k.
        table = normal(rng, (32768, 2048), 0.02)
        x = normal(rng, (m, 2048))
        yield (f"lm_head M={m} 2048x32768 (k-contiguous)", lambda x, e: x @ e.T, (x, table),
               table.nbytes + x.nbytes + m * 32768 * 2)


def rms_norm(x, scale):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + 1e-6)
    return (y * scale).astype(x.dtype)


def masked_softmax(scores, pos):
    scores = scores.astype(jnp.float32) / np.float32(8.0)
    live = jnp.arange(scores.shape[-1]) <= pos
    return jax.nn.softmax(jnp.where(live, scores, jnp.finfo(jnp.float32).min), -1)


def elementwise_cases(rng):
    x, scale = normal(rng, (64, 8192)), normal(rng, (8192,), 0.1, jnp.float32)
    yield "rmsnorm 64x8192", rms_norm, (x, scale), 2 * x.nbytes + scale.nbytes
    # A decode step's norm and softmax at batch 1.
    x, scale = normal(rng, (1, 2048)), normal(rng, (2048,), 0.1, jnp.float32)
    yield "rmsnorm 1x2048", rms_norm, (x, scale), 2 * x.nbytes + scale.nbytes
    scores, pos = normal(rng, (32, 2048), 4.0), jnp.int32(511)
    yield ("masked softmax 32x2048", masked_softmax, (scores, pos),
           scores.nbytes + scores.size * 4)
    g, u = normal(rng, (64, 8192)), normal(rng, (64, 8192))
    yield "silu gating 64x8192", lambda g, u: jax.nn.silu(g) * u, (g, u), 3 * g.nbytes
    g, u = normal(rng, (1, 8192)), normal(rng, (1, 8192))  # a decode step's, at batch 1
    yield "silu gating 1x8192", lambda g, u: jax.nn.silu(g) * u, (g, u), 3 * g.nbytes
    cfg = LLAMA_1B
    q = normal(rng, (8, 1, 32, 64))
    positions = jnp.arange(1, dtype=jnp.int32) + 17
    yield ("rope 8x32x64", lambda q, p: layers.apply_rope(q, p, cfg), (q, positions),
           2 * q.nbytes)
    q = normal(rng, (1, 1, 32, 64))
    yield ("rope 1x32x64", lambda q, p: layers.apply_rope(q, p, cfg), (q, positions),
           2 * q.nbytes)


def attention_cases(rng):
    for context in (512, 2048):
        cfg = LLAMA_1B.replace(max_len=context)
        shape = cfg.cache_shape(1)
        q, k, v = (normal(rng, (1, 1, h, 64)) for h in (32, 8, 8))
        ck, cv = normal(rng, shape), normal(rng, shape)
        pos = jnp.int32(context - 1)

        # As in a decode step: the caches are donated and appended to in place (returning
        # only `out` made each launch copy both caches into new buffers first).
        def attend(q, k, v, ck, cv, pos, cfg=cfg):
            return layers.cached_attention(q, k, v, ck, cv, pos, cfg)

        for fused in (False, True):  # three ops, or one decode_attention op
            yield (f"attention GQA 32/8x64 context {context}{' fused' if fused else ''}",
                   attend, (q, k, v, ck, cv, pos), ck.nbytes + cv.nbytes,
                   {"fused_attention": fused, "donate_argnums": (3, 4)})


def copies(args, donate_argnums):
    """args, with a fresh copy of each donated one: a launch may write those in place."""
    return [jnp.copy(a) if i in donate_argnums else a for i, a in enumerate(args)]


def in_kernel_us(fn, args, spec, donate_argnums=()):
    lowered = jax_mpk.jit(fn, device=spec, donate_argnums=donate_argnums).lower(*args)
    spans, durations, last_starts = [], [], []
    for _ in range(LAUNCHES):
        timeline = lowered.timeline(*copies(args, donate_argnums))
        spans.append(float(timeline["end_us"].max() - timeline["start_us"].min()))
        durations.append(float(np.median(timeline["end_us"] - timeline["start_us"])))
        last_starts.append(float(timeline["start_us"].max()))
    # A task's own duration against the span shows whether time goes into the tasks' loads
    # or into the hops between dependent tasks (the split-K combine waits on all partials).
    return (statistics.median(spans), lowered.program.num_tasks, statistics.median(durations),
            statistics.median(last_starts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json")
    parser.add_argument("--only", default="",
                        help="cases whose name holds one of these, comma-separated")
    parser.add_argument("--tiling", default="", help="DeviceSpec overrides: name=int,...")
    args = parser.parse_args()
    info = runtime.device_info()
    tiling = parse_tiling(args.tiling)
    hbm = runtime.hbm_copy_rate()
    print(f"{info['name']}: HBM copy rate {hbm / 1e9:.0f} GB/s (read + write)")
    rng = np.random.default_rng(0)
    rows = []
    for cases in (linear_cases, elementwise_cases, attention_cases):
        for name, fn, inputs, nbytes, *options in cases(rng):
            if not any(part in name for part in args.only.split(",")):
                continue
            options = dict(options[0]) if options else {}
            donate = options.pop("donate_argnums", ())
            case_tiling = dict(tiling, **options)
            spec = DeviceSpec.of_cuda_device(info, profile_capacity=1024, **case_tiling)
            expected = jax.tree.leaves(jax.jit(fn)(*inputs))[0]
            got = jax.tree.leaves(jax_mpk.jit(fn, donate_argnums=donate, device=DeviceSpec.of_cuda_device(
                info, **case_tiling))(*copies(inputs, donate)))[0]
            error = float(jnp.linalg.norm((got - expected).astype(jnp.float32))
                          / jnp.linalg.norm(expected.astype(jnp.float32)))
            us, tasks, task_us, last_start_us = in_kernel_us(fn, inputs, spec, donate)
            jitted = jax.jit(fn)
            jit_us = median_seconds(lambda f=jitted, a=inputs: f(*a)) * 1e6
            row = {"case": name, "tasks": tasks, "bytes": nbytes, "us": us,
                   "GBps": nbytes / us / 1e3, "fraction_of_hbm": nbytes / us / 1e3 / (hbm / 1e9),
                   "median_task_us": task_us, "last_start_us": last_start_us,
                   "jax_jit_host_us": jit_us, "relative_error": error}
            rows.append(row)
            print(f"{name:44} {tasks:5} tasks {us:9.1f} µs {row['GBps']:7.0f} GB/s "
                  f"{row['fraction_of_hbm']:5.2f} of HBM | task {task_us:6.1f} µs, last start "
                  f"{last_start_us:6.1f} µs | jax.jit {jit_us:8.1f} µs (host) "
                  f"| rel err {error:.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": info["name"], "hbm_copy_GBps": hbm / 1e9, "cases": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
