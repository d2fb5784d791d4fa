"""Runtime overhead of the megakernel, beside jax.jit, on one GPU.

  hop latency   chain of N dependent no-op tasks: (t(N) - t(1)) / (N - 1)
  dispatch      N independent no-op tasks: N / (t(N) - t(1)) tasks per µs
  jax.jit chain N dependent tiny ops in one jitted function, same slope

Usage: python benchmarks/bench_runtime.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from timing import median_seconds

from jax_mpk import program as fmt
from jax_mpk import runtime
from jax_mpk import taskgraph as tg


def noop_launch(num_tasks, dependent, config):
    g = tg.TaskGraph()
    prev = []
    for _ in range(num_tasks):
        t = g.add_task(fmt.TaskKind.NOOP, deps=prev)
        prev = [t] if dependent else []
    registered = runtime.RegisteredProgram(g.build(config, 0, 0).program)
    call = jax.jit(lambda: runtime.call(registered, [], []))
    return lambda: call()


def jit_chain(n):
    w = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8)), jnp.float32) / 3

    @jax.jit
    def chain(x):
        for _ in range(n):
            x = jnp.tanh(x @ w)  # one small dot per step: no fusion across steps
        return x

    x = jnp.ones((8, 8), jnp.float32) * 0.5
    return lambda: chain(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--chain", type=int, default=2000)
    parser.add_argument("--independent", type=int, default=100_000)
    parser.add_argument("--jit-chain", type=int, default=200)
    args = parser.parse_args()

    info = runtime.device_info()
    trivial = jax.jit(lambda x: x + 1)
    x = jnp.ones(16)
    dispatch_us = median_seconds(lambda: trivial(x)) * 1e6
    j1 = median_seconds(jit_chain(1))
    jn = median_seconds(jit_chain(args.jit_chain))
    jit_us = (jn - j1) / (args.jit_chain - 1) * 1e6
    results = {"device": info["name"], "jit_op_us": jit_us, "jit_dispatch_us": dispatch_us}
    print(f"device {info['name']} ({info['sm_count']} SMs); "
          f"jax.jit of x + 1 takes {dispatch_us:.1f} µs to dispatch and sync")
    print(f"jax.jit dependent op: {jit_us:.2f} µs/op (chain of {args.jit_chain} small dots)")
    print(f"{'schedule':22}{'launch µs':>11}{'hop µs':>9}{'tasks/µs':>10}{'vs jit':>8}")
    variants = (("dynamic", "-"), ("static", "round_robin"), ("static", "locality"))
    for schedule, placement in variants:
        config = tg.RuntimeConfig.for_sm_count(
            info["sm_count"], schedule=schedule,
            placement="locality" if placement == "-" else placement)
        base = median_seconds(noop_launch(1, True, config))
        chain = median_seconds(noop_launch(args.chain, True, config), repeats=20)
        wide = median_seconds(noop_launch(args.independent, False, config), repeats=10)
        row = {
            "workers": config.num_workers,
            "launch_us": base * 1e6,  # memset + launch + error check + jax dispatch
            "hop_us": (chain - base) / (args.chain - 1) * 1e6,
            "dispatch_tasks_per_us": args.independent / ((wide - base) * 1e6),
        }
        row["chain_speedup_vs_jit"] = jit_us / row["hop_us"]
        name = schedule if placement == "-" else f"{schedule}/{placement}"
        results[name] = row
        print(f"{name:22}{row['launch_us']:11.1f}{row['hop_us']:9.2f}"
              f"{row['dispatch_tasks_per_us']:10.1f}{row['chain_speedup_vs_jit']:7.1f}x")
    print(f"targets: hop < 2 µs, chain >= 3x faster than jax.jit "
          f"(chain of {args.chain} no-ops, {args.independent} independent no-ops)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
