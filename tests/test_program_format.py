"""The program format: Python writes, C++ reads back; malformed programs are
rejected before launch with a message that names the cause."""

import copy

import numpy as np
import pytest
import random_dags

from jax_mpk import program as fmt
from jax_mpk import runtime
from jax_mpk import taskgraph as tg


@pytest.fixture(scope="module")
def ext():
    return runtime.extension()


def mixed_program(num_iterations=3, schedule="dynamic"):
    """Every slot source, several task kinds, a massive launch and constants."""
    rng = np.random.default_rng(0)
    g = tg.TaskGraph()
    x = g.arg(0, 4096 * num_iterations)
    flag = g.arg(1, 8)
    y = g.ret(0, 4096 * num_iterations)
    scratch = g.workspace(4096)
    table = g.constant(rng.standard_normal(333).astype(np.float32))
    g.task_counters(4)  # slot 5
    head = g.add_task(fmt.TaskKind.COPY,
                      [tg.Operand(scratch, 0, 4096), tg.Operand(x, 0, 4096, 4096)], [4096, 0])
    fan = [g.add_task(fmt.TaskKind.COPY,
                      [tg.Operand(y, 64 * i, 64, 4096), tg.Operand(scratch, 64 * i, 64)],
                      [64, 0], deps=[head]) for i in range(40)]
    g.add_task(fmt.TaskKind.COPY, [tg.Operand(scratch, 0, 64), tg.Operand(table, 0, 64)], [64, 0],
               deps=fan)
    g.add_task(fmt.TaskKind.WAIT_VALUE, [tg.Operand(flag, 0, 8)], [0, 0])
    config = tg.RuntimeConfig(num_workers=8, num_schedulers=3, num_iterations=num_iterations,
                              worker_queue_capacity=16, schedule=schedule,
                              poison_results=schedule == "static",
                              defer_errors=schedule == "static")
    return g.build(config, num_args=2, num_rets=1).program


@pytest.mark.parametrize("schedule", ["dynamic", "static"])
def test_round_trip_through_cpp(ext, schedule):
    p = mixed_program(schedule=schedule)
    parsed = ext.parse_program(p.to_bytes())
    flags = fmt.PROGRAM_POISON_RESULTS | fmt.PROGRAM_DEFER_ERRORS if schedule == "static" else 0
    assert parsed["header"]["flags"] == flags
    for name in parsed["header"]:
        assert parsed["header"][name] == p.header[name], name
    for i, t in enumerate(parsed["tasks"]):
        expected = p.tasks[i]
        assert t[:6] == tuple(int(expected[n]) for n in fmt.TASK.names[:6])
        assert t[6] == expected["dims"].tolist()
    assert parsed["events"] == [tuple(int(v) for v in e) for e in p.events]
    assert parsed["triggers"] == p.triggers.tolist()
    assert parsed["operands"] == [tuple(int(v) for v in o) for o in p.operands]
    assert parsed["slots"] == [tuple(int(v) for v in s) for s in p.slots]
    assert parsed["worker_task_begin"] == p.worker_task_begin.tolist()
    assert parsed["worker_tasks"] == [tuple(int(v) for v in w) for w in p.worker_tasks]
    assert parsed["constants"] == p.constants.tobytes()
    assert parsed["control"] == vars(p.control_layout())


@pytest.mark.parametrize("schedule", ["dynamic", "static"])
def test_round_trip_through_python(schedule):
    p = mixed_program(schedule=schedule)
    q = fmt.Program.from_bytes(p.to_bytes())
    assert q.to_bytes() == p.to_bytes()
    assert q.num_tasks == p.num_tasks == 43


@pytest.mark.parametrize("schedule", ["dynamic", "static"])
def test_planner_output_is_valid(ext, schedule):
    rng = np.random.default_rng(1)
    for n in (1, 2, 17, 300):
        dag = random_dags.random_dag(rng, n, max_fan_in=6, hub_fraction=0.2)
        config = tg.RuntimeConfig(num_workers=5, num_schedulers=2, schedule=schedule)
        p = random_dags.build(dag, config).program
        assert ext.validate_program(p.to_bytes()) == ""


def test_massive_launch_is_split_across_schedulers():
    p = mixed_program()
    massive = p.events[p.events["kind"] == fmt.EventKind.LAUNCH_MASSIVE]
    assert len(massive) == 1 and massive[0]["last_task"] - massive[0]["first_task"] == 40


