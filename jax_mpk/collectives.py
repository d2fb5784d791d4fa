"""Collectives over NVSHMEM as task-graph builders: put-with-signal, allreduce, allgather.

Each builder adds tasks to one PE's TaskGraph (declared with `TaskGraph.nvshmem` and given
signal words with `TaskGraph.signal_words`); every PE builds the same calls in the same
order, so the symmetric offsets and signal words agree. Tiles are independent: tile t of a
collective waits only for tile t of its peers. Peers are reached by load/store (NVLink, or
the same GPU); NVLink multicast stays off.

A tile's protocol, per iteration, on PE `me` of P:
  1. SIGNAL_WAIT ack[t] >= P x (iterations before this one): every PE consumed the tile
     this PE put into its buffer last iteration, so the buffer may be overwritten;
  2. PUT the tile into row `me` of every PE's receive buffer, each signalling ready[t]
     on that PE;
  3. SIGNAL_WAIT ready[t] >= P x (iterations so far): every PE's row arrived;
  4. consume the rows (REDUCE, or COPY for allgather), then signal ack[t] on every PE.
"""

from __future__ import annotations

import numpy as np

from jax_mpk import program as fmt
from jax_mpk import taskgraph as tg
from jax_mpk.task_kinds import Reducer, dtype_code

DEFAULT_TILE_BYTES = 64 * 1024


def put_signal(g: tg.TaskGraph, dst_slot: int, dst_offset: int, src: tg.Operand, pe: int,
               event: int, deps=(), name: str = "") -> int:
    """A PUT of `src` into bytes [dst_offset, + src.nbytes) of symmetric slot `dst_slot` in
    PE `pe`'s copy, then a signal of NVSHMEM event `event` (fmt.nvshmem_event) once the
    bytes are visible there."""
    n = src.nbytes
    return g.add_task(fmt.TaskKind.PUT, [tg.Operand(dst_slot, dst_offset, n), src],
                      [n & 0xFFFFFFFF, n >> 32, pe], deps, name, signals=[event])


def signal_wait(g: tg.TaskGraph, word: int, threshold: int, lag: int = 0, deps=(),
                name: str = "") -> int:
    """A SIGNAL_WAIT until this PE's signal word `word` counted `threshold` signals per
    iteration (lag 1: per iteration before this one)."""
    event = fmt.nvshmem_event(g.pe, word)
    return g.add_task(fmt.TaskKind.SIGNAL_WAIT, [], [event, threshold, lag], deps, name)


