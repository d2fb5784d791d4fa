"""NVSHMEM pieces on the CPU: the program format (symmetric slots, tagged events, the PUT and
SIGNAL_WAIT kinds) through the C++ reader and validator, and the collectives on the numpy
reference executor, for one PE and for jobs of several PEs."""

import ml_dtypes
import numpy as np
import pytest

from jax_mpk import collectives, distributed, runtime
from jax_mpk import program as fmt
from jax_mpk import taskgraph as tg
from jax_mpk.reference.executor import execute, execute_job
from jax_mpk.reference.memory import RaceError

CONFIG = tg.RuntimeConfig(num_workers=8, num_schedulers=2)
RECV, SIGNALS = 0, 1  # symmetric buffer ids


def put_program(pe=0, num_pes=1, nbytes=96, schedule="dynamic"):
    """PE `pe` puts its argument into row `pe` of every PE's buffer, waits for every row,
    and copies the rows out."""
    g = tg.TaskGraph()
    g.nvshmem(pe, num_pes)
    g.signal_words(SIGNALS, 4)
    x = g.arg(0, nbytes)
    out = g.ret(0, num_pes * nbytes)
    rows = g.symmetric(RECV, num_pes * nbytes)
    puts = [collectives.put_signal(g, rows, pe * nbytes, tg.Operand(x, 0, nbytes), peer,
                                   fmt.nvshmem_event(peer, 2)) for peer in range(num_pes)]
    wait = collectives.signal_wait(g, 2, num_pes, deps=puts)
    g.add_task(fmt.TaskKind.COPY, [tg.Operand(out, 0, num_pes * nbytes),
                                   tg.Operand(rows, 0, num_pes * nbytes)],
               [num_pes * nbytes, 0], [wait])
    config = tg.dataclasses.replace(CONFIG, schedule=schedule)
    return g.build(config, num_args=1, num_rets=1).program


def test_tagged_event_ids():
    e = fmt.nvshmem_event(5, 1234)
    assert fmt.is_nvshmem_event(e) and not fmt.is_nvshmem_event(1234)
    assert (fmt.nvshmem_event_pe(e), fmt.nvshmem_event_word(e)) == (5, 1234)
    with pytest.raises(ValueError, match="outside PEs"):
        fmt.nvshmem_event(8, 0)


@pytest.mark.parametrize("schedule", ["dynamic", "static"])
def test_round_trip_through_the_cpp_reader(schedule):
    program = put_program(pe=1, num_pes=3, schedule=schedule)
    blob = program.to_bytes()
    back = fmt.Program.from_bytes(blob)
    assert back.to_bytes() == blob
    parsed = runtime.extension().parse_program(blob)
    header = parsed["header"]
    assert (header["num_pes"], header["pe"], header["num_signals"]) == (3, 1, 4)
    signal_slot = parsed["slots"][header["signal_slot"]]
    assert signal_slot[:2] == (int(fmt.SlotSource.SYMMETRIC), SIGNALS) and signal_slot[3] == 32
    assert [int(t) for t in program.triggers] == parsed["triggers"]
    tagged = [t for t in parsed["triggers"] if fmt.is_nvshmem_event(t)]
    assert sorted(tagged) == [fmt.nvshmem_event(p, 2) for p in range(3)]
    kinds = [t[0] for t in parsed["tasks"]]
    assert kinds.count(int(fmt.TaskKind.PUT)) == 3 and int(fmt.TaskKind.SIGNAL_WAIT) in kinds
    wait = parsed["tasks"][kinds.index(int(fmt.TaskKind.SIGNAL_WAIT))]
    assert wait[6][:3] == [fmt.nvshmem_event(1, 2) - (1 << 32), 3, 0]  # the id travels as int32
    put = parsed["tasks"][kinds.index(int(fmt.TaskKind.PUT))]
    assert put[6][:3] == [96, 0, 0]
    if schedule == "static":  # a task that signals a peer never gets relaxed triggers
        for t in parsed["tasks"]:
            if t[0] == int(fmt.TaskKind.PUT):
                assert not t[5] & fmt.TASK_RELAXED_TRIGGERS


def test_the_runtime_lists_the_nvshmem_kinds():
    assert {"PUT", "SIGNAL_WAIT"} <= runtime.implemented_task_kinds()


