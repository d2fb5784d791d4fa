"""One decode step of a Llama-3.2-1B-shaped Flax model (bf16, random weights)
under jax.jit and jax_mpk.jit in one run: ms per step, their ratio, and weight
bytes per step time as a fraction of the HBM copy rate measured in the run.

    python benchmarks/bench_decode.py [--batch 1] [--pos 512] [--json PATH] [--timeline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_compile import LLAMA_1B  # noqa: E402
from timing import median_seconds  # noqa: E402

import jax_mpk  # noqa: E402
from examples.models.linen import Decoder  # noqa: E402
from jax_mpk import profile, runtime  # noqa: E402
from jax_mpk.tiling import DeviceSpec  # noqa: E402
from tests.harness import relative_error  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--pos", type=int, default=512)
    parser.add_argument("--json")
    parser.add_argument("--timeline", help="write a profiled step's trace and PNG here")
    parser.add_argument("--host-profile", action="store_true", help="cProfile 5 jax_mpk.jit calls")
    args = parser.parse_args()
    cfg = LLAMA_1B
    model = Decoder(cfg)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab, (args.batch, 1)), jnp.int32)
    shape = cfg.cache_shape(args.batch)
    cache = [(jnp.asarray(rng.standard_normal(shape), cfg.dtype),
              jnp.asarray(rng.standard_normal(shape), cfg.dtype)) for _ in range(cfg.layers)]
    pos = jnp.int32(args.pos)
    params = jax.jit(model.init)(jax.random.key(0), tokens, cache, pos)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    hbm = runtime.hbm_copy_rate()

    # As in a decode loop, the cache is donated and each step's cache feeds the next.
    reference = jax.jit(model.apply, donate_argnums=(2,))
    ours = jax_mpk.jit(model.apply, donate_argnums=(2,))

    def fresh_cache():
        return [(jnp.copy(k), jnp.copy(v)) for k, v in cache]

    expected, _ = reference(params, tokens, fresh_cache(), pos)
    got, _ = ours(params, tokens, fresh_cache(), pos)
    error = relative_error(got[0], expected[0])
    results = {"device": runtime.device_info()["name"], "batch": args.batch, "pos": args.pos,
               "weight_bytes": weight_bytes, "hbm_copy_GBps": hbm / 1e9,
               "logits_relative_l2": error}
    floor_ms = weight_bytes / hbm * 1e3  # bytes moved per second, reads and writes alike
    print(f"{results['device']}: Llama-3.2-1B shape, batch {args.batch}, position {args.pos}; "
          f"{weight_bytes / 1e9:.2f} GB of weights; HBM copy rate {hbm / 1e9:.0f} GB/s "
          f"(read + write), so streaming the weights once takes {floor_ms:.3f} ms")
    print(f"logits relative L2 error, jax_mpk against jax.jit: {error:.2e}")
    for name, fn in (("jax.jit", reference), ("jax_mpk.jit", ours)):
        state = {"cache": fresh_cache()}

        def step(fn=fn, state=state):
            logits, state["cache"] = fn(params, tokens, state["cache"], pos)
            return logits

        ms = median_seconds(step, repeats=20) * 1e3
        results[name] = {"ms": ms, "fraction_of_hbm": floor_ms / ms}
        print(f"{name:12} {ms:8.3f} ms/step   {floor_ms / ms:5.2f} of the HBM rate")
    if args.host_profile:  # where the host spends a jax_mpk.jit call
        import cProfile
        import pstats

        state = {"cache": fresh_cache()}
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(5):
            logits, state["cache"] = ours(params, tokens, state["cache"], pos)
            jax.block_until_ready(logits)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    ratio = results["jax.jit"]["ms"] / results["jax_mpk.jit"]["ms"]
    results["speedup_vs_jit"] = ratio
    print(f"jax_mpk.jit is {ratio:.2f}x jax.jit's speed (target: <= 0.92 ms, >= 0.90 of HBM)")
    if args.timeline:
        info = runtime.device_info()
        spec = DeviceSpec.of_cuda_device(info, profile_capacity=4096)
        lowered = jax_mpk.jit(model.apply, device=spec,
                              donate_argnums=(2,)).lower(params, tokens, cache, pos)
        timeline = lowered.timeline(params, tokens, fresh_cache(), pos)
        base = os.path.join(args.timeline, "timeline_decode")
        profile.write_chrome_trace(timeline, base + ".json")
        profile.plot_occupancy(timeline, lowered.program.num_workers, base + ".png")
        _, busy = profile.occupancy(timeline, lowered.program.num_workers)
        print(f"timeline: {len(timeline)} tasks in {timeline['end_us'].max():.0f} µs, "
              f"mean occupancy {busy.mean():.2f}; wrote {base}.json and .png")
        table = profile.op_table(timeline, lowered.compiled.program)
        by_kind: dict[str, list[float]] = {}
        for row in table:
            by_kind.setdefault(row["what"], []).append(row["span_us"])
        print("op kind                        ops   span µs (sum)  mean")
        for what, spans in sorted(by_kind.items(), key=lambda kv: -sum(kv[1])):
            print(f"{what:30} {len(spans):5} {sum(spans):12.0f} {sum(spans) / len(spans):7.1f}")
        print("first layer's ops (start, span µs, tasks):")
        for row in table[:60]:
            print(f"  {row['start_us']:8.1f} {row['span_us']:7.1f} {row['tasks']:4}  {row['what']:28} "
                  f"{row['source']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