def resized(p, **header):
    """The same program with other runtime sizes, control region re-laid out."""
    q = copy.deepcopy(p)
    for name, value in header.items():
        q.header[name] = value
    old = p.control_bytes
    new = q.control_layout().total
    q.header["control_bytes"] = new
    q.header["workspace_bytes"] = p.workspace_bytes - old + new
    ws = q.slots["source"] == fmt.SlotSource.WORKSPACE
    q.slots["offset"][ws] = (q.slots["offset"][ws].astype(np.int64) + new - old).astype(np.uint64)
    return q


def cycle_program():
    g = tg.TaskGraph()
    a = g.add_task(fmt.TaskKind.NOOP)
    b = g.add_task(fmt.TaskKind.NOOP, deps=[a])
    c = g.add_task(fmt.TaskKind.NOOP, deps=[b])
    g.add_task(fmt.TaskKind.NOOP)  # a second sink keeps the end event reachable
    built = g.build(tg.RuntimeConfig(num_workers=2, num_schedulers=1), 0, 0)
    p = built.program
    # c, a sink, now triggers the event that launches b, its own ancestor.
    b_event = int(np.nonzero(p.events["first_task"] == built.task_index[b])[0][0])
    p.triggers[p.tasks[built.task_index[c]]["first_trigger"]] = b_event
    p.events[b_event]["threshold"] += 1
    p.events[p.end_event]["threshold"] -= 1
    return p


def _set(section, index, field, value):
    def mutate(p):
        array = getattr(p, section)
        if field is None:
            array[index] = value
        else:
            array[index][field] = value
        return p
    return mutate


def _skip_cross_worker_wait(p):
    waits = p.worker_tasks["wait_event"]
    i = int(np.nonzero((waits != fmt.NO_WAIT) & (waits != p.start_event))[0][0])
    p.worker_tasks[i]["wait_event"] = fmt.NO_WAIT
    return p


def _swap_static(p):
    p.worker_tasks[[0, 1]] = p.worker_tasks[[1, 0]]
    return p


