"""NVSHMEM on the GPU with one PE: bootstrap, a put with signal to self, allreduce and
allgather exact against their numpy semantics, and the watchdog on a wait nobody signals.
Two PEs: scripts/nvshmem_two_pes.py."""

import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from test_nvshmem_format import collective_programs, put_program, random_inputs

from jax_mpk import collectives, distributed, runtime
from jax_mpk import program as fmt
from jax_mpk import taskgraph as tg

pytestmark = pytest.mark.gpu

HEAP_BYTES = 64 << 20


@pytest.fixture(scope="module")
def job():
    if not runtime.extension().build_info()["nvshmem"]:
        pytest.skip("jax_mpk was built without NVSHMEM (pip install nvidia-nvshmem-cu13)")
    jnp.zeros(1).block_until_ready()  # the JAX backend exists first
    return distributed.init(heap_bytes=HEAP_BYTES)


@pytest.fixture
def buffers(job):
    """A receive buffer and a signal buffer (the programs name them 0 and 1: renumber)."""
    recv, signals = distributed.allocate(1 << 20), distributed.allocate(64 * 8)
    yield recv, signals
    signals.free()
    recv.free()


def renumber(program, recv, signals):
    """Point the program's symmetric slots at these buffers' ids."""
    slots = program.slots
    symmetric = slots["source"] == fmt.SlotSource.SYMMETRIC
    ids = {0: recv.id, 1: signals.id}
    slots["index"][symmetric] = [ids[int(i)] for i in slots["index"][symmetric]]
    return program


def run(program, args, out_shapes):
    registered = runtime.RegisteredProgram(program)
    outs = runtime.call(registered, [jnp.asarray(a) for a in args], out_shapes)
    return [np.asarray(o) for o in outs]


def test_bootstrap_one_pe(job):
    assert (job.pe, job.num_pes, job.heap_bytes) == (0, 1, HEAP_BYTES)
    assert job.device == jax.local_devices()[0]
    assert distributed.init(heap_bytes=HEAP_BYTES) is job  # a second init is the same job
    with pytest.raises(RuntimeError, match="already initialized"):
        distributed.init(heap_bytes=2 * HEAP_BYTES)
    buffer = distributed.allocate(4096)
    np.testing.assert_array_equal(buffer.read(), np.zeros(4096, np.uint8))
    data = np.arange(1024, dtype=np.float32)
    buffer.write(data)
    np.testing.assert_array_equal(buffer.read(np.float32), data)
    buffer.free()
    with pytest.raises(RuntimeError, match=rf"symmetric heap too small: it holds {HEAP_BYTES} "
                                           r"bytes, \d+ are allocated, and 134217728 more"):
        distributed.allocate(128 << 20)


@pytest.mark.parametrize("schedule", ["dynamic", "static"])
def test_put_with_signal_to_self(buffers, schedule):
    recv, signals = buffers
    program = renumber(put_program(nbytes=4096, schedule=schedule), recv, signals)
    registered = runtime.RegisteredProgram(program)
    rng = np.random.default_rng(0)
    for launch in range(3):  # signal counts go on across launches
        x = rng.standard_normal(1024).astype(np.float32)
        (out,) = runtime.call(registered, [jnp.asarray(x)],
                              [jax.ShapeDtypeStruct((1024,), np.float32)])
        np.testing.assert_array_equal(np.asarray(out), x, err_msg=f"launch {launch}")
    assert signals.read(np.uint64, 16, 1)[0] == 3  # word 2: one signal per launch


@pytest.mark.parametrize("dtype, n, tile_bytes", [
    (np.float32, 10_007, 4096), (ml_dtypes.bfloat16, 4099, 1024), (np.int32, 19, 64)])
@pytest.mark.parametrize("schedule", ["dynamic", "static"])
def test_allreduce_one_pe_exact(buffers, dtype, n, tile_bytes, schedule):
    recv, signals = buffers
    if schedule == "static":
        program = static_twin("allreduce", n, dtype, tile_bytes, recv, signals)
    else:
        (program,) = collective_programs("allreduce", 1, n, dtype, tile_bytes)
        program = renumber(program, recv, signals)
    for seed in range(2):
        xs = random_inputs(1, n, dtype, seed)
        (out,) = run(program, xs, [jax.ShapeDtypeStruct((n,), dtype)])
        np.testing.assert_array_equal(out, collectives.allreduce_reference(xs))


def static_twin(kind, n, dtype, tile_bytes, recv, signals):
    """collective_programs' program under the static schedule."""
    itemsize = np.dtype(dtype).itemsize
    g = tg.TaskGraph()
    g.nvshmem(0, 1)
    g.signal_words(1, 64)
    x = tg.Operand(g.arg(0, n * itemsize), 0, n * itemsize)
    out = tg.Operand(g.ret(0, n * itemsize), 0, n * itemsize)
    build = collectives.allreduce if kind == "allreduce" else collectives.allgather
    build(g, x, out, dtype, 0, tile_bytes=tile_bytes)
    config = tg.RuntimeConfig(num_workers=8, schedule="static")
    return renumber(g.build(config, num_args=1, num_rets=1).program, recv, signals)


def test_allgather_one_pe_exact(buffers):
    recv, signals = buffers
    n, dtype = 5000, np.float32
    (program,) = collective_programs("allgather", 1, n, dtype, tile_bytes=2048)
    program = renumber(program, recv, signals)
    xs = random_inputs(1, n, dtype, seed=4)
    (out,) = run(program, xs, [jax.ShapeDtypeStruct((1, n), dtype)])
    np.testing.assert_array_equal(out, collectives.allgather_reference(xs))


def never_signalled(budget_ns):
    g = tg.TaskGraph()
    g.nvshmem(0, 1)
    g.signal_words(1, 4)
    wait = collectives.signal_wait(g, 3, 1)
    g.add_task(fmt.TaskKind.NOOP, deps=[wait])
    config = tg.RuntimeConfig(num_workers=4, num_schedulers=1, watchdog_ns=budget_ns)
    return g.build(config, num_args=0, num_rets=0).program


def test_watchdog_on_a_wait_nobody_signals(buffers):
    recv, signals = buffers
    registered = runtime.RegisteredProgram(renumber(never_signalled(200_000_000), recv, signals))
    start = time.perf_counter()
    with pytest.raises(Exception, match=r"watchdog: task 0 \(signal_wait\) of iteration 0 waited "
                                        r"200 ms for NVSHMEM signal word 3 of PE 0: it counted 0 "
                                        r"signals of 1"):
        runtime.call(registered, [], [])
        jax.effects_barrier()
    assert time.perf_counter() - start < 5
    # The signal buffer's counts are unknown now: refused until reset, then usable.
    with pytest.raises(Exception, match="reset it on every PE"):
        runtime.call(registered, [], [])
        jax.effects_barrier()
    signals.reset_signals()
    signals.write(np.array([1], np.uint64), offset=3 * 8)  # as a peer's signal would
    runtime.call(registered, [], [])
    jax.effects_barrier()


def test_a_program_for_another_pe_is_refused(buffers):
    recv, signals = buffers
    program = renumber(put_program(pe=1, num_pes=2), recv, signals)
    with pytest.raises(Exception, match="PE 1 of 2; this process is PE 0 of 1"):
        run(program, [np.zeros(24, np.float32)], [jax.ShapeDtypeStruct((48,), np.float32)])
