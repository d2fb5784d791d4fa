"""The persistent runtime on the GPU: random DAGs checked element by element,
the watchdog, and launching from inside jax.jit with donated state."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import random_dags

from jax_mpk import profile, runtime
from jax_mpk import program as fmt
from jax_mpk import taskgraph as tg

pytestmark = pytest.mark.gpu


def sm_count():
    return runtime.device_info()["sm_count"]


def run_dag(dag, config, rng):
    built = random_dags.build(dag, config)
    registered = runtime.RegisteredProgram(built.program)
    inputs = rng.integers(0, 2**32, (config.num_iterations, dag.words), dtype=np.uint32)
    out_shape = jax.ShapeDtypeStruct((config.num_iterations, dag.num_tasks, dag.words), np.uint32)
    (out,) = runtime.call(registered, [jnp.asarray(inputs)], [out_shape])
    # Program task order differs from DAG order; outputs are indexed by DAG task.
    return np.asarray(out), random_dags.reference(dag, inputs)


def small_cases(count):
    """Graphs of 1 to 3000 tasks, 1 to 100 iterations, assorted runtime sizes."""
    rng = np.random.default_rng(2024)
    for seed in range(count):
        n = int(np.exp(rng.uniform(0, np.log(3000))))
        iterations = int(rng.choice([1, 2, 7, 100])) if n < 1000 else int(rng.choice([1, 3]))
        schedulers = int(rng.choice([1, 2, 4, 5, 8]))
        workers = int(rng.choice([schedulers, max(schedulers, 7), 64, 0]))  # 0: every SM
        yield seed, dict(num_tasks=n, max_fan_in=int(rng.choice([1, 3, 16])),
                         window=int(rng.choice([4, 64, 1000])),
                         hub_fraction=float(rng.choice([0, 0.1, 0.5]))), dict(
            num_iterations=iterations, num_schedulers=schedulers, num_workers=workers,
            worker_queue_capacity=int(rng.choice([2, 16, 256])),
            schedule=str(rng.choice(["dynamic", "static"])))


def config_for(sizes):
    workers = sizes.pop("num_workers") or None
    if workers is None:
        return tg.RuntimeConfig.for_sm_count(sm_count(), **sizes)
    return tg.RuntimeConfig(num_workers=workers, **sizes)


def test_random_dags_small():
    failures = []
    cases = list(small_cases(400))
    for seed, shape, sizes in cases:
        rng = np.random.default_rng(seed)
        dag = random_dags.random_dag(rng, **shape)
        try:
            out, ref = run_dag(dag, config_for(dict(sizes)), rng)
        except Exception as e:  # noqa: BLE001 - collect every failing graph, then fail
            failures.append(f"seed {seed} {shape} {sizes}: {str(e)[:400]}")
            continue
        if not np.array_equal(out, ref):
            bad = np.argwhere(out != ref)
            failures.append(f"seed {seed} {shape} {sizes}: {len(bad)} words differ, first {bad[0]}")
    assert not failures, "\n".join(failures[:10])
    schedules = [sizes["schedule"] for _, _, sizes in cases]
    print(f"{len(cases)} random graphs ({schedules.count('static')} static) matched word for word")


@pytest.mark.parametrize(
    "name, make, sizes",
    [
        ("100k tasks, window 1000", lambda r: random_dags.random_dag(r, 100_000, 8, 1000, words=2),
         dict(num_iterations=2)),
        ("100k tasks, hubs with fan-out in the thousands",
         lambda r: random_dags.random_dag(r, 100_000, 4, 64, words=2, hub_fraction=0.5),
         dict(num_iterations=1)),
        ("fan-in and fan-out 1000", lambda r: random_dags.layered_dag(r, 2, 1000, words=8),
         dict(num_iterations=5)),
        ("wide layers, 100 iterations", lambda r: random_dags.layered_dag(r, 6, 40),
         dict(num_iterations=100)),
    ],
)
@pytest.mark.parametrize("schedule", ["dynamic", "static"])
def test_random_dags_large(name, make, sizes, schedule):
    rng = np.random.default_rng(7)
    dag = make(rng)
    config = tg.RuntimeConfig.for_sm_count(sm_count(), schedule=schedule, **sizes)
    out, ref = run_dag(dag, config, rng)
    np.testing.assert_array_equal(out, ref)


def stuck_program(budget_ns, schedule):
    """A task waits for a flag nobody sets; the events after it never fire."""
    g = tg.TaskGraph()
    flag = g.arg(0, 8)
    wait = g.add_task(fmt.TaskKind.WAIT_VALUE, [tg.Operand(flag, 0, 8)], [1, 0])
    g.add_task(fmt.TaskKind.NOOP, deps=[wait])
    config = tg.RuntimeConfig.for_sm_count(sm_count(), watchdog_ns=budget_ns, schedule=schedule)
    return g.build(config, num_args=1, num_rets=0).program


@pytest.mark.parametrize("schedule", ["dynamic", "static"])
def test_watchdog_turns_a_hang_into_an_exception(schedule):
    registered = runtime.RegisteredProgram(stuck_program(200_000_000, schedule))
    flag = jnp.zeros((2,), jnp.uint32)  # one uint64 that nobody sets
    start = time.perf_counter()
    expected = r"watchdog: task 0 \(kind 3\) of iteration 0 waited 200 ms"
    with pytest.raises(Exception, match=expected):
        runtime.call(registered, [flag], [])
        jax.effects_barrier()
    elapsed = time.perf_counter() - start
    assert elapsed < 5, f"the watchdog took {elapsed:.1f} s for a 0.2 s budget"
    # The process and the device stay usable.
    rng = np.random.default_rng(3)
    dag = random_dags.random_dag(rng, 500, 4)
    config = tg.RuntimeConfig.for_sm_count(sm_count(), num_iterations=3, schedule=schedule)
    out, ref = run_dag(dag, config, rng)
    np.testing.assert_array_equal(out, ref)


def stuck_copy_program(budget_ns, defer_errors):
    """stuck_program whose task after the wait copies 64 bytes of its input to its result."""
    g = tg.TaskGraph()
    flag = g.arg(0, 8)
    src = g.arg(1, 64)
    out = g.ret(0, 64)
    wait = g.add_task(fmt.TaskKind.WAIT_VALUE, [tg.Operand(flag, 0, 8)], [1, 0])
    g.add_task(fmt.TaskKind.COPY, [tg.Operand(out, 0, 64), tg.Operand(src, 0, 64)], [64, 0],
               deps=[wait])
    config = tg.RuntimeConfig.for_sm_count(sm_count(), watchdog_ns=budget_ns, schedule="static",
                                           defer_errors=defer_errors)
    return g.build(config, num_args=2, num_rets=1).program


def test_deferred_failure_poisons_its_results_and_raises_at_the_next_launch():
    """With defer_errors the handler returns before the kernel ends; a watchdog expiry then
    fills the launch's result with 0xFF bytes and raises from the next launch, which does
    not run."""
    registered = runtime.RegisteredProgram(stuck_copy_program(200_000_000, defer_errors=True))
    flag = jnp.zeros((2,), jnp.uint32)
    src = jnp.asarray(np.arange(64, dtype=np.uint8) + 1)
    (out,) = runtime.call(registered, [flag, src], [jax.ShapeDtypeStruct((64,), np.uint8)])
    assert (np.asarray(out) == 0xFF).all()
    assert runtime.last_launch_timing()["run_us"] < 100_000, "the handler waited for the kernel"
    expected = (r"launch 1 of this program failed, and its results were filled with NaN: "
                r"watchdog: task 0 \(kind 3\) of iteration 0 waited 200 ms")
    with pytest.raises(Exception, match=expected):
        jax.block_until_ready(runtime.call(registered, [flag, src],
                                           [jax.ShapeDtypeStruct((64,), np.uint8)]))
    runtime.check_launches()  # reported once


def test_check_launches_reports_a_deferred_failure_no_launch_read():
    registered = runtime.RegisteredProgram(stuck_copy_program(100_000_000, defer_errors=True))
    flag = jnp.zeros((2,), jnp.uint32)
    src = jnp.asarray(np.arange(64, dtype=np.uint8))
    out = runtime.call(registered, [flag, src], [jax.ShapeDtypeStruct((64,), np.uint8)])
    with pytest.raises(RuntimeError, match=r"launch 1 of this program failed.*watchdog: task 0"):
        runtime.check_launches(out)
    runtime.check_launches()


def affine_program(n, mul, add, schedule, defer_errors=False):
    """state[j] = state[j] * mul + add, in place; then out = state."""
    g = tg.TaskGraph()
    state_in = g.arg(0, 4 * n)
    state_out = g.ret(0, 4 * n)
    copy_out = g.ret(1, 4 * n)
    tiles = []
    for lo in range(0, n, 1000):
        size = 4 * min(1000, n - lo)
        out, src = tg.Operand(state_out, 4 * lo, size), tg.Operand(state_in, 4 * lo, size)
        tiles.append(g.add_task(fmt.TaskKind.COMBINE_U32, [out, src], [size // 4, mul, add]))
        g.add_task(fmt.TaskKind.COPY, [tg.Operand(copy_out, 4 * lo, size), out], [size, 0],
                   deps=[tiles[-1]])
    config = tg.RuntimeConfig.for_sm_count(sm_count(), schedule=schedule, defer_errors=defer_errors)
    return g.build(config, num_args=1, num_rets=2).program


@pytest.mark.parametrize("schedule,defer_errors", [("dynamic", False), ("static", False),
                                                   ("static", True)])
def test_inside_jit_with_donated_state(schedule, defer_errors):
    n = 10_007
    registered = runtime.RegisteredProgram(affine_program(n, 3, 11, schedule, defer_errors))
    shape = jax.ShapeDtypeStruct((n,), np.uint32)

    @jax.jit
    def step(state, x):
        state, copy = runtime.call(registered, [state], [shape, shape], input_output_aliases={0: 0})
        return state, copy + x

    step = jax.jit(step, donate_argnums=0)
    rng = np.random.default_rng(5)
    state0 = rng.integers(0, 2**32, n, dtype=np.uint32)
    x = jnp.asarray(rng.integers(0, 2**32, n, dtype=np.uint32))
    state = jnp.asarray(state0)
    expected = state0.copy()
    for _ in range(4):
        pointer = state.unsafe_buffer_pointer()
        state, y = step(state, x)
        expected = expected * np.uint32(3) + np.uint32(11)
        assert state.unsafe_buffer_pointer() == pointer, "the donated state was copied"
        np.testing.assert_array_equal(np.asarray(state), expected)
        np.testing.assert_array_equal(np.asarray(y), expected + np.asarray(x))
    runtime.check_launches()


@pytest.mark.parametrize("defer_errors", [False, True])
def test_run_once_without_jax_writes_donated_state_in_place(defer_errors):
    """runtime.run_once (what the compute-sanitizer scripts use): an aliased result is
    written into its argument's buffer, the other into its own, both copied back."""
    n = 10_007
    program = affine_program(n, 5, 7, "static", defer_errors)
    state0 = np.random.default_rng(8).integers(0, 2**32, n, dtype=np.uint32)
    state, copy = runtime.run_once(program, [state0], [((n,), np.uint32)] * 2, {0: 0})
    expected = state0 * np.uint32(5) + np.uint32(7)
    np.testing.assert_array_equal(state, expected)
    np.testing.assert_array_equal(copy, expected)


