"""The task timeline: reading entries out of a workspace, and the trace files."""

import json

import numpy as np
import pytest
import random_dags

from jax_mpk import profile
from jax_mpk import program as fmt
from jax_mpk import taskgraph as tg


def profiled_program(capacity=4, workers=3):
    dag = random_dags.random_dag(np.random.default_rng(0), 10, 2)
    config = tg.RuntimeConfig(num_workers=workers, num_schedulers=1, profile_capacity=capacity)
    return random_dags.build(dag, config).program


def fake_workspace(program, counts, rng):
    """A workspace as a launch would leave it: counts and entries per worker."""
    layout = program.control_layout()
    ws = np.zeros(program.workspace_bytes, np.uint8)
    ws[layout.profile_counts : layout.profile_counts + 8 * len(counts)] = np.asarray(
        counts, np.uint64).view(np.uint8)
    cap = program.profile_capacity
    entries = np.zeros((len(counts), cap), fmt.PROFILE_ENTRY)
    entries["start_ns"] = 10_000 + rng.integers(0, 5000, entries.shape)
    entries["end_ns"] = entries["start_ns"] + rng.integers(1, 900, entries.shape)
    entries["task"] = rng.integers(0, program.num_tasks, entries.shape)
    entries["iteration"] = rng.integers(0, 3, entries.shape)
    entries["marks"] = rng.integers(1, 900, entries["marks"].shape)
    entries["marks"][..., -1] = 0  # a phase the task never reached
    raw = entries.reshape(-1).view(np.uint8)
    ws[layout.profile : layout.profile + raw.size] = raw
    return ws, entries


def test_read_keeps_recorded_entries_only(capsys):
    program = profiled_program()
    rng = np.random.default_rng(1)
    ws, entries = fake_workspace(program, [2, 0, 7], rng)  # worker 2 overflowed its 4 slots
    timeline = profile.read(program, ws)
    assert "3 entries did not fit" in capsys.readouterr().out
    assert len(timeline) == 2 + 4
    assert np.all(np.diff(timeline["start_us"]) >= 0) and timeline["start_us"][0] == 0
    expected = np.concatenate([entries[0, :2], entries[2, :4]])
    origin = expected["start_ns"].min()
    got = np.sort(timeline, order=["worker", "start_us"])
    want = np.sort(expected, order="start_ns")
    assert sorted(got["task"].tolist()) == sorted(expected["task"].tolist())
    np.testing.assert_allclose(np.sort(got["end_us"]), np.sort((want["end_ns"] - origin) / 1e3))
    assert set(got["kind"].tolist()) == {int(fmt.TaskKind.COMBINE_U32)}
    np.testing.assert_allclose(np.sort(got["marks_us"][:, 0]), np.sort(want["marks"][:, 0] / 1e3))
    assert np.isnan(got["marks_us"][:, -1]).all()


def test_trace_and_occupancy(tmp_path):
    program = profiled_program()
    ws, _ = fake_workspace(program, [4, 4, 4], np.random.default_rng(2))
    timeline = profile.read(program, ws)
    path = tmp_path / "trace.json"
    profile.write_chrome_trace(timeline, str(path))
    events = json.loads(path.read_text())["traceEvents"]
    assert len(events) == 12 and {e["name"] for e in events} == {"combine_u32"}
    _, busy = profile.occupancy(timeline, program.num_workers)
    assert 0 < busy.max() <= 1 + 1e-9
    total = (timeline["end_us"] - timeline["start_us"]).sum()
    centers, busy = profile.occupancy(timeline, program.num_workers, bins=50)
    width = timeline["end_us"].max() / 50
    assert busy.sum() * width * program.num_workers == pytest.approx(total)


def test_unprofiled_program_is_refused():
    with pytest.raises(ValueError, match="profile_capacity"):
        profile.read(profiled_program(capacity=0), np.zeros(16, np.uint8))