def rejected(program, match):
    with pytest.raises(ValueError, match=match):
        runtime.validate(program)


def edit(program, **header):
    for name, value in header.items():
        program.header[name] = value
    return program


def test_malformed_nvshmem_programs_are_rejected_with_their_cause():
    runtime.validate(put_program(pe=1, num_pes=2))
    rejected(edit(put_program(), num_pes=0, num_signals=0), "declares no NVSHMEM PEs")
    rejected(edit(put_program(), num_pes=9), "addresses 9 PEs; at most 8")
    rejected(edit(put_program(pe=1, num_pes=2), pe=2), "runs on PE 2 of 2")
    rejected(edit(put_program(), num_signals=5), "holds 32 bytes; 5 signal words need 40")
    program = put_program()
    program.header["signal_slot"] = 1  # the argument, not a symmetric slot
    rejected(program, "signal slot 1 is not a symmetric buffer slot")

    program = put_program(pe=0, num_pes=2)
    puts = program.tasks["kind"] == fmt.TaskKind.PUT
    program.tasks["dims"][np.argmax(puts), 2] = 2
    rejected(program, r"\(put\): put names a PE past the program's PEs")

    program = put_program()
    first_put = np.argmax(program.tasks["kind"] == fmt.TaskKind.PUT)
    program.operands["slot"][program.tasks["first_operand"][first_put]] = 2  # the result slot
    rejected(program, "put's destination is not a symmetric buffer")

    program = put_program()
    program.triggers[program.triggers == fmt.nvshmem_event(0, 2)] = fmt.nvshmem_event(0, 4)
    rejected(program, r"signals NVSHMEM event \(PE 0, word 4\): its signal word is past")

    program = put_program(pe=0, num_pes=2)
    waits = program.tasks["kind"] == fmt.TaskKind.SIGNAL_WAIT
    program.tasks["dims"][np.argmax(waits), 0] = fmt.nvshmem_event(1, 2) - (1 << 32)
    rejected(program, "a PE waits only on its own signal words")

    program = put_program()
    waits = program.tasks["kind"] == fmt.TaskKind.SIGNAL_WAIT
    program.tasks["dims"][np.argmax(waits), 2] = 2
    rejected(program, r"signal_wait's lag \(dims\[2\]\) is 0 or 1")


def test_graph_errors_name_the_cause():
    g = tg.TaskGraph()
    with pytest.raises(tg.GraphError, match="declare the NVSHMEM job"):
        g.signal_words(SIGNALS, 4)
    with pytest.raises(tg.GraphError, match="addresses 1 to 8 PEs"):
        g.nvshmem(0, 9)
    g.nvshmem(0, 1)
    g.signal_words(SIGNALS, 2)
    g.take_signal_words(2)
    with pytest.raises(tg.GraphError, match="2 signal words are used up: 2 taken, 1 more"):
        g.take_signal_words(1)
    with pytest.raises(tg.GraphError, match="not an NVSHMEM event id"):
        g.add_task(fmt.TaskKind.NOOP, signals=[3])


def test_signal_wait_failure_message():
    program = put_program(pe=0, num_pes=2)
    wait = int(np.argmax(program.tasks["kind"] == fmt.TaskKind.SIGNAL_WAIT))
    message = runtime.extension().describe_failure(
        program.to_bytes(), int(fmt.ErrorCode.WATCHDOG_SIGNAL_WAIT), 3, wait,
        fmt.nvshmem_event(0, 2), 0, 1, 2, [])
    assert message.startswith(f"watchdog: task {wait} (signal_wait) of iteration 0 waited")
    assert "for NVSHMEM signal word 2 of PE 0: it counted 1 signals of 2" in message
    assert "a peer never signalled it" in message


# The collectives on the reference executor -----------------------------------------------
def collective_programs(kind, num_pes, n, dtype, tile_bytes):
    programs = []
    itemsize = np.dtype(dtype).itemsize
    for pe in range(num_pes):
        g = tg.TaskGraph()
        g.nvshmem(pe, num_pes)
        g.signal_words(SIGNALS, 64)
        x = tg.Operand(g.arg(0, n * itemsize), 0, n * itemsize)
        rows = num_pes if kind == "allgather" else 1
        out = tg.Operand(g.ret(0, rows * n * itemsize), 0, rows * n * itemsize)
        build = collectives.allreduce if kind == "allreduce" else collectives.allgather
        build(g, x, out, dtype, RECV, tile_bytes=tile_bytes)
        programs.append(g.build(CONFIG, num_args=1, num_rets=1).program)
    return programs