def test_run_once_raises_a_watchdog_failure():
    program = stuck_copy_program(100_000_000, defer_errors=True)
    flag, src = np.zeros(2, np.uint32), np.arange(64, dtype=np.uint8)
    with pytest.raises(RuntimeError, match=r"watchdog: task 0 \(kind 3\) of iteration 0"):
        runtime.run_once(program, [flag, src], [((64,), np.uint8)])


def test_last_launch_timing_lies_inside_the_call():
    """The kernel's CUDA-event time is positive, within the handler's host time, and that
    within the call's wall time."""
    n = 200_000
    registered = runtime.RegisteredProgram(affine_program(n, 3, 11, "static"))
    shape = jax.ShapeDtypeStruct((n,), np.uint32)
    state = jnp.asarray(np.random.default_rng(6).integers(0, 2**32, n, dtype=np.uint32))
    jax.block_until_ready(runtime.call(registered, [state], [shape, shape]))  # uploads
    start = time.perf_counter()
    jax.block_until_ready(runtime.call(registered, [state], [shape, shape]))
    wall_us = (time.perf_counter() - start) * 1e6
    timing = runtime.last_launch_timing()
    assert 0 < timing["kernel_us"] <= timing["run_us"] <= wall_us, (timing, wall_us)


def test_too_many_workers_is_a_clear_error():
    g = tg.TaskGraph()
    g.add_task(fmt.TaskKind.NOOP)
    program = g.build(tg.RuntimeConfig(num_workers=4 * sm_count(), num_schedulers=8), 0, 0).program
    with pytest.raises(Exception, match="co-resident"):
        runtime.call(runtime.RegisteredProgram(program), [], [])
        jax.effects_barrier()