MALFORMED = {
    "bad magic": (_set("header", (), "magic", 7), "bad magic"),
    "version": (_set("header", (), "version", 99), "format version 99"),
    "truncated": ("truncate", "truncated"),
    "dangling slot": (_set("operands", 0, "slot", 999), "dangling slot 999"),
    "dangling event": (_set("triggers", slice(0, 1), None, 10**6), "dangling event"),
    "dangling operands": (_set("tasks", 0, "num_operands", 999), "dangling operands"),
    "dangling tasks": (_set("events", 1, "last_task", 10**6), "dangling tasks"),
    "unreachable threshold": (_set("events", 1, "threshold", 99), "can never fire"),
    "overfull threshold": (_set("events", 1, "threshold", 0), "threshold 0"),
    "no trigger": (_set("tasks", 0, "num_triggers", 0), "triggers no event"),
    "unknown kind": (_set("tasks", 0, "kind", 4000), "lacks"),
    "kind check": (_set("tasks", 0, "kind", fmt.TaskKind.WAIT_VALUE), "wait_value takes one"),
    "slot operand index": (_set("slots", 0, "index", 5), "names operand 5"),
    "operand bounds": (_set("operands", 1, "bytes", 10**9), "reaches byte"),
    "launched twice": (_set("events", 1, "first_task", 0), "launched by 2 events"),
    "iterations": (lambda p: resized(p, num_iterations=0), "num_iterations 0"),
    "schedulers": (lambda p: resized(p, num_schedulers=9), "schedulers"),
    "queue capacity": (lambda p: resized(p, sched_queue_capacity=2), "queue capacity exceeded"),
    "control region": (_set("header", (), "control_bytes", 256), "control region"),
    "workspace": (_set("header", (), "workspace_bytes", 100), "workspace too small"),
    "workspace slot": (lambda p: _set("header", (), "workspace_bytes", p.control_bytes + 16)(p),
                       "workspace too small: slot"),
    "task counter slot": (_set("slots", 5, "offset", 16), "of the 4 task counters"),
    "cycle": ("cycle", "cycle: event"),
    "static list order": ("static", _swap_static, "not increasing"),
    "static wait event": ("static", _set("worker_tasks", 1, "wait_event", 2), "but is launched by"),
    "static coverage": ("static", _set("worker_task_begin", -1, None, 3), "do not cover"),
    "static duplicate": ("static", _set("worker_tasks", 1, "task", 0), "not increasing"),
    "static skipped wait": ("static", _skip_cross_worker_wait, "skips its wait"),
    "static relaxed trigger": ("static", _set("tasks", 0, "flags", fmt.TASK_RELAXED_TRIGGERS),
                               "without release"),
    "dynamic relaxed trigger": (_set("tasks", 0, "flags", fmt.TASK_RELAXED_TRIGGERS),
                                "only a static schedule"),
    "schedule": (_set("header", (), "schedule", 5), "unknown schedule 5"),
    "program flags": (_set("header", (), "flags", 6), "unknown program flags 6"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_program_is_rejected(ext, case):
    mutate, message = MALFORMED[case][-2:]
    if MALFORMED[case][0] == "static":
        blob = mutate(mixed_program(schedule="static")).to_bytes()
    elif mutate == "cycle":
        blob = cycle_program().to_bytes()
    elif mutate == "truncate":
        blob = mixed_program().to_bytes()[:-100]
    else:
        blob = mutate(mixed_program()).to_bytes()
    why = ext.validate_program(blob)
    assert message in why, why
    with pytest.raises(ValueError, match="invalid program"):
        ext.register_program(blob)


def test_graph_errors_are_clear():
    with pytest.raises(tg.GraphError, match="no tasks"):
        tg.TaskGraph().build(tg.RuntimeConfig(), 0, 0)
    g = tg.TaskGraph()
    with pytest.raises(tg.GraphError, match="unknown task 3"):
        g.add_task(fmt.TaskKind.NOOP, deps=[3])
    g.add_task(fmt.TaskKind.NOOP)
    with pytest.raises(tg.GraphError, match="unknown task -1"):
        g.add_task(fmt.TaskKind.NOOP, deps=[0, -1])
    with pytest.raises(tg.GraphError, match="schedulers"):
        g.build(tg.RuntimeConfig(num_workers=1, num_schedulers=2), 0, 0)
    with pytest.raises(tg.GraphError, match="slots"):
        for _ in range(fmt.MAX_SLOTS + 1):
            g.workspace(16)


@pytest.mark.parametrize("code, message", [
    (fmt.ErrorCode.WATCHDOG_WORKER_IDLE, "worker 3 waited"),
    (fmt.ErrorCode.WATCHDOG_SCHEDULER_IDLE, "a scheduler (block 3) waited"),
    (fmt.ErrorCode.WATCHDOG_WORKER_QUEUE_FULL, "room in a worker queue to dispatch task 1"),
    (fmt.ErrorCode.WATCHDOG_TASK_WAIT, "task 1 (kind 3) of iteration 2 waited"),
    (fmt.ErrorCode.SCHED_QUEUE_OVERFLOW, "overflow while firing event 2"),
    (fmt.ErrorCode.BAD_TASK_KIND, "task 1 has unknown kind"),
    (fmt.ErrorCode.WATCHDOG_TASK_INPUTS, "task 1 of iteration 2 waited 10000 ms for event 2"),
    (77, "device error code 77"),
])
def test_failure_messages_name_the_wait(ext, code, message):
    p = mixed_program()
    counters = np.zeros(p.num_events, np.uint64)
    # Iteration 2 in flight: the end event fired twice, the fan-in event has 7 of 40 triggers.
    counters[p.end_event] = 2 * p.events[p.end_event]["threshold"]
    fan_in = int(np.argmax(p.events["threshold"]))
    counters[fan_in] = 2 * p.events[fan_in]["threshold"] + 7
    text = ext.describe_failure(p.to_bytes(), int(code), 3, 1, 2, 2, 5, 9, counters.tolist())
    assert message in text, text
    assert f"in iteration 2 of 3; 3 events did not fire; event {fan_in}" in text, text
    assert "has 7 of 40 triggers" in text and "outputs are not valid" in text
    # Garbage in the record (a task id out of range) still gives a message.
    assert "task 4294967295" in ext.describe_failure(p.to_bytes(), 4, 0, 2**32 - 1, 0, 0, 0, 0, [])


def test_run_once_rejects_bad_calls_before_touching_the_gpu():
    """run_once checks its aliases and the program before any CUDA call, so on a machine
    without a GPU too."""
    program = mixed_program()
    args = [np.arange(4096 * 3, dtype=np.uint8), np.zeros(8, np.uint8)]
    with pytest.raises(RuntimeError, match="result 0 aliases argument 1, which does not exist "
                                           "or differs in size"):
        runtime.run_once(program, args, [((4096 * 3,), np.uint8)], {0: 1})
    broken = _set("header", (), "schedule", 5)(program)
    with pytest.raises(RuntimeError, match="unknown schedule 5"):
        runtime.run_once(broken, args, [((4096 * 3,), np.uint8)])
