"""Byte memory of one program run, with a writer map that finds races between tasks.

Every byte remembers the task that last wrote it (-1: given by the caller, -2: never
written). A task may read a byte only if its writer happens before the task (an ancestor
through fired events); a task may write a byte only if every earlier writer and reader of
it happens before the task. Anything else is a race in the graph.
"""

from __future__ import annotations

import numpy as np

from jax_mpk import program as fmt

GIVEN = -1
UNWRITTEN = -2


class RaceError(RuntimeError):
    """A task touched bytes in an order its events do not guarantee."""


class Region:
    def __init__(self, name: str, data: np.ndarray, initial: int):
        self.name = name
        self.data = data  # uint8
        self.writer = np.full(data.size, initial, np.int32)
        self.reads: list[tuple[int, int, int, np.ndarray]] = []  # task, lo, hi, addresses


class Memory:
    """One PE's memory. `symmetric` gives initial bytes of symmetric buffers by id (others
    start zeroed, as jax_mpk.distributed.allocate leaves them); `ancestors` is shared by the
    PEs of a job, whose task ids are then global."""

    def __init__(self, program: fmt.Program, args: list[np.ndarray],
                 aliases: dict[int, int], symmetric: dict[int, np.ndarray] | None = None,
                 ancestors: dict[int, int] | None = None):
        self.program = program
        self.args = [Region(f"argument {i}", np.frombuffer(bytearray(np.ascontiguousarray(a)
                                                                     .tobytes()), np.uint8),
                            GIVEN) for i, a in enumerate(args)]
        slots = program.slots
        self.rets: dict[int, Region] = {}
        for s in slots[slots["source"] == fmt.SlotSource.RET]:
            i = int(s["index"])
            if i in aliases:
                self.rets[i] = self.args[aliases[i]]
            else:
                self.rets[i] = Region(f"result {i}", np.zeros(int(s["bytes"]), np.uint8),
                                      UNWRITTEN)
        self.workspace = Region("workspace", np.zeros(program.workspace_bytes, np.uint8),
                                UNWRITTEN)
        self.constants = Region("constants", program.constants.copy(), GIVEN)
        self.task_counters = Region("task counters",
                                    np.zeros(8 * program.num_task_counters, np.uint8), GIVEN)
        self.symmetric: dict[int, Region] = {}
        symmetric = symmetric or {}
        for s in slots[slots["source"] == fmt.SlotSource.SYMMETRIC]:
            i, end = int(s["index"]), int(s["offset"]) + int(s["bytes"])
            given = np.frombuffer(np.ascontiguousarray(symmetric.get(i, np.zeros(0, np.uint8)))
                                  .tobytes(), np.uint8)
            size = max(end, given.size, self.symmetric[i].data.size if i in self.symmetric else 0)
            data = np.zeros(size, np.uint8)
            data[:given.size] = given
            self.symmetric[i] = Region(f"symmetric buffer {i} of PE {program.pe}", data, GIVEN)
        # task -> bitset of tasks that happen before it
        self.ancestors: dict[int, int] = {} if ancestors is None else ancestors
        self.peers: list[Memory] = [self]  # by PE, for puts

    def locate(self, operand) -> tuple[Region, int, int]:
        """(region, first byte, byte count) of a program operand."""
        slot = self.program.slots[int(operand["slot"])]
        source = fmt.SlotSource(int(slot["source"]))
        if source == fmt.SlotSource.ARG:
            region = self.args[int(slot["index"])]
        elif source == fmt.SlotSource.RET:
            region = self.rets[int(slot["index"])]
        elif source == fmt.SlotSource.WORKSPACE:
            region = self.workspace
        elif source == fmt.SlotSource.SYMMETRIC:
            region = self.symmetric[int(slot["index"])]
        elif source == fmt.SlotSource.TASK_COUNTERS:
            region = self.task_counters
        else:
            region = self.constants
        start = int(slot["offset"]) + int(operand["offset"])
        return region, start, int(operand["bytes"])