def random_inputs(num_pes, n, dtype, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        return [rng.integers(-1000, 1000, n).astype(dtype) for _ in range(num_pes)]
    return [rng.standard_normal(n).astype(dtype) for _ in range(num_pes)]


@pytest.mark.parametrize("num_pes", [1, 2, 3])
@pytest.mark.parametrize("dtype, n, tile_bytes", [
    (np.float32, 1000, 1024), (ml_dtypes.bfloat16, 333, 128), (np.int32, 19, 64)])
def test_allreduce_reference(num_pes, dtype, n, tile_bytes):
    programs = collective_programs("allreduce", num_pes, n, dtype, tile_bytes)
    xs = random_inputs(num_pes, n, dtype, seed=n)
    expected = collectives.allreduce_reference(xs)
    for seed in range(3):  # several task orders the events allow
        outs = execute_job(programs, [[x] for x in xs], [[((n,), dtype)]] * num_pes, seed=seed)
        for pe, (out,) in enumerate(outs):
            np.testing.assert_array_equal(out, expected, err_msg=f"PE {pe}, seed {seed}")


@pytest.mark.parametrize("num_pes", [1, 2, 4])
def test_allgather_reference(num_pes):
    n, dtype = 77, np.float32
    programs = collective_programs("allgather", num_pes, n, dtype, tile_bytes=100)
    xs = random_inputs(num_pes, n, dtype, seed=1)
    outs = execute_job(programs, [[x] for x in xs], [[((num_pes, n), dtype)]] * num_pes)
    for pe, (out,) in enumerate(outs):
        np.testing.assert_array_equal(out, collectives.allgather_reference(xs), f"PE {pe}")


def test_put_with_signal_to_self_on_execute():
    x = np.arange(24, dtype=np.float32)
    (out,) = execute(put_program(), [x], [((24,), np.float32)])
    np.testing.assert_array_equal(out, x)


def test_a_read_of_the_rows_without_the_wait_is_a_race():
    g = tg.TaskGraph()
    g.nvshmem(0, 1)
    g.signal_words(SIGNALS, 1)
    x, out, rows = g.arg(0, 64), g.ret(0, 64), g.symmetric(RECV, 64)
    collectives.put_signal(g, rows, 0, tg.Operand(x, 0, 64), 0, fmt.nvshmem_event(0, 0))
    g.add_task(fmt.TaskKind.COPY, [tg.Operand(out, 0, 64), tg.Operand(rows, 0, 64)], [64, 0])
    program = g.build(CONFIG, num_args=1, num_rets=1).program
    with pytest.raises(RaceError, match="no event orders the two"):
        for seed in range(20):
            execute(program, [np.ones(16, np.float32)], [((16,), np.float32)], seed=seed)


def test_a_wait_nobody_signals_stalls_the_job():
    programs = [put_program(pe, 2) for pe in range(2)]
    triggers = programs[1].triggers  # PE 1 puts into PE 0's buffer but signals itself
    triggers[triggers == fmt.nvshmem_event(0, 2)] = fmt.nvshmem_event(1, 3)
    xs = [np.full(24, pe, np.float32) for pe in range(2)]
    with pytest.raises(RaceError, match="task .* \\(SIGNAL_WAIT\\) of PE 0 waits for signal "
                                        "word 2, which counted 1 of 2"):
        execute_job(programs, [[x] for x in xs], [[((48,), np.float32)]] * 2)


def test_heap_size_parsing():
    assert distributed.parse_heap_size("1073741824") == 1 << 30
    assert distributed.parse_heap_size("512m") == 512 << 20
    assert distributed.parse_heap_size("2G") == 2 << 30
    assert distributed.parse_heap_size(".5m") == 1 << 19
    with pytest.raises(ValueError, match="is not a size"):
        distributed.parse_heap_size("lots")


def test_init_without_nvshmem_in_the_build_says_so():
    if runtime.extension().build_info()["nvshmem"]:
        pytest.skip("this build has NVSHMEM")
    with pytest.raises(RuntimeError, match="built without NVSHMEM: pip install nvidia-nvshmem"):
        distributed.init()
