"""Tensor parallelism: one program per rank, collectives over NVSHMEM symmetric buffers.

The user writes the per-rank function the way a shard_map body reads, with
`jax.lax.psum(x, axis)` after each row-parallel linear (and `jax.lax.all_gather` where a
rank needs every rank's piece), and compiles it once per rank:

    fns = [jax_mpk.jit(step, tensor_parallel=TensorParallel("tp", rank, 2)) for rank in (0, 1)]

Each rank's program declares the NVSHMEM job (`TaskGraph.nvshmem(rank, size)`) and names
two symmetric buffers by these ids: SIGNAL_BUFFER (the uint64 signal words) and
RECEIVE_BUFFER (every collective's receive rows, one region each, 256-byte aligned). Every
rank traces the same function over the same shapes, so the ranks' buffer sizes, offsets
and signal words agree; `Compiled.symmetric_buffers` gives the bytes of each, and a runner
that allocated them under other ids rewrites the program with `bind_symmetric`.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jax_mpk import program as fmt
from jax_mpk.reference.executor import execute_job

SIGNAL_BUFFER = 0
RECEIVE_BUFFER = 1


@dataclasses.dataclass(frozen=True)
class TensorParallel:
    """Compile for rank `rank` of `size` over the mesh axis named `axis`."""

    axis: str
    rank: int
    size: int

    def __post_init__(self):
        if not isinstance(self.axis, str):
            raise TypeError(f"the tensor-parallel axis is a name (str), not {self.axis!r}")
        if not 1 <= self.size <= fmt.MAX_PES or not 0 <= self.rank < self.size:
            raise ValueError(f"rank {self.rank} of {self.size}: tensor parallelism runs 1 to "
                             f"{fmt.MAX_PES} ranks, each rank in [0, size)")


def bind_symmetric(program: fmt.Program, ids: dict[int, int]) -> fmt.Program:
    """A copy of program whose symmetric slots name ids[i] where they named buffer i
    (e.g. {SIGNAL_BUFFER: signals.id, RECEIVE_BUFFER: rows.id} after
    jax_mpk.distributed.allocate)."""
    bound = fmt.Program.from_bytes(program.to_bytes())
    symmetric = bound.slots["source"] == fmt.SlotSource.SYMMETRIC
    for i, slot in enumerate(bound.slots):
        if symmetric[i]:
            old = int(slot["index"])
            if old not in ids:
                raise ValueError(f"the program names symmetric buffer {old}; ids gives "
                                 f"{sorted(ids)}")
            bound.slots["index"][i] = ids[old]
    return bound


def register_on_symmetric_buffers(compiled):
    """Allocates the symmetric buffers a rank's program names (collective: every rank does
    it for the same step, in the same order, when it first launches) and registers the
    program bound to them; the buffers live as long as the registered program."""
    from jax_mpk import distributed, runtime

    tp = compiled.tensor_parallel
    job = distributed.job()
    if (job.pe, job.num_pes) != (tp.rank, tp.size):
        raise ValueError(f"the function is compiled for rank {tp.rank} of {tp.size}, but this "
                         f"process is NVSHMEM PE {job.pe} of {job.num_pes}")
    buffers = {i: distributed.allocate(n) for i, n in sorted(compiled.symmetric_buffers.items())}
    registered = runtime.RegisteredProgram(
        bind_symmetric(compiled.program.program, {i: b.id for i, b in buffers.items()}))
    registered.symmetric_buffers = buffers
    return registered


def run_reference(functions, args, seed: int = 0):
    """Runs rank r's `functions[r]` (a jax_mpk.jit with tensor_parallel rank r) on
    `args[r]` (a tuple of its arguments), all ranks together on the numpy reference
    executor with their puts and signals crossing between them; returns each rank's
    results. Raises RaceError on a race between tasks, including across ranks."""
    if len(functions) != len(args):
        raise ValueError(f"{len(functions)} functions for {len(args)} argument tuples")
    compiled, flat = zip(*(f.compile_for(tuple(a)) for f, a in zip(functions, args,
                                                                      strict=True)), strict=True)
    for rank, c in enumerate(compiled):
        tp = c.tensor_parallel
        if tp is None or tp.rank != rank or tp.size != len(functions):
            raise ValueError(f"function {rank} is compiled for {tp}, not rank {rank} of "
                             f"{len(functions)}")
    outs = execute_job([c.program.program for c in compiled],
                       [[np.asarray(x) for x in f] for f in flat],
                       [c.results for c in compiled], [c.aliases for c in compiled], seed)
    return [jax.tree.unflatten(c.out_tree, [jax.numpy.asarray(o) for o in o_rank])
            for c, o_rank in zip(compiled, outs, strict=True)]