class TaskAccess:
    """What one task sees: its operands as typed loads and stores at element offsets."""

    def __init__(self, memory: Memory, task_id: int, operands: np.ndarray, label: str):
        self.memory = memory
        self.task = task_id
        self.operands = [memory.locate(o) for o in operands]
        self.label = label

    def on_pe(self, i: int, pe: int) -> TaskAccess:
        """This task's view with operand i (a symmetric buffer) in PE `pe`'s copy."""
        region, start, nbytes = self.operands[i]
        buffer = next((b for b, r in self.memory.symmetric.items() if r is region), None)
        if buffer is None:
            raise RaceError(f"{self.label} addresses operand {i} on PE {pe}, but it is not a "
                            "symmetric buffer")
        if not 0 <= pe < len(self.memory.peers):
            raise RaceError(f"{self.label} addresses PE {pe} of a job of "
                            f"{len(self.memory.peers)} PEs")
        view = TaskAccess.__new__(TaskAccess)
        view.memory, view.task, view.label = self.memory, self.task, self.label
        view.operands = list(self.operands)
        view.operands[i] = (self.memory.peers[pe].symmetric[buffer], start, nbytes)
        return view

    def subset(self, first: int, count: int) -> TaskAccess:
        """This task's view of its operands first .. first + count - 1 (a sequence step)."""
        view = TaskAccess.__new__(TaskAccess)
        view.memory, view.task, view.label = self.memory, self.task, self.label
        view.operands = self.operands[first:first + count]
        return view

    @property
    def num_operands(self) -> int:
        return len(self.operands)

    def _addresses(self, i: int, dtype: np.dtype, offsets) -> tuple[Region, np.ndarray]:
        region, start, nbytes = self.operands[i]
        offsets = np.asarray(offsets, np.int64)
        item = dtype.itemsize
        if offsets.size and (offsets.min() < 0 or (offsets.max() + 1) * item > nbytes):
            raise RaceError(f"{self.label} reaches outside operand {i} ({nbytes} bytes of "
                            f"{region.name}) at element {int(offsets.max())} of {dtype}")
        first = start + offsets * item
        return region, first[..., None] + np.arange(item)

    def load(self, i: int, dtype, offsets) -> np.ndarray:
        dtype = np.dtype(dtype)
        region, addresses = self._addresses(i, dtype, offsets)
        writers = region.writer[addresses]
        if np.any(writers == UNWRITTEN):
            raise RaceError(f"{self.label} reads bytes of {region.name} that no task has "
                            "written (no fired event produced them)")
        self._check_ordered(writers, region, "reads bytes of")
        if region is not self.memory.constants and addresses.size:
            region.reads.append((self.task, int(addresses.min()), int(addresses.max()),
                                 addresses.reshape(-1)))
        return region.data[addresses].reshape(-1).view(dtype).reshape(np.shape(offsets))

    def arrive(self, i: int, index: int) -> int:
        """Adds 1 to uint64 counter `index` of operand i (task counters) and returns the new
        count: an atomic, which orders itself, so no race check."""
        region, addresses = self._addresses(i, np.dtype(np.uint64), [index])
        word = addresses.reshape(-1)
        count = int(region.data[word].view(np.uint64)[0]) + 1
        region.data[word] = np.frombuffer(np.uint64(count).tobytes(), np.uint8)
        return count

    def load_after_arrivals(self, i: int, dtype, offsets) -> np.ndarray:
        """A load ordered by an arrival counter instead of the events: the last of the tasks
        counted reads what the others wrote before they arrived. Every byte must be written."""
        dtype = np.dtype(dtype)
        region, addresses = self._addresses(i, dtype, offsets)
        if np.any(region.writer[addresses] == UNWRITTEN):
            raise RaceError(f"{self.label} reads bytes of {region.name} that no task has "
                            "written before arriving")
        return region.data[addresses].reshape(-1).view(dtype).reshape(np.shape(offsets))

    def store(self, i: int, dtype, offsets, values) -> None:
        dtype = np.dtype(dtype)
        region, addresses = self._addresses(i, dtype, offsets)
        if region is self.memory.constants:
            raise RaceError(f"{self.label} writes the program's constants")
        self._check_ordered(region.writer[addresses], region, "overwrites bytes of")
        flat = addresses.reshape(-1)
        lo, hi = (int(flat.min()), int(flat.max())) if flat.size else (0, -1)
        for reader, read_lo, read_hi, read in region.reads:
            if (read_lo <= hi and lo <= read_hi and reader != self.task
                    and not self._before(reader) and np.isin(read, flat).any()):
                raise RaceError(f"{self.label} overwrites bytes of {region.name} that task "
                                f"{reader} reads, and no event orders the two")
        raw = np.ascontiguousarray(np.asarray(values, dtype).reshape(np.shape(offsets)))
        region.data[addresses] = raw.view(np.uint8).reshape(addresses.shape)
        region.writer[addresses] = self.task

    def _before(self, other: int) -> bool:
        return bool((self.memory.ancestors[self.task] >> other) & 1)

    def _check_ordered(self, writers: np.ndarray, region: Region, what: str) -> None:
        for w in np.unique(writers):
            if w >= 0 and w != self.task and not self._before(int(w)):
                raise RaceError(f"{self.label} {what} {region.name} that task {int(w)} "
                                "writes, and no event orders the two")
