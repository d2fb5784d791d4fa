"""The text `Lowered.as_text()` returns: ops, task kinds, events and bytes per call."""

from __future__ import annotations

import collections

from jax_mpk import program as fmt
from jax_mpk.ir import Role


def dependent_stages(program) -> int:
    """Events on the longest chain from the start event to the end event: each is a wait
    of a task for the ones before it, a hop between workers at the least."""
    successors = []
    for event in program.events:
        tasks = program.tasks[int(event["first_task"]):int(event["last_task"])]
        fired = set()
        for task in tasks:
            first = int(task["first_trigger"])
            fired.update(int(e) for e in program.triggers[first:first + int(task["num_triggers"])]
                         if not fmt.is_nvshmem_event(int(e)))
        successors.append(sorted(fired))
    reached, stack = {program.start_event}, [program.start_event]
    while stack:
        for e in successors[stack.pop()]:
            if e not in reached:
                reached.add(e)
                stack.append(e)
    waiting = collections.Counter(e for r in reached for e in successors[r])
    depth = {program.start_event: 0}
    ready = [program.start_event]
    while ready:  # the event graph is acyclic (the validator checks)
        event = ready.pop()
        for e in successors[event]:
            depth[e] = max(depth.get(e, 0), depth[event] + 1)
            waiting[e] -= 1
            if waiting[e] == 0:
                ready.append(e)
    return depth[program.end_event]


def report(compiled, name: str) -> str:
    cp = compiled.program
    if cp is None:
        return f"jax_mpk program for {name}: no results, nothing runs"
    graph, program = cp.graph, cp.program
    lines = [f"jax_mpk program for {name}"]
    role_bytes = collections.Counter()
    for buffer in graph.args:
        role_bytes[buffer.role] += buffer.nbytes
    lines.append(f"  weights read per call: {_bytes(role_bytes[Role.PARAM])}"
                 f" ({sum(b.role is Role.PARAM for b in graph.args)} params)")
    lines.append(f"  state (updated in place): {_bytes(role_bytes[Role.STATE])}; "
                 f"inputs: {_bytes(role_bytes[Role.INPUT])}")
    lines.append(f"  constants: {_bytes(program.constant_bytes)}; workspace: "
                 f"{_bytes(program.workspace_bytes)}")
    aliases = ", ".join(f"result {r} <- {compiled.names[a]}" for r, a in
                        sorted(compiled.aliases.items())) or "none"
    lines.append(f"  aliased results: {aliases}")
    lines.append(f"  tasks: {program.num_tasks}; events: {program.num_events}; "
                 f"triggers: {program.num_triggers}; workers: {program.num_workers}; "
                 f"schedulers: {program.num_schedulers}")
    lines.append(f"  dependent stages: {dependent_stages(program)} (events on the longest "
                 "chain of waits from start to end)")
    lines.append("task kinds:")
    for kind, count in sorted(compiled.task_kinds.items()):
        lines.append(f"  {kind.name:<22}{count:>7}")
    patterns = collections.Counter(o.label for op in graph.ops
                                   for o in op.attrs.get("steps", [op]) if o.label)
    if patterns:
        lines.append("recognized patterns:")
        for label, count in sorted(patterns.items()):
            lines.append(f"  {label:<22}{count:>7}")
    lines.append("ops:")
    for i, (op, tasks) in enumerate(zip(graph.ops, cp.op_tasks, strict=False)):
        steps = op.attrs.get("steps")
        out = steps[-1].outputs[0] if steps else op.outputs[0]
        what = (f"{op.kind} of {len(steps)}" if steps else op.kind) + (
            f" [{op.label}]" if op.label else "")
        shape = "x".join(map(str, out.shape)) or "scalar"
        lines.append(f"  {i:>4} {what:<34} {shape:>16} {out.dtype.name:<8} tasks {tasks:>4}"
                     f"  {op.source}")
    return "\n".join(lines)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"
