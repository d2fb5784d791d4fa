"""Random task DAGs of COMBINE_U32 tasks, their programs, and a numpy reference.

Every task owns a row of `words` uint32 values per iteration in the output;
sources read the iteration's input row. Wrapping integer arithmetic makes the
check exact, so a task that ran early, late or twice shows up as a mismatch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jax_mpk import program as fmt
from jax_mpk import taskgraph as tg


@dataclasses.dataclass
class Dag:
    deps: list[np.ndarray]
    mul: np.ndarray  # uint32[num_tasks]
    add: np.ndarray  # uint32[num_tasks]
    words: int

    @property
    def num_tasks(self) -> int:
        return len(self.deps)


def random_dag(rng: np.random.Generator, num_tasks: int, max_fan_in: int = 8,
               window: int = 64, words: int = 4, hub_fraction: float = 0.0) -> Dag:
    """Tasks draw their producers from a window of recent tasks; a fraction of
    them instead hang off a few hubs, which gives large fan-out and events that
    launch many tasks at once."""
    pool = max(1, num_tasks // 4)
    hubs = rng.choice(pool, size=min(4, pool), replace=False)
    deps = []
    for t in range(num_tasks):
        if t == 0:
            deps.append(np.zeros(0, np.int64))
            continue
        if hub_fraction and rng.random() < hub_fraction and hubs.min() < t:
            deps.append(np.array([hubs[hubs < t].max()]))
            continue
        lo = max(0, t - window)
        fan_in = int(min(t - lo, rng.integers(0, max_fan_in + 1)))
        deps.append(np.sort(rng.choice(np.arange(lo, t), size=fan_in, replace=False)))
    return Dag(deps, rng.integers(1, 2**32, num_tasks, dtype=np.uint32) | 1,
               rng.integers(0, 2**32, num_tasks, dtype=np.uint32), words)


def layered_dag(rng: np.random.Generator, layers: int, width: int, words: int = 4) -> Dag:
    """Full bipartite layers: fan-in and fan-out both equal `width`."""
    deps = []
    for layer in range(layers):
        prev = np.arange((layer - 1) * width, layer * width) if layer else np.zeros(0, np.int64)
        deps.extend(prev for _ in range(width))
    n = layers * width
    return Dag(deps, rng.integers(1, 2**32, n, dtype=np.uint32) | 1,
               rng.integers(0, 2**32, n, dtype=np.uint32), words)


def reference(dag: Dag, inputs: np.ndarray) -> np.ndarray:
    """inputs: uint32[iterations, words] -> uint32[iterations, num_tasks, words]."""
    out = np.empty((inputs.shape[0], dag.num_tasks, dag.words), np.uint32)
    for t, deps in enumerate(dag.deps):
        total = inputs if len(deps) == 0 else out[:, deps, :].sum(axis=1, dtype=np.uint32)
        out[:, t, :] = total * dag.mul[t] + dag.add[t]
    return out


def build(dag: Dag, config: tg.RuntimeConfig) -> tg.BuiltProgram:
    """ARG 0: inputs uint32[iterations, words]; RET 0: uint32[iterations, tasks, words]."""
    row = 4 * dag.words
    iterations = config.num_iterations
    g = tg.TaskGraph()
    inputs = g.arg(0, iterations * row)
    outputs = g.ret(0, iterations * dag.num_tasks * row)
    stride = dag.num_tasks * row
    for t, deps in enumerate(dag.deps):
        sources = [tg.Operand(outputs, int(d) * row, row, stride) for d in deps]
        if not sources:
            sources = [tg.Operand(inputs, 0, row, row)]
        g.add_task(fmt.TaskKind.COMBINE_U32,
                   [tg.Operand(outputs, t * row, row, stride), *sources],
                   [dag.words, int(dag.mul[t].view(np.int32)), int(dag.add[t].view(np.int32))],
                   deps=[int(d) for d in deps])
    return g.build(config, num_args=1, num_rets=1)
