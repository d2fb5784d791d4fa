"""Runs a program the way the megakernel does, one task at a time in a random order that
its events allow, and returns the results."""

from __future__ import annotations

import numpy as np

from jax_mpk import program as fmt
from jax_mpk.reference.kinds import SEMANTICS
from jax_mpk.reference.memory import Memory, RaceError, TaskAccess


def execute(program: fmt.Program, args: list[np.ndarray], results: list[tuple],
            aliases: dict[int, int] | None = None, seed: int = 0,
            order: list[int] | None = None) -> list[np.ndarray]:
    """Run program on args; results[i] is (shape, dtype) of result i; aliases maps a result
    to the argument it is written in place of; `order`, if given, receives the task ids in
    the order they ran. Raises RaceError on a race in the graph."""
    aliases = aliases or {}
    memory = Memory(program, args, aliases)
    tasks, events = program.tasks, program.events
    waits_on = np.empty(len(tasks), np.int64)
    for e, event in enumerate(events):
        waits_on[int(event["first_task"]):int(event["last_task"])] = e
    triggered_by: list[list[int]] = [[] for _ in events]
    for t, task in enumerate(tasks):
        first = int(task["first_trigger"])
        for e in program.triggers[first:first + int(task["num_triggers"])]:
            triggered_by[int(e)].append(t)

    rng = np.random.default_rng(seed)
    counters = np.zeros(len(events), np.int64)
    start, end = program.start_event, program.end_event
    ready = list(range(int(events[start]["first_task"]), int(events[start]["last_task"])))
    done = 0
    while ready:
        t = ready.pop(int(rng.integers(len(ready))))
        task = tasks[t]
        memory.ancestors[t] = _ancestors(memory, triggered_by[waits_on[t]])
        first = int(task["first_operand"])
        operands = program.operands[first:first + int(task["num_operands"])]
        kind = int(task["kind"])
        label = f"task {t} ({_kind_name(kind)})"
        if kind not in SEMANTICS:
            raise RaceError(f"{label} has no reference semantics")
        SEMANTICS[kind](TaskAccess(memory, t, operands, label), task["dims"])
        done += 1
        if order is not None:
            order.append(t)
        first = int(task["first_trigger"])
        for e in program.triggers[first:first + int(task["num_triggers"])]:
            e = int(e)
            counters[e] += 1
            if counters[e] == events[e]["threshold"] and e != end:
                ready.extend(range(int(events[e]["first_task"]), int(events[e]["last_task"])))
    if done != len(tasks) or counters[end] != events[end]["threshold"]:
        raise RaceError(f"the program stalls: {done} of {len(tasks)} tasks ran and the end "
                        f"event counted {counters[end]} of {events[end]['threshold']}")
    outputs = []
    for i, (shape, dtype) in enumerate(results):
        region = memory.rets[i] if i in memory.rets else memory.args[aliases[i]]
        if i not in aliases and np.any(region.writer == -2):
            raise RaceError(f"result {i} is not fully written by the program")
        outputs.append(region.data.view(np.dtype(dtype)).reshape(shape).copy())
    return outputs


def _ancestors(memory: Memory, producers: list[int]) -> int:
    reach = 0
    for p in producers:
        reach |= memory.ancestors[p] | (1 << p)
    return reach


def _kind_name(kind: int) -> str:
    try:
        return fmt.TaskKind(kind).name
    except ValueError:
        return f"kind {kind}"
