"""Runs a program the way the megakernel does, one task at a time in a random order that
its events allow, and returns the results. `execute_job` runs the programs of an NVSHMEM
job together: one per PE, each with its own memory, puts landing in the peer's symmetric
buffers, and a SIGNAL_WAIT task held back until its signal word has counted enough."""

from __future__ import annotations

import numpy as np

from jax_mpk import program as fmt
from jax_mpk.reference.kinds import SEMANTICS
from jax_mpk.reference.memory import Memory, RaceError, TaskAccess


def execute(program: fmt.Program, args: list[np.ndarray], results: list[tuple],
            aliases: dict[int, int] | None = None, seed: int = 0,
            order: list[int] | None = None,
            symmetric: dict[int, np.ndarray] | None = None) -> list[np.ndarray]:
    """Run program on args; results[i] is (shape, dtype) of result i; aliases maps a result
    to the argument it is written in place of; `order`, if given, receives the task ids in
    the order they ran; `symmetric` gives initial bytes of symmetric buffers by id. Raises
    RaceError on a race in the graph."""
    if program.num_pes > 1:
        raise ValueError(f"the program is PE {program.pe} of {program.num_pes}: run the job's "
                         "programs together with execute_job")
    ran: list[tuple[int, int]] = []
    (outputs,) = execute_job([program], [args], [results], [aliases or {}], seed,
                             [symmetric or {}], ran)
    if order is not None:
        order.extend(t for _, t in ran)
    return outputs


class _Pe:
    """One PE's program, memory and event counters during a job."""

    def __init__(self, program, args, aliases, symmetric, ancestors, first_id):
        self.program = program
        self.memory = Memory(program, args, aliases, symmetric, ancestors)
        self.first_id = first_id  # global task id of its task 0 (task ids index the race map)
        tasks, events = program.tasks, program.events
        self.waits_on = np.empty(len(tasks), np.int64)
        for e, event in enumerate(events):
            self.waits_on[int(event["first_task"]):int(event["last_task"])] = e
        self.triggered_by: list[list[int]] = [[] for _ in events]
        for t in range(len(tasks)):
            for e in self.triggers(t):
                if not fmt.is_nvshmem_event(e):
                    self.triggered_by[e].append(t)
        self.counters = np.zeros(len(events), np.int64)
        self.signals = np.zeros(program.num_signals, np.int64)
        self.signal_ancestors = [0] * program.num_signals
        self.done = 0

    def triggers(self, t: int) -> list[int]:
        task = self.program.tasks[t]
        first = int(task["first_trigger"])
        return [int(e) for e in self.program.triggers[first:first + int(task["num_triggers"])]]

    def launched(self, event: int) -> range:
        e = self.program.events[event]
        return range(int(e["first_task"]), int(e["last_task"]))


