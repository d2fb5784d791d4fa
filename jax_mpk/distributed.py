"""NVSHMEM beside JAX: one PE per JAX process, symmetric buffers beside the JAX arrays.

    jax.distributed.initialize(...)            # several processes; skip it for one
    job = jax_mpk.distributed.init(heap_bytes=64 << 20)
    recv = jax_mpk.distributed.allocate(job.num_pes * nbytes)   # collective, zeroed
    g.nvshmem(job.pe, job.num_pes); slot = g.symmetric(recv.id, recv.nbytes)

`init` shares NVSHMEM's unique id through the jax.distributed key-value store (a single
process without jax.distributed makes its own), and initializes NVSHMEM after the JAX
backend exists, on the CUDA device JAX uses, in the primary context XLA runs in. Only
NVSHMEM's host library is used: the megakernel reaches a peer's copy of a symmetric buffer
through the address nvshmem_ptr gives (NVLink, or the same GPU), so no NVSHMEM device code
is linked and the kernel is built as without NVSHMEM.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import re

import jax
import numpy as np

from jax_mpk import runtime

DEFAULT_HEAP_BYTES = 256 << 20
TIMEOUT_S = 120


@dataclasses.dataclass(frozen=True)
class Job:
    pe: int
    num_pes: int
    device: jax.Device
    heap_bytes: int


_job: Job | None = None
_barriers = 0


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def parse_heap_size(text: str) -> int:
    """Bytes of an NVSHMEM_SYMMETRIC_SIZE value: a number with an optional k/m/g/t suffix."""
    match = re.fullmatch(r"\s*(\d*\.?\d+)\s*([kKmMgGtT]?)\S*\s*", text)
    if not match:
        raise ValueError(f"NVSHMEM_SYMMETRIC_SIZE={text!r} is not a size such as 1073741824 "
                         "or 512m")
    scale = 1 << 10 * " kmgt".index(match.group(2).lower() or " ")
    return int(float(match.group(1)) * scale)


def init(heap_bytes: int | None = None, device: jax.Device | None = None,
         timeout_s: float = TIMEOUT_S) -> Job:
    """Initializes NVSHMEM as PE jax.process_index() of jax.process_count() on `device`
    (default: this process's first CUDA device) with a symmetric heap of `heap_bytes`
    (default: $NVSHMEM_SYMMETRIC_SIZE, else 256 MiB). Collective over the processes. A second
    call with the same arguments returns the same job; other arguments are an error."""
    global _job
    ext = runtime.extension()
    if not ext.build_info()["nvshmem"]:
        raise RuntimeError("jax_mpk was built without NVSHMEM: pip install nvidia-nvshmem-cu13, "
                           "then reinstall jax_mpk (the build prints whether it found NVSHMEM)")
    if heap_bytes is None:
        env = os.environ.get("NVSHMEM_SYMMETRIC_SIZE")
        heap_bytes = parse_heap_size(env) if env else DEFAULT_HEAP_BYTES
    if heap_bytes <= 0:
        raise ValueError(f"the symmetric heap needs a positive size, not {heap_bytes} bytes")
    if device is None:
        gpus = [d for d in jax.local_devices() if d.platform == "gpu"]
        if not gpus:
            raise RuntimeError("NVSHMEM needs a CUDA device, but JAX's local devices are "
                               f"{jax.local_devices()}")
        device = gpus[0]
    pe, num_pes = jax.process_index(), jax.process_count()
    if _job is not None:
        if (_job.pe, _job.num_pes, _job.device, _job.heap_bytes) == (pe, num_pes, device,
                                                                      heap_bytes):
            return _job
        raise RuntimeError(f"NVSHMEM is already initialized as {_job}; asked for PE {pe} of "
                           f"{num_pes} on {device} with a {heap_bytes}-byte heap")
    if num_pes == 1:
        unique_id = ext.nvshmem_unique_id()
    else:
        client = _client()
        if client is None:
            raise RuntimeError(f"{num_pes} JAX processes but no jax.distributed client: call "
                               "jax.distributed.initialize() before jax_mpk.distributed.init()")
        key = "jax_mpk/nvshmem/unique_id"
        if pe == 0:
            unique_id = ext.nvshmem_unique_id()
            client.key_value_set_bytes(key, unique_id)
        else:
            unique_id = client.blocking_key_value_get_bytes(key, int(timeout_s * 1000))
    ext.nvshmem_init(device.local_hardware_id, unique_id, pe, num_pes, heap_bytes)
    _job = Job(pe, num_pes, device, heap_bytes)
    atexit.register(finalize)
    return _job


def job() -> Job:
    if _job is None:
        raise RuntimeError("NVSHMEM is not initialized: call jax_mpk.distributed.init() first")
    return _job


def barrier(timeout_s: float = TIMEOUT_S) -> None:
    """Every PE reached this call (through the jax.distributed store; free with one PE)."""
    global _barriers
    if job().num_pes == 1:
        return
    _barriers += 1
    _client().wait_at_barrier(f"jax_mpk/nvshmem/barrier/{_barriers}", int(timeout_s * 1000))


class SymmetricBuffer:
    """A zero-initialized buffer with a copy on every PE at the same symmetric address; a
    program names it with TaskGraph.symmetric(buffer.id, ...)."""

    def __init__(self, nbytes: int):
        self.id, self.address = runtime.extension().symmetric_allocate(int(nbytes))
        self.nbytes = int(nbytes)

    def read(self, dtype=np.uint8, offset: int = 0, count: int | None = None) -> np.ndarray:
        """This PE's copy (or `count` elements of it from byte `offset`) as a numpy array."""
        dtype = np.dtype(dtype)
        count = (self.nbytes - offset) // dtype.itemsize if count is None else count
        raw = runtime.extension().symmetric_read(self.id, offset, count * dtype.itemsize)
        return np.frombuffer(raw, dtype).copy()

    def write(self, data: np.ndarray, offset: int = 0) -> None:
        runtime.extension().symmetric_write(self.id, offset,
                                            np.ascontiguousarray(data).tobytes())

    def reset_signals(self) -> None:
        """Zeroes this buffer on every PE (collective) and restarts its signal counts: needed
        after a launch that used it for signal words failed."""
        runtime.extension().symmetric_zero(self.id)
        barrier()

    def free(self) -> None:
        """Collective, like the allocation."""
        if self.id is not None:
            runtime.extension().symmetric_free(self.id)
            self.id = None

    def __repr__(self) -> str:
        return f"SymmetricBuffer(id={self.id}, nbytes={self.nbytes})"


def allocate(nbytes: int) -> SymmetricBuffer:
    """A symmetric buffer of `nbytes` on every PE, zeroed everywhere before this returns.
    Collective: every PE allocates the same sizes in the same order."""
    job()
    if nbytes <= 0:
        raise ValueError(f"a symmetric buffer needs at least one byte, not {nbytes}")
    buffer = SymmetricBuffer(nbytes)
    barrier()  # no peer signals into a copy that is not zeroed yet
    return buffer


def finalize() -> None:
    """Frees every symmetric buffer and finalizes NVSHMEM (also run at exit)."""
    global _job
    if _job is None:
        return
    runtime.extension().nvshmem_finalize()
    _job = None