def _tiles(n: int, itemsize: int, tile_bytes: int) -> list[tuple[int, int]]:
    step = max(1, tile_bytes // itemsize)
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def signal_words_needed(nbytes: int, dtype, tile_bytes: int = DEFAULT_TILE_BYTES) -> int:
    """The signal words an allreduce or allgather of `nbytes` takes (two per tile)."""
    itemsize = np.dtype(dtype).itemsize
    return 2 * len(_tiles(nbytes // itemsize, itemsize, tile_bytes))


def _exchange(g: tg.TaskGraph, x: tg.Operand, dtype, buffer: int, tile_bytes: int, deps,
              consume, offset: int = 0) -> list[int]:
    """Steps 1-4 above; consume(lo, hi, rows_slot, wait) adds step 4's task for a tile and
    returns its id."""
    itemsize = np.dtype(dtype).itemsize
    if x.nbytes % itemsize:
        raise tg.GraphError(f"{x.nbytes} bytes are not a whole number of {np.dtype(dtype)}")
    n, p, me = x.nbytes // itemsize, g.num_pes, g.pe
    rows = g.symmetric(buffer, p * n * itemsize, offset)
    tiles = _tiles(n, itemsize, tile_bytes)
    first = g.take_signal_words(2 * len(tiles))
    ready = [first + 2 * t for t in range(len(tiles))]
    ack = [first + 2 * t + 1 for t in range(len(tiles))]
    # Added phase by phase, so that program order puts every PUT before every wait: a
    # static worker never holds a wait in front of the PUT a peer waits for.
    acks = [signal_wait(g, ack[t], p, lag=1, deps=deps, name=f"ack {t}")
            for t in range(len(tiles))]
    puts = [[put_signal(g, rows, (me * n + lo) * itemsize,
                        tg.Operand(x.slot, x.offset + lo * itemsize, (hi - lo) * itemsize),
                        peer, fmt.nvshmem_event(peer, ready[t]), deps=[acks[t], *deps],
                        name=f"put {t} to {peer}") for peer in range(p)]
            for t, (lo, hi) in enumerate(tiles)]
    waits = [signal_wait(g, ready[t], p, deps=puts[t], name=f"rows {t}")
             for t in range(len(tiles))]
    return [consume(lo, hi, rows, waits[t], [fmt.nvshmem_event(q, ack[t]) for q in range(p)])
            for t, (lo, hi) in enumerate(tiles)]


def allreduce(g: tg.TaskGraph, x: tg.Operand, out: tg.Operand, dtype, buffer: int,
              tile_bytes: int = DEFAULT_TILE_BYTES, deps=(), offset: int = 0) -> list[int]:
    """out = the sum over PEs of x (a flat array of `dtype`), in float32 for float dtypes
    and in PE order, so every PE gets the same bits. `buffer` is a symmetric buffer of at
    least num_pes x x.nbytes bytes that only this collective uses. Returns the tasks that
    write out (one per tile). The rows start at byte `offset` of the buffer."""
    itemsize = np.dtype(dtype).itemsize
    n, p = x.nbytes // itemsize, g.num_pes
    code = int(dtype_code(dtype))
    if out.nbytes < x.nbytes:
        raise tg.GraphError(f"allreduce writes {x.nbytes} bytes into an output of {out.nbytes}")

    def reduce(lo, hi, rows, wait, acks):
        return g.add_task(fmt.TaskKind.REDUCE, [out, tg.Operand(rows, 0, p * n * itemsize)],
                          [1, p, n, int(Reducer.SUM), code, code, lo, hi - lo], [wait],
                          name=f"reduce {lo}:{hi}", signals=acks)

    return _exchange(g, x, dtype, buffer, tile_bytes, deps, reduce, offset)


def allgather(g: tg.TaskGraph, x: tg.Operand, out: tg.Operand, dtype, buffer: int,
              tile_bytes: int = DEFAULT_TILE_BYTES, deps=(), offset: int = 0) -> list[int]:
    """out[pe] = x of PE pe: out is [num_pes, x.nbytes] bytes. `buffer` is a symmetric
    buffer of at least num_pes x x.nbytes bytes from byte `offset` that only this
    collective uses. Returns the tasks that write out."""
    itemsize = np.dtype(dtype).itemsize
    n, p = x.nbytes // itemsize, g.num_pes
    if out.nbytes < p * x.nbytes:
        raise tg.GraphError(f"allgather of {p} x {x.nbytes} bytes into an output of {out.nbytes}")

    def copy(lo, hi, rows, wait, acks):
        # One COPY per row of the tile; the last one acknowledges, after all of them ran.
        copies = []
        for q in range(p):
            nbytes = (hi - lo) * itemsize
            at = (q * n + lo) * itemsize
            copies.append(g.add_task(fmt.TaskKind.COPY,
                                     [tg.Operand(out.slot, out.offset + at, nbytes),
                                      tg.Operand(rows, at, nbytes)],
                                     [nbytes & 0xFFFFFFFF, nbytes >> 32], [wait],
                                     name=f"gather {lo}:{hi} from {q}"))
        return g.add_task(fmt.TaskKind.NOOP, [], [], copies, name=f"gathered {lo}:{hi}",
                          signals=acks)

    return _exchange(g, x, dtype, buffer, tile_bytes, deps, copy, offset)


# Numpy semantics of the collectives over every PE's input at once.
def allreduce_reference(xs: list[np.ndarray]) -> np.ndarray:
    """What every PE's out holds: the PE-ordered float32 sum for float dtypes."""
    dtype = xs[0].dtype
    if np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16":
        total = np.zeros(xs[0].shape, np.float32)
        for x in xs:
            total = total + x.astype(np.float32)
        return total.astype(dtype)
    total = np.zeros(xs[0].shape, np.int64)
    for x in xs:
        total = total + x.astype(np.int64)
    return total.astype(dtype)


def allgather_reference(xs: list[np.ndarray]) -> np.ndarray:
    return np.stack(xs)
