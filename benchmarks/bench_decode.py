"""Decode steps of Flax LLM shapes (bf16, random weights) under jax.jit and jax_mpk.jit in
one run: ms per step, their ratio, and weight bytes per step time as a fraction of the HBM
copy rate measured in the same run. The cache is donated and each step's cache feeds the
next, as in a decode loop. Each step is timed alone (dispatch, run, wait) and back to back
(steps dispatched without waiting: the device's rate wherever dispatch keeps ahead, so jax.jit's
figure there is its GPU time). Writes a JSON file and a PNG plot when asked.

    python benchmarks/bench_decode.py [--models llama-1b,qwen3-8b] [--batches 1,8,32]
        [--contexts 512,2048] [--fill 0.25] [--json PATH] [--plot PATH] [--timeline DIR
        [--timeline-only]] [--host-profile] [--tiling max_split_k=1,...] [--variants "fused_attention=0;prefetch=0"]

`--fill` sets the share of the cache in use at the timed step (default 1: its last position).

`--variants` times more jax_mpk.jit configurations beside, in the same process and on the
same weights: each is a set of DeviceSpec overrides on top of `--tiling`, and gets its own
row (kernel, back to back, logits against jax.jit). `--timeline DIR` profiles the first
case: a Chrome trace, an occupancy PNG and a table of where the kernel's time goes by op.
Without a GPU the jax_mpk side runs on the reference executor (use `--models tiny`) and no
HBM rate is measured.
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
from timing import back_to_back_seconds, median_seconds  # noqa: E402

import jax_mpk  # noqa: E402
from examples.models.config import FAMILIES  # noqa: E402
from examples.models.linen import Decoder  # noqa: E402
from jax_mpk import profile, runtime  # noqa: E402
from jax_mpk.tiling import DeviceSpec  # noqa: E402
from tests.harness import relative_error  # noqa: E402

QWEN3_8B = FAMILIES["qwen3"].replace(vocab=151936, dim=4096, layers=36, heads=32, kv_heads=8,
                                     head_dim=128, mlp_dim=12288, dtype=jnp.bfloat16)
MODELS = {"llama-1b": LLAMA_1B, "qwen3-8b": QWEN3_8B,
          "tiny": FAMILIES["llama"].replace(dtype=jnp.bfloat16)}


TILING: dict[str, int] = {}  # DeviceSpec overrides (--tiling)
VARIANTS: list[str] = []  # more jax_mpk.jit configurations to time beside (--variants)
FILL = [1.0]  # the share of the cache in use at the timed step (--fill)


def device_spec(**extra) -> DeviceSpec | None:
    """The GPU's DeviceSpec with the --tiling overrides; None (jax_mpk's default) on a CPU."""
    if not has_gpu():
        return None
    return DeviceSpec.of_cuda_device(runtime.device_info(), **{**TILING, **extra})


def has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def setup(cfg, batch: int, context: int):
    """Model, params, tokens, a random cache (model-scaled, never zeros) and the position."""
    cfg = cfg.replace(max_len=context)
    model = Decoder(cfg)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab, (batch, 1)), jnp.int32)
    shape = cfg.cache_shape(batch)
    cache = [(jnp.asarray(rng.standard_normal(shape), cfg.dtype),
              jnp.asarray(rng.standard_normal(shape), cfg.dtype)) for _ in range(cfg.layers)]
    pos = jnp.int32(max(1, round(context * FILL[0])) - 1)
    params = jax.jit(model.init)(jax.random.key(0), tokens, cache, pos)
    return model, params, tokens, cache, pos


def measure(name: str, batch: int, context: int, hbm: float | None, repeats: int) -> dict:
    model, params, tokens, cache, pos = setup(MODELS[name], batch, context)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    reference = jax.jit(model.apply, donate_argnums=(2,))
    ours = jax_mpk.jit(model.apply, donate_argnums=(2,), device=device_spec())

    def fresh_cache():
        return [(jnp.copy(k), jnp.copy(v)) for k, v in cache]

    expected, _ = reference(params, tokens, fresh_cache(), pos)
    got, _ = ours(params, tokens, fresh_cache(), pos)
    row = {"model": name, "batch": batch, "context": context, "position": int(pos),
           "weight_bytes": weight_bytes,
           "logits_relative_l2": relative_error(got, expected)}
    floor_ms = weight_bytes / hbm * 1e3 if hbm else None  # bytes moved / copy rate
    row["floor_ms"] = floor_ms
    variants = [("jax.jit", reference), ("jax_mpk.jit", ours)]
    errors = {}
    for text in VARIANTS:
        overrides = parse_tiling(text)
        spec = device_spec(**overrides) or DeviceSpec(**overrides)
        variant = jax_mpk.jit(model.apply, donate_argnums=(2,), device=spec)
        got, _ = variant(params, tokens, fresh_cache(), pos)
        errors[f"jax_mpk.jit {text}"] = relative_error(got, expected)
        variants.append((f"jax_mpk.jit {text}", variant))
    for label, fn in variants:
        state = {"cache": fresh_cache()}
        launches = []  # (kernel, FFI handler) µs of each step's launch, on the GPU
        timed = fn is not reference and hbm

        def step(fn=fn, state=state, launches=launches, timed=timed):
            logits, state["cache"] = fn(params, tokens, state["cache"], pos)
            if timed:  # this step's launch, or with deferred errors an earlier one
                timing = runtime.last_launch_timing()
                launches.append((timing["kernel_us"], timing["run_us"]))
            return logits

        ms = median_seconds(step, repeats=repeats) * 1e3
        row[label] = {"ms": ms, "fraction_of_hbm": floor_ms / ms if floor_ms else None}
        if label in errors:
            row[label]["logits_relative_l2"] = errors[label]
        row[label]["back_to_back_ms"] = back_to_back_seconds(step, steps=repeats) * 1e3
        if timed:
            runtime.check_launches(state["cache"])  # a deferred failure raises here
        if launches:  # medians over every launch (warm-ups, timed and back-to-back steps)
            row[label].update(kernel_ms=statistics.median(k for k, _ in launches) / 1e3,
                              run_ms=statistics.median(r for _, r in launches) / 1e3)
    row["speedup_vs_jit"] = row["jax.jit"]["ms"] / row["jax_mpk.jit"]["ms"]
    return row


def print_row(row: dict) -> None:
    def fraction(r):
        return f"{r['fraction_of_hbm']:5.2f}" if r["fraction_of_hbm"] else "  -  "

    floor = f"{row['floor_ms']:7.3f}" if row["floor_ms"] else "    -  "
    at = "" if row["position"] == row["context"] - 1 else f" at {row['position']}"
    print(f"{row['model']:9} b{row['batch']:<3} ctx {row['context']:5}{at} "
          f"{row['weight_bytes'] / 1e9:6.2f} GB floor {floor} ms | jax.jit "
          f"{row['jax.jit']['ms']:8.3f} ms {fraction(row['jax.jit'])} | jax_mpk.jit "
          f"{row['jax_mpk.jit']['ms']:8.3f} ms {fraction(row['jax_mpk.jit'])} | "
          f"{row['speedup_vs_jit']:5.2f}x | logits rel err {row['logits_relative_l2']:.1e}",
          flush=True)
    theirs, ours = row["jax.jit"], row["jax_mpk.jit"]
    print(f"{'':56} back to back: jax.jit {theirs['back_to_back_ms']:8.3f} ms | jax_mpk.jit "
          f"{ours['back_to_back_ms']:8.3f} ms", flush=True)
    if "kernel_ms" in ours:
        print(f"{'':56} median launch: kernel {ours['kernel_ms']:8.3f} ms, FFI handler "
              f"{ours['run_ms']:8.3f} ms", flush=True)
    for label in VARIANTS:
        variant = row[f"jax_mpk.jit {label}"]
        kernel = f", kernel {variant['kernel_ms']:8.3f} ms" if "kernel_ms" in variant else ""
        print(f"{'':4} variant {label}: {variant['ms']:8.3f} ms {fraction(variant)} | back to "
              f"back {variant['back_to_back_ms']:8.3f} ms{kernel} | logits rel err "
              f"{variant['logits_relative_l2']:.1e}", flush=True)


def timeline_report(name: str, batch: int, context: int, directory: str) -> None:
    model, params, tokens, cache, pos = setup(MODELS[name], batch, context)
    lowered = jax_mpk.jit(model.apply, device=device_spec(profile_capacity=4096),
                          donate_argnums=(2,)).lower(params, tokens, cache, pos)
    timeline = lowered.timeline(params, tokens, cache, pos)
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, "timeline_decode")
    profile.write_chrome_trace(timeline, base + ".json")
    profile.plot_occupancy(timeline, lowered.program.num_workers, base + ".png")
    _, busy = profile.occupancy(timeline, lowered.program.num_workers)
    print(f"timeline of {name} b{batch} ctx {context}: {len(timeline)} tasks in "
          f"{timeline['end_us'].max():.0f} µs, mean occupancy {busy.mean():.2f}; wrote "
          f"{base}.json and .png")
    table = profile.op_table(timeline, lowered.compiled.program)
    by_kind: dict[str, list[dict]] = {}
    for row in table:
        by_kind.setdefault(row["what"], []).append(row)
    print("op kind                        ops   span µs (sum)  mean  task µs (mean)")
    for what, rows in sorted(by_kind.items(), key=lambda kv: -sum(r["span_us"] for r in kv[1])):
        spans = [r["span_us"] for r in rows]
        task_us = sum(r["busy_us"] for r in rows) / sum(r["tasks"] for r in rows)
        print(f"{what:30} {len(spans):5} {sum(spans):12.0f} {sum(spans) / len(spans):7.1f} "
              f"{task_us:9.1f}")
    print("op kind                        tasks after the same kind (µs) | after another (µs)")
    for row in profile.after_same_kind(timeline, lowered.compiled.program):
        print(f"{row['what']:30} {row['warm_tasks']:6} {row['warm_us']:7.1f} | "
              f"{row['cold_tasks']:6} {row['cold_us']:7.1f}")
    print("op kind: tasks, task µs, then µs from the task's start to each phase it marks")
    for row in profile.mark_table(timeline, lowered.compiled.program):
        phases = ", ".join(f"{name} {us:.1f}" for name, us in row["marks"].items())
        print(f"{row['what']:30} {row['tasks']:6} {row['task_us']:7.1f}  {phases}")
    middle = len(table) // 2  # one layer's ops in order, from the middle of the step
    print("ops around the middle of the step: start µs, span µs, tasks, busy µs per task")
    for row in table[middle:middle + 16]:
        print(f"{row['start_us']:9.1f} {row['span_us']:7.1f} {row['tasks']:5} "
              f"{row['busy_us'] / row['tasks']:7.1f}  {row['what']}")


def host_profile(name: str, batch: int, context: int) -> None:
    """Where the host spends jax_mpk.jit calls: per call, when it returned, when its
    result was ready, and the FFI handler's and the kernel's own time; then cProfile."""
    import cProfile
    import pstats
    import time

    model, params, tokens, cache, pos = setup(MODELS[name], batch, context)
    ours = jax_mpk.jit(model.apply, donate_argnums=(2,), device=device_spec())
    profiler = cProfile.Profile()
    for i in range(8):
        if i == 3:  # after the first call's compile
            profiler.enable()
        start = time.perf_counter()
        logits, cache = ours(params, tokens, cache, pos)
        returned = time.perf_counter()
        jax.block_until_ready(logits)
        ready = time.perf_counter()
        timing = runtime.last_launch_timing()
        print(f"call {i}: returned {1e3 * (returned - start):7.3f} ms, ready "
              f"{1e3 * (ready - start):7.3f} ms; FFI handler {timing['run_us'] / 1e3:7.3f} ms, "
              f"kernel {timing['kernel_us'] / 1e3:7.3f} ms")
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    # The same arguments through a trivial jax.jit function: jax's own dispatch cost.
    trivial = jax.jit(lambda params, tokens, cache, pos: tokens + 1)
    for i in range(5):
        start = time.perf_counter()
        out = trivial(params, tokens, cache, pos)
        returned = time.perf_counter()
        jax.block_until_ready(out)
        ready = time.perf_counter()
        print(f"trivial jax.jit of the same arguments, call {i}: returned "
              f"{1e3 * (returned - start):7.3f} ms, ready {1e3 * (ready - start):7.3f} ms")
    workspace = ours.lower(params, tokens, cache, pos).program.workspace_bytes
    print(f"workspace {workspace / 2**20:.1f} MiB")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\nb{r['batch']} ctx {r['context']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    ax.bar(x - 0.2, [r["jax.jit"]["ms"] for r in rows], 0.4, label="jax.jit")
    ax.bar(x + 0.2, [r["jax_mpk.jit"]["ms"] for r in rows], 0.4, label="jax_mpk.jit")
    if all(r["floor_ms"] for r in rows):
        ax.scatter(x, [r["floor_ms"] for r in rows], color="k", marker="_", s=400,
                   label="weight bytes / HBM copy rate", zorder=3)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("ms per decode step")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_tiling(text: str) -> dict[str, int]:
    """"min_split_k=128,max_split_k=4" -> DeviceSpec overrides."""
    pairs = [item.split("=") for item in text.split(",") if item]
    return {name.strip(): int(value) for name, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="llama-1b", help=f"from {sorted(MODELS)}")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--contexts", default="512")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--fill", type=float, default=1.0,
                        help="share of the cache in use: the step's position is its last")
    parser.add_argument("--json")
    parser.add_argument("--plot")
    parser.add_argument("--timeline", help="profile the first case; write its files here")
    parser.add_argument("--timeline-only", action="store_true",
                        help="with --timeline: no timed steps (the 8B's take most of a call)")
    parser.add_argument("--host-profile", action="store_true")
    parser.add_argument("--tiling", default="", help="DeviceSpec overrides: name=int,...")
    parser.add_argument("--variants", default="",
                        help="more DeviceSpec overrides to time beside, ';' between them")
    args = parser.parse_args()
    TILING.update(parse_tiling(args.tiling))
    FILL[0] = args.fill
    VARIANTS.extend(v for v in args.variants.split(";") if v)
    cases = [(m, int(b), int(c)) for m in args.models.split(",")
             for b in args.batches.split(",") for c in args.contexts.split(",")]
    hbm = None
    device = "cpu (reference executor)"
    if has_gpu():
        hbm = runtime.hbm_copy_rate()
        device = runtime.device_info()["name"]
    print(f"{device}: HBM copy rate "
          f"{f'{hbm / 1e9:.0f} GB/s (read + write)' if hbm else 'not measured'}; floor = "
          "weight bytes / copy rate; fractions are floor / step time")
    rows = []
    for case in cases if not (args.timeline and args.timeline_only) else []:
        rows.append(measure(*case, hbm, args.repeats))
        print_row(rows[-1])
    if args.host_profile:
        host_profile(*cases[0])
    if args.timeline:
        timeline_report(*cases[0], args.timeline)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "hbm_copy_GBps": hbm / 1e9 if hbm else None,
                       "cases": rows}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