@pytest.mark.parametrize("schedule", ["dynamic", "static"])
def test_timeline_respects_every_dependency(schedule):
    rng = np.random.default_rng(9)
    dag = random_dags.random_dag(rng, 600, 4, hub_fraction=0.1)
    iterations = 3
    config = tg.RuntimeConfig.for_sm_count(sm_count(), schedule=schedule, num_iterations=iterations,
                                           profile_capacity=64)
    built = random_dags.build(dag, config)
    registered = runtime.RegisteredProgram(built.program)
    inputs = rng.integers(0, 2**32, (iterations, dag.words), dtype=np.uint32)
    out_shape = jax.ShapeDtypeStruct((iterations, dag.num_tasks, dag.words), np.uint32)
    out, workspace = runtime.call(registered, [jnp.asarray(inputs)], [out_shape],
                                  return_workspace=True)
    np.testing.assert_array_equal(np.asarray(out), random_dags.reference(dag, inputs))
    timeline = profile.read(built.program, np.asarray(workspace))
    assert len(timeline) == iterations * dag.num_tasks
    assert np.isnan(timeline["marks_us"]).all()  # its kinds mark no phases
    start = {(int(e["task"]), int(e["iteration"])): e["start_us"] for e in timeline}
    end = {(int(e["task"]), int(e["iteration"])): e["end_us"] for e in timeline}
    assert len(start) == len(timeline), "a task ran twice in one iteration"
    index = built.task_index
    for it in range(iterations):
        for t, deps in enumerate(dag.deps):
            for d in deps:
                assert end[index[d], it] <= start[index[t], it]