def test_after_same_kind_splits_by_the_previous_task_on_the_worker():
    from types import SimpleNamespace as NS

    graph = NS(ops=[NS(kind="matmul", label="o"), NS(kind="matmul", label="o"),
                    NS(kind="elementwise", label="")])
    compiled = NS(graph=graph, tasks=[NS(op=0), NS(op=1), NS(op=2), NS(op=0)])
    matmul, elementwise = int(fmt.TaskKind.MATMUL), int(fmt.TaskKind.ELEMENTWISE)
    kind = {0: matmul, 1: matmul, 2: elementwise, 3: matmul}
    # worker 0: the elementwise task, then o cold, then o warm; worker 1: o cold, o warm
    entries = [(0, 2, 0, 2), (0, 0, 3, 9), (0, 1, 10, 12), (1, 3, 1, 8), (1, 3, 9, 13)]
    timeline = np.array([(w, t, 0, kind[t], s, e, [np.nan] * fmt.PROFILE_MARKS)
                         for w, t, s, e in entries], profile.TIMELINE)
    rows = profile.after_same_kind(np.sort(timeline, order="start_us"), compiled)
    o, ew = rows
    assert o["what"] == "matmul [o]" and ew["what"] == "elementwise"
    assert (o["cold_tasks"], o["warm_tasks"]) == (2, 2)
    assert (o["cold_us"], o["warm_us"]) == (pytest.approx(6.5), pytest.approx(3.0))
    assert (ew["cold_tasks"], ew["warm_tasks"]) == (1, 0)


def test_mark_table_averages_each_phase_of_the_kinds_that_mark():
    from types import SimpleNamespace as NS

    graph = NS(ops=[NS(kind="matmul", label="o"), NS(kind="noop", label="")])
    compiled = NS(graph=graph, tasks=[NS(op=0), NS(op=0), NS(op=1)])
    matmul, noop = int(fmt.TaskKind.MATMUL), int(fmt.TaskKind.NOOP)
    nan = np.nan
    timeline = np.array([(0, 0, 0, matmul, 0.0, 10.0, [2.0, 6.0, nan, nan]),
                         (1, 1, 0, matmul, 1.0, 5.0, [4.0, nan, nan, nan]),
                         (0, 2, 0, noop, 11.0, 12.0, [nan] * 4)], profile.TIMELINE)
    (row,) = profile.mark_table(timeline, compiled)  # the noop marks nothing
    assert (row["what"], row["tasks"], row["task_us"]) == ("matmul [o]", 2, pytest.approx(7.0))
    names = profile.MARKS[fmt.TaskKind.MATMUL]
    assert row["marks"][names[0]] == pytest.approx(3.0)
    assert row["marks"][names[1]] == pytest.approx(6.0)
    assert np.isnan(row["marks"][names[2]])


@pytest.mark.gpu
def test_a_model_step_marks_its_phases_inside_its_tasks():
    """A tiny Llama step's timeline: the matmul, elementwise and attention tasks mark their
    phases, each within its task's time; the kinds that mark nothing leave NaN (a SEQUENCE
    carries the marks of its steps)."""
    import dataclasses

    import jax_mpk
    from examples.models.config import LLAMA
    from tests.harness import SMALL_DEVICE, decode_step

    step, args = decode_step(LLAMA.replace(max_len=300), "linen", 1, 1, seed=4)
    device = dataclasses.replace(SMALL_DEVICE, profile_capacity=1024)
    timeline = jax_mpk.jit(step, device=device).lower(*args).timeline(*args)
    duration = timeline["end_us"] - timeline["start_us"]
    for kind, names in profile.MARKS.items():
        mine = timeline["kind"] == int(kind)
        assert mine.any(), kind
        marks = timeline["marks_us"][mine][:, : len(names)]
        assert not np.isnan(marks[:, 0]).any(), kind  # every task reaches its first phase
        reached = ~np.isnan(marks)
        assert (marks[reached] > 0).all()
        assert (marks <= duration[mine][:, None] + 1.0)[reached].all(), kind  # 1 µs: the timer
    others = ~np.isin(timeline["kind"], [int(k) for k in profile.MARKS] + [fmt.TaskKind.SEQUENCE])
    assert np.isnan(timeline["marks_us"][others]).all()
