"""Task graphs: tasks with dependencies, planned into events and a `Program`.

Event planning follows the MPK design: tasks that depend on the same set of
producers share one event whose threshold is the size of that set; every
producer triggers the events of the groups it feeds; sources hang off the
start event and sinks trigger the end-of-graph event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jax_mpk import program as fmt

DEFAULT_WATCHDOG_NS = 5_000_000_000
DEFAULT_WORKER_QUEUE_CAPACITY = 256
WORKSPACE_ALIGN = 256


class GraphError(ValueError):
    """A task graph that cannot become a valid program."""


@dataclasses.dataclass(frozen=True)
class Operand:
    slot: int
    offset: int = 0
    nbytes: int = 0
    iteration_stride: int = 0


@dataclasses.dataclass
class _Task:
    kind: int
    operands: list[Operand]
    dims: list[int]
    deps: list[int]
    name: str
    signals: list[int]  # tagged NVSHMEM event ids it signals after it ran
    flags: int = 0  # fmt.TASK_* bits the compiler sets (TASK_PREFETCH)


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    num_workers: int = 132 - 1
    num_schedulers: int = 4
    num_iterations: int = 1
    watchdog_ns: int = DEFAULT_WATCHDOG_NS
    worker_queue_capacity: int = DEFAULT_WORKER_QUEUE_CAPACITY
    # "dynamic": scheduler warps dispatch tasks as events fire (the MPK seed).
    # "static": each worker walks a compiled list of its tasks, waiting on
    # event counters; no scheduler on the critical path.
    schedule: str = "dynamic"
    # Static placement: "locality" runs a lone task on its producers' worker
    # when they share one, which turns the hop into a block barrier;
    # "round_robin" spreads every task, so each dependency crosses SMs.
    placement: str = "locality"
    # Timeline entries recorded per worker (0: off); see jax_mpk/profile.py.
    profile_capacity: int = 0
    # Tests: results and intermediates are filled with NaN bytes before each launch, so an
    # element no task writes shows (fmt.PROGRAM_POISON_RESULTS).
    poison_results: bool = False
    # A launch returns once it is queued, as jax.jit's do; its failure is reported by a later
    # launch or runtime.check_launches(), and fills its results with NaN
    # (fmt.PROGRAM_DEFER_ERRORS).
    defer_errors: bool = False

    @classmethod
    def for_sm_count(cls, sm_count: int, **overrides) -> RuntimeConfig:
        """One worker block per SM; the dynamic schedule gives up SMs for its
        blocks of scheduler warps, the static one runs no scheduler."""
        schedulers = overrides.pop("num_schedulers", fmt.SCHEDULERS_PER_BLOCK)
        blocks = -(-schedulers // fmt.SCHEDULERS_PER_BLOCK)
        if overrides.get("schedule") == "static":
            blocks = 0
        workers = overrides.pop("num_workers", max(1, sm_count - blocks))
        return cls(num_workers=workers, num_schedulers=schedulers, **overrides)


class TaskGraph:
    def __init__(self) -> None:
        self._tasks: list[_Task] = []
        self._slots: list[tuple[int, int, int, int]] = []  # source, index, offset, bytes
        self._workspace_bytes = 0
        self._task_counters = 0
        self._constants = bytearray()
        self._pe, self._num_pes = 0, 0
        self._signal_slot, self._num_signals = 0, 0
        self._next_signal = 0

    # Slots -----------------------------------------------------------------
    def arg(self, index: int, nbytes: int) -> int:
        return self._add_slot(fmt.SlotSource.ARG, index, 0, nbytes)

    def ret(self, index: int, nbytes: int) -> int:
        return self._add_slot(fmt.SlotSource.RET, index, 0, nbytes)

    def workspace(self, nbytes: int) -> int:
        """An intermediate buffer in the workspace, after the control region."""
        offset = self._workspace_bytes
        self._workspace_bytes = _align(offset + nbytes, WORKSPACE_ALIGN)
        return self._add_slot(fmt.SlotSource.WORKSPACE, 0, offset, nbytes)

    def task_counters(self, count: int) -> int:
        """`count` uint64 words that tasks count arrivals in themselves (atomically, outside
        the events), zero at each launch; returns their slot."""
        first = self._task_counters
        self._task_counters += count
        return self._add_slot(fmt.SlotSource.TASK_COUNTERS, 0, 8 * first, 8 * count)

    def constant(self, data: np.ndarray) -> int:
        """A buffer uploaded once per call site with the program."""
        raw = np.ascontiguousarray(data).tobytes()
        offset = _align(len(self._constants), WORKSPACE_ALIGN)
        self._constants.extend(b"\0" * (offset - len(self._constants)))
        self._constants.extend(raw)
        return self._add_slot(fmt.SlotSource.CONSTANT, 0, offset, len(raw))

    def symmetric(self, buffer_id: int, nbytes: int, offset: int = 0) -> int:
        """Bytes [offset, offset + nbytes) of symmetric buffer `buffer_id`; needs `nvshmem`."""
        return self._add_slot(fmt.SlotSource.SYMMETRIC, buffer_id, offset, nbytes)

    # NVSHMEM ---------------------------------------------------------------
    def nvshmem(self, pe: int, num_pes: int) -> None:
        """The program runs on PE `pe` of an NVSHMEM job of `num_pes` PEs."""
        if not 0 <= pe < num_pes <= fmt.MAX_PES:
            raise GraphError(f"PE {pe} of {num_pes}: a program addresses 1 to {fmt.MAX_PES} PEs")
        self._pe, self._num_pes = pe, num_pes

    @property
    def pe(self) -> int:
        return self._pe

    @property
    def num_pes(self) -> int:
        return self._num_pes

    def signal_words(self, buffer_id: int, count: int, offset: int = 0) -> int:
        """Uses `count` uint64 words of symmetric buffer `buffer_id` from byte `offset` as the
        signal words NVSHMEM events name (fmt.nvshmem_event(pe, word)); returns their slot.
        Every PE's program must name the same words, and a signal buffer serves one program:
        its words count signals across launches."""
        if not self._num_pes:
            raise GraphError("declare the NVSHMEM job (TaskGraph.nvshmem) before its signal words")
        if not 0 < count <= fmt.MAX_SIGNALS or offset % 8:
            raise GraphError(f"{count} signal words at byte {offset}: need 1 to {fmt.MAX_SIGNALS}, "
                             "8-byte aligned")
        self._signal_slot = self.symmetric(buffer_id, 8 * count, offset)
        self._num_signals = count
        return self._signal_slot

    def take_signal_words(self, count: int) -> int:
        """The first of `count` signal words no earlier caller took."""
        first = self._next_signal
        if first + count > self._num_signals:
            raise GraphError(f"the program's {self._num_signals} signal words are used up: "
                             f"{first} taken, {count} more asked for (TaskGraph.signal_words)")
        self._next_signal = first + count
        return first

    def _add_slot(self, source, index, offset, nbytes) -> int:
        if len(self._slots) == fmt.MAX_SLOTS:
            raise GraphError(f"the graph needs more than {fmt.MAX_SLOTS} buffer slots")
        self._slots.append((int(source), index, offset, nbytes))
        return len(self._slots) - 1

    # Tasks -----------------------------------------------------------------
    def add_task(self, kind: int, operands: Sequence[Operand] = (), dims: Sequence[int] = (),
                 deps: Sequence[int] = (), name: str = "", signals: Sequence[int] = (),
                 flags: int = 0) -> int:
        """A task; `signals` are NVSHMEM events (fmt.nvshmem_event) it signals once it ran."""
        if len(dims) > fmt.MAX_TASK_DIMS:
            raise GraphError(f"task {name or kind} has {len(dims)} dims; at most "
                             f"{fmt.MAX_TASK_DIMS} fit a task descriptor")
        if deps and (min(deps) < 0 or max(deps) >= len(self._tasks)):
            unknown = next(d for d in deps if not 0 <= d < len(self._tasks))
            raise GraphError(f"task {name or kind} depends on unknown task {unknown}")
        for e in signals:
            if not fmt.is_nvshmem_event(e):
                raise GraphError(f"task {name or kind} signals {e}, which is not an NVSHMEM "
                                 "event id")
        # Dims are 32-bit words: a value in [2^31, 2^32) (a tagged event id) is stored as int32.
        words = [int(d) - (1 << 32) if 1 << 31 <= int(d) < 1 << 32 else int(d) for d in dims]
        self._tasks.append(_Task(int(kind), list(operands), words, sorted(set(deps)), name,
                                 [int(e) for e in signals], int(flags)))
        return len(self._tasks) - 1

    @property
    def num_tasks(self) -> int:
        return len(self._tasks)

    def kind_of(self, task: int) -> int:
        return self._tasks[task].kind

    # Planning --------------------------------------------------------------
    def build(self, config: RuntimeConfig, num_args: int, num_rets: int) -> BuiltProgram:
        if not self._tasks:
            raise GraphError("the graph has no tasks")
        if not 1 <= config.num_iterations <= fmt.MAX_ITERATIONS:
            raise GraphError(f"num_iterations must be in [1, {fmt.MAX_ITERATIONS}]")
        if config.placement not in ("locality", "round_robin"):
            raise GraphError("placement must be 'locality' or 'round_robin', "
                             f"not {config.placement!r}")
        if config.schedule not in ("dynamic", "static"):
            raise GraphError(f"schedule must be 'dynamic' or 'static', not {config.schedule!r}")
        static = config.schedule == "static"
        if static:  # queues and schedulers stay unused: keep the control region small
            config = dataclasses.replace(config, num_schedulers=1, worker_queue_capacity=1)
        if not 1 <= config.num_schedulers <= config.num_workers:
            raise GraphError("need at least one scheduler and no more schedulers than workers")

        order = range(len(self._tasks))  # deps name earlier tasks: already topological
        succs = [[] for _ in self._tasks]
        for t, task in enumerate(self._tasks):
            for d in task.deps:
                succs[d].append(t)

        # Group tasks by their producer set, groups in order of first appearance.
        group_of: dict[tuple[int, ...], int] = {}
        group_of_task = [0] * len(self._tasks)
        members: list[list[int]] = []
        for t in order:
            key = tuple(self._tasks[t].deps)
            if key not in group_of:
                group_of[key] = len(members)
                members.append([])
            group_of_task[t] = group_of[key]
            members[group_of[key]].append(t)
        if () not in group_of:
            raise GraphError("the graph has no source task")
        keys = list(group_of)

        # Events: one per group (the source group is the start event), then end.
        num_events = len(members) + 1
        if num_events >= fmt.MAX_EVENTS:
            raise GraphError(f"the graph needs {num_events} events; at most "
                             f"{fmt.MAX_EVENTS - 1} fit the scheduler queues")
        start_event = group_of[()]
        end_event = len(members)
        index_of = np.empty(len(self._tasks), np.int64)  # user task id -> program task index
        program_order = [t for group in members for t in group]
        index_of[program_order] = np.arange(len(program_order))

        events = np.zeros(num_events, fmt.EVENT)
        per_scheduler = max(1, config.num_workers // config.num_schedulers)
        routed = np.zeros(config.num_schedulers, np.int64)
        next_owner = 0
        first = 0
        for g, group in enumerate(members):
            events[g]["threshold"] = len(keys[g])
            events[g]["first_task"] = first
            events[g]["last_task"] = first + len(group)
            first += len(group)
            if len(group) > per_scheduler and config.num_schedulers > 1:
                events[g]["kind"] = fmt.EventKind.LAUNCH_MASSIVE
                routed += 1
            else:
                owner = 0 if g == start_event else next_owner
                events[g]["kind"] = fmt.EventKind.LAUNCH
                events[g]["scheduler"] = owner
                routed[owner] += 1
                if g != start_event:
                    next_owner = (next_owner + 1) % config.num_schedulers
        sinks = [t for t in range(len(self._tasks)) if not succs[t]]
        events[end_event]["threshold"] = len(sinks)
        events[end_event]["first_task"] = events[end_event]["last_task"] = len(self._tasks)
        events[end_event]["kind"] = fmt.EventKind.END_OF_GRAPH
        routed[0] += 1
        # Room for the start of the next iteration and for termination.
        sched_capacity = 1 if static else _pow2(int(routed.max()) + 3)

        # The task table by column, in program order (numpy's per-element stores cost more).
        columns: dict[str, list] = {name: [] for name in fmt.TASK.names}
        no_dims = [0] * fmt.MAX_TASK_DIMS
        triggers: list[int] = []
        operands: list[tuple] = []
        fired_by: dict[int, list[int]] = {}
        for t in program_order:
            task = self._tasks[t]
            fired = sorted({group_of_task[s] for s in succs[t]})
            if not fired:
                fired = [end_event]
            fired_by[t] = fired
            columns["kind"].append(task.kind)
            columns["flags"].append(task.flags)
            columns["num_operands"].append(len(task.operands))
            columns["first_operand"].append(len(operands))
            columns["first_trigger"].append(len(triggers))
            columns["num_triggers"].append(len(fired) + len(task.signals))
            columns["dims"].append(task.dims + no_dims[len(task.dims):])
            triggers.extend(fired)
            triggers.extend(task.signals)
            operands.extend((o.slot, 0, o.offset, o.iteration_stride, o.nbytes)
                            for o in task.operands)
        tasks = np.zeros(len(self._tasks), fmt.TASK)
        for name, column in columns.items():
            tasks[name] = column

        layout = fmt.ControlLayout.of(num_events, config.num_workers, config.num_schedulers,
                                      config.worker_queue_capacity, sched_capacity,
                                      config.profile_capacity, self._task_counters)
        slots = np.array(self._slots, dtype=np.uint64).reshape(-1, 4)
        slot_array = np.zeros(len(self._slots), fmt.SLOT)
        for name, column in zip(fmt.SLOT.names, slots.T, strict=True):
            slot_array[name] = column
        is_workspace = slot_array["source"] == fmt.SlotSource.WORKSPACE
        slot_array["offset"][is_workspace] += layout.total

        header = np.zeros((), fmt.HEADER)
        header["magic"], header["version"] = fmt.MAGIC, fmt.VERSION
        header["num_tasks"] = len(self._tasks)
        header["num_events"] = num_events
        header["num_triggers"] = len(triggers)
        header["num_operands"] = len(operands)
        header["num_slots"] = len(self._slots)
        header["num_args"], header["num_rets"] = num_args, num_rets
        header["num_workers"] = config.num_workers
        header["num_schedulers"] = config.num_schedulers
        header["worker_queue_capacity"] = config.worker_queue_capacity
        header["sched_queue_capacity"] = sched_capacity
        header["num_iterations"] = config.num_iterations
        header["start_event"], header["end_event"] = start_event, end_event
        header["watchdog_ns"] = config.watchdog_ns
        header["control_bytes"] = layout.total
        header["workspace_bytes"] = layout.total + self._workspace_bytes
        header["constant_bytes"] = len(self._constants)
        header["schedule"] = fmt.Schedule.STATIC if static else fmt.Schedule.DYNAMIC
        header["profile_capacity"] = config.profile_capacity
        header["num_pes"], header["pe"] = self._num_pes, self._pe
        header["signal_slot"], header["num_signals"] = self._signal_slot, self._num_signals
        header["flags"] = ((fmt.PROGRAM_POISON_RESULTS if config.poison_results else 0)
                           | (fmt.PROGRAM_DEFER_ERRORS if config.defer_errors else 0))
        header["num_task_counters"] = self._task_counters

        # Static lists: program order is topological, so lists in increasing
        # order never wait on a task queued behind them.
        worker_task_begin = np.zeros(config.num_workers + 1, np.uint32)
        worker_tasks = np.zeros(0, fmt.WORKER_TASK)
        if static:
            n = len(self._tasks)
            owner = _place_static(members, keys, config)
            waits = np.repeat(np.arange(len(members), dtype=np.uint32), [len(m) for m in members])
            for g, group in enumerate(members):
                producers = keys[g]
                if producers and len({owner[d] for d in producers}) == 1:
                    for t in group:
                        if owner[t] == owner[producers[0]]:
                            waits[index_of[t]] = fmt.NO_WAIT
            # Triggers whose every consumer skips its wait need no release.
            local = np.array([all(waits[index_of[u]] == fmt.NO_WAIT for u in group)
                              for group in members] + [False])
            for t, fired in fired_by.items():
                if local[fired].all() and not self._tasks[t].signals:
                    tasks[index_of[t]]["flags"] |= fmt.TASK_RELAXED_TRIGGERS
            owner_by_index = owner[program_order]
            order = np.argsort(owner_by_index, kind="stable")
            worker_tasks = np.zeros(n, fmt.WORKER_TASK)
            worker_tasks["task"] = order
            worker_tasks["wait_event"] = waits[order]
            worker_task_begin[1:] = np.cumsum(np.bincount(owner_by_index,
                                                          minlength=config.num_workers))
            header["num_worker_tasks"] = n

        program = fmt.Program(
            header=header,
            tasks=tasks,
            events=events,
            triggers=np.array(triggers, fmt.TRIGGER),
            operands=np.array(operands, fmt.OPERAND),
            slots=slot_array,
            worker_task_begin=worker_task_begin,
            worker_tasks=worker_tasks,
            constants=np.frombuffer(bytes(self._constants), np.uint8).copy(),
        )
        return BuiltProgram(program, index_of)


def _place_static(members, keys, config) -> np.ndarray:
    """Worker of each task (by user id) for the static schedule."""
    owner = np.zeros(sum(len(m) for m in members), np.int64)
    cursor = 0
    for group, producers in zip(members, keys, strict=True):
        homes = {owner[d] for d in producers}
        if config.placement == "locality" and len(group) == 1 and len(homes) == 1:
            owner[group[0]] = homes.pop()
            continue
        for t in group:
            owner[t] = cursor
            cursor = (cursor + 1) % config.num_workers
    return owner


@dataclasses.dataclass
class BuiltProgram:
    program: fmt.Program
    task_index: np.ndarray  # user task id -> program task index


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())