def test_poison_mode_fills_what_no_task_writes_and_spares_donated_state():
    """A program that writes half of its result: with poison_results the other half reads
    0xFF bytes (the tests' NaN), and a donated result, aliased to its input, keeps it."""
    g = tg.TaskGraph()
    src = g.arg(0, 64)
    state = g.arg(1, 64)
    half = g.ret(0, 64)
    g.add_task(fmt.TaskKind.COPY, [tg.Operand(half, 0, 32), tg.Operand(src, 0, 32)], [32, 0])
    g.add_task(fmt.TaskKind.COPY, [tg.Operand(state, 0, 16), tg.Operand(src, 32, 16)], [16, 0])
    config = tg.RuntimeConfig.for_sm_count(sm_count(), schedule="static", poison_results=True)
    registered = runtime.RegisteredProgram(g.build(config, num_args=2, num_rets=2).program)
    data = np.arange(64, dtype=np.uint8) + 1
    kept = np.full(64, 7, np.uint8)
    half_out, state_out = runtime.call(
        registered, [jnp.asarray(data), jnp.asarray(kept)],
        [jax.ShapeDtypeStruct((64,), np.uint8)] * 2, input_output_aliases={1: 1})
    np.testing.assert_array_equal(np.asarray(half_out)[:32], data[:32])
    assert (np.asarray(half_out)[32:] == 0xFF).all()
    np.testing.assert_array_equal(np.asarray(state_out), np.concatenate([data[32:48], kept[16:]]))