def execute_job(programs: list[fmt.Program], args: list[list[np.ndarray]],
                results: list[list[tuple]], aliases: list[dict[int, int]] | None = None,
                seed: int = 0, symmetric: list[dict[int, np.ndarray]] | None = None,
                order: list[tuple[int, int]] | None = None) -> list[list[np.ndarray]]:
    """execute() for the programs of an NVSHMEM job, programs[pe] being PE pe's; returns each
    PE's results. `order` receives (pe, task) in the order they ran."""
    n = len(programs)
    for pe, program in enumerate(programs):
        if n > 1 and (program.num_pes != n or program.pe != pe):
            raise ValueError(f"program {pe} was compiled for PE {program.pe} of "
                             f"{program.num_pes}, not PE {pe} of {n}")
    aliases = aliases or [{} for _ in programs]
    symmetric = symmetric or [{} for _ in programs]
    ancestors: dict[int, int] = {}
    pes, first_id = [], 0
    for pe, program in enumerate(programs):
        pes.append(_Pe(program, args[pe], aliases[pe], symmetric[pe], ancestors, first_id))
        first_id += len(program.tasks)
    for p in pes:
        p.memory.peers = [q.memory for q in pes]

    rng = np.random.default_rng(seed)
    ready = [(pe, t) for pe, p in enumerate(pes) for t in p.launched(p.program.start_event)]
    blocked: list[tuple[int, int]] = []  # SIGNAL_WAIT tasks whose word has not counted enough
    while ready:
        pe, t = ready.pop(int(rng.integers(len(ready))))
        p = pes[pe]
        task = p.program.tasks[t]
        kind = int(task["kind"])
        if kind == fmt.TaskKind.SIGNAL_WAIT and not _signalled(p, task["dims"]):
            blocked.append((pe, t))
            continue
        g = p.first_id + t
        ancestors[g] = _ancestors(ancestors, p.first_id, p.triggered_by[p.waits_on[t]])
        if kind == fmt.TaskKind.SIGNAL_WAIT:
            word = fmt.nvshmem_event_word(int(task["dims"][0]) & 0xFFFFFFFF)
            ancestors[g] |= p.signal_ancestors[word]
        first = int(task["first_operand"])
        operands = p.program.operands[first:first + int(task["num_operands"])]
        label = f"task {t} ({_kind_name(kind)})" + (f" of PE {pe}" if n > 1 else "")
        if kind not in SEMANTICS:
            raise RaceError(f"{label} has no reference semantics")
        SEMANTICS[kind](TaskAccess(p.memory, g, operands, label), task["dims"])
        p.done += 1
        if order is not None:
            order.append((pe, t))
        for e in p.triggers(t):
            if fmt.is_nvshmem_event(e):
                target, word = fmt.nvshmem_event_pe(e), fmt.nvshmem_event_word(e)
                q = pes[target]
                q.signals[word] += 1
                q.signal_ancestors[word] |= ancestors[g] | (1 << g)
                woken = [(bp, bt) for bp, bt in blocked if bp == target]
                blocked = [b for b in blocked if b[0] != target]
                ready.extend(woken)  # re-checked when picked
                continue
            p.counters[e] += 1
            if p.counters[e] == p.program.events[e]["threshold"] and e != p.program.end_event:
                ready.extend((pe, u) for u in p.launched(e))
    if blocked:
        pe, t = blocked[0]
        dims = pes[pe].program.tasks[t]["dims"]
        word = fmt.nvshmem_event_word(int(dims[0]) & 0xFFFFFFFF)
        raise RaceError(f"the job stalls: task {t} (SIGNAL_WAIT) of PE {pe} waits for signal word "
                        f"{word}, which counted {pes[pe].signals[word]} of {int(dims[1])}: "
                        "no task signals it enough")
    outputs = []
    for pe, p in enumerate(pes):
        end = p.program.events[p.program.end_event]
        if p.done != len(p.program.tasks) or p.counters[p.program.end_event] != end["threshold"]:
            raise RaceError(f"the program{f' of PE {pe}' if n > 1 else ''} stalls: {p.done} of "
                            f"{len(p.program.tasks)} tasks ran and the end event counted "
                            f"{p.counters[p.program.end_event]} of {end['threshold']}")
        outputs.append(_results(p.memory, results[pe], aliases[pe]))
    return outputs


def _signalled(p: _Pe, dims) -> bool:
    """One iteration runs: a lag-1 wait (for the previous iteration's signals) never blocks."""
    needed = int(dims[1]) * (1 - int(dims[2]))
    return p.signals[fmt.nvshmem_event_word(int(dims[0]) & 0xFFFFFFFF)] >= needed


def _results(memory: Memory, results: list[tuple], aliases: dict[int, int]) -> list[np.ndarray]:
    outputs = []
    for i, (shape, dtype) in enumerate(results):
        region = memory.rets[i] if i in memory.rets else memory.args[aliases[i]]
        if i not in aliases and np.any(region.writer == -2):
            raise RaceError(f"result {i} is not fully written by the program")
        outputs.append(region.data.view(np.dtype(dtype)).reshape(shape).copy())
    return outputs


def _ancestors(ancestors: dict[int, int], first_id: int, producers: list[int]) -> int:
    reach = 0
    for p in producers:
        reach |= ancestors[first_id + p] | (1 << (first_id + p))
    return reach


def _kind_name(kind: int) -> str:
    try:
        return fmt.TaskKind(kind).name
    except ValueError:
        return f"kind {kind}"
