"""The task timeline of a profiled launch: which worker ran which task when.

Build the program with `RuntimeConfig(profile_capacity=N)`, launch it with
`runtime.call(..., return_workspace=True)`, then `read(program, workspace)`.
"""

from __future__ import annotations

import json
import warnings

import numpy as np

from jax_mpk import program as fmt

TIMELINE = np.dtype([("worker", "<u4"), ("task", "<u4"), ("iteration", "<u4"),
                     ("kind", "<u2"), ("start_us", "<f8"), ("end_us", "<f8"),
                     ("marks_us", "<f8", (fmt.PROFILE_MARKS,))])

# What the phase marks of a kind stand for (TaskContext::mark in its kernel): µs from the
# task's start to the first time it got there; NaN where a task never did. A SEQUENCE's
# entry carries the marks of its steps.
MARKS = {
    fmt.TaskKind.MATMUL: ("x staged", "first columns summed", "first columns stored"),
    fmt.TaskKind.ELEMENTWISE: ("program staged", "inputs prefetched", "first element stored"),
    fmt.TaskKind.DECODE_ATTENTION: ("q staged", "scores", "softmax", "values"),
}


def _what(op) -> str:
    """An op as the tables name it: its kind and its label."""
    return op.kind + (f" [{op.label}]" if op.label else "")


def read(program: fmt.Program, workspace) -> np.ndarray:
    """Timeline entries sorted by start, times in µs from the first start."""
    capacity = program.profile_capacity
    if capacity == 0:
        raise ValueError("the program was built without a timeline: set profile_capacity")
    layout = program.control_layout()
    raw = np.asarray(workspace).view(np.uint8)
    workers = program.num_workers
    counts = raw[layout.profile_counts : layout.profile_counts + 8 * workers].view(np.uint64)
    entries = raw[layout.profile : layout.profile + fmt.PROFILE_ENTRY.itemsize * workers * capacity]
    entries = entries.view(fmt.PROFILE_ENTRY).reshape(workers, capacity)
    recorded = np.minimum(counts, capacity).astype(np.int64)
    if (counts > capacity).any():
        print(f"jax_mpk.profile: {int((counts - recorded).sum())} entries did not fit "
              f"{capacity} per worker")
    out = np.zeros(int(recorded.sum()), TIMELINE)
    at = 0
    for w in range(workers):
        rows = entries[w, : recorded[w]]
        out[at : at + len(rows)]["worker"] = w
        for name in ("task", "iteration"):
            out[at : at + len(rows)][name] = rows[name]
        out[at : at + len(rows)]["start_us"] = rows["start_ns"] / 1e3
        out[at : at + len(rows)]["end_us"] = rows["end_ns"] / 1e3
        marks = rows["marks"].astype(np.float64) / 1e3
        marks[rows["marks"] == 0] = np.nan
        out[at : at + len(rows)]["marks_us"] = marks
        at += len(rows)
    out["kind"] = program.tasks["kind"][out["task"]]
    if len(out):
        origin = out["start_us"].min()
        out["start_us"] -= origin
        out["end_us"] -= origin
    return np.sort(out, order="start_us")


def _kind_name(kind: int) -> str:
    try:
        return fmt.TaskKind(kind).name.lower()
    except ValueError:
        return f"kind {kind}"


def write_chrome_trace(timeline: np.ndarray, path: str) -> None:
    """A Chrome / Perfetto trace: one track per worker SM."""
    events = [
        {"name": _kind_name(int(e["kind"])), "ph": "X", "pid": 0, "tid": int(e["worker"]),
         "ts": float(e["start_us"]), "dur": float(e["end_us"] - e["start_us"]),
         "args": {"task": int(e["task"]), "iteration": int(e["iteration"])}}
        for e in timeline
    ]
    with open(path, "w") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ns"}, f)


def occupancy(timeline: np.ndarray, num_workers: int, bins: int = 400):
    """(bin centers in µs, fraction of workers busy in each bin)."""
    end = float(timeline["end_us"].max()) if len(timeline) else 1.0
    edges = np.linspace(0.0, end, bins + 1)
    busy = np.zeros(bins)
    for e in timeline:
        lo, hi = e["start_us"], e["end_us"]
        overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)
        busy += overlap
    return (edges[:-1] + edges[1:]) / 2, busy / (np.diff(edges) * num_workers)


def plot_occupancy(timeline: np.ndarray, num_workers: int, path: str) -> None:
    """A PNG of worker occupancy over time and of each worker's tasks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centers, busy = occupancy(timeline, num_workers)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 3]})
    top.plot(centers, busy)
    top.set_ylabel("workers busy")
    top.set_ylim(0, 1.05)
    kinds = sorted(set(timeline["kind"].tolist()))
    colors = {k: plt.cm.tab10(i % 10) for i, k in enumerate(kinds)}
    for k in kinds:
        rows = timeline[timeline["kind"] == k]
        bottom.barh(rows["worker"], rows["end_us"] - rows["start_us"], left=rows["start_us"],
                    height=0.8, color=colors[k], label=_kind_name(k))
    bottom.set_xlabel("µs")
    bottom.set_ylabel("worker")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def op_table(timeline: np.ndarray, compiled_program) -> list[dict]:
    """Per op of a compiled model step (tiling.CompiledProgram): its tasks, the µs from its
    first task's start to its last task's end, and the µs its tasks kept workers busy;
    ordered by the op's first start."""
    ops = np.array([record.op for record in compiled_program.tasks])[timeline["task"]]
    graph = compiled_program.graph
    rows = []
    for op in np.unique(ops):
        mine = timeline[ops == op]
        node = graph.ops[int(op)]
        rows.append({"op": int(op), "what": _what(node),
                     "source": node.source, "tasks": len(mine),
                     "start_us": float(mine["start_us"].min()),
                     "span_us": float(mine["end_us"].max() - mine["start_us"].min()),
                     "busy_us": float((mine["end_us"] - mine["start_us"]).sum())})
    return sorted(rows, key=lambda r: r["start_us"])



def mark_table(timeline: np.ndarray, compiled_program) -> list[dict]:
    """Per op kind whose task kind marks phases (MARKS): its tasks, their mean µs, and the
    mean µs from a task's start to each phase it marked."""
    whats = np.array([_what(op) for op in compiled_program.graph.ops])
    op_of = np.array([record.op for record in compiled_program.tasks])
    entry_whats = whats[op_of[timeline["task"]]]
    rows = []
    for what in np.unique(entry_whats):
        mine = timeline[entry_whats == what]
        names = MARKS.get(int(mine["kind"][0]))
        if not names:
            continue
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a phase no task reached: NaN
            means = np.nanmean(mine["marks_us"][:, : len(names)], axis=0)
        rows.append({"what": str(what), "tasks": len(mine),
                     "task_us": float((mine["end_us"] - mine["start_us"]).mean()),
                     "marks": dict(zip(names, (float(m) for m in means), strict=True))})
    return rows


def after_same_kind(timeline: np.ndarray, compiled_program) -> list[dict]:
    """Per op kind of a compiled model step: the mean µs of its tasks that ran right after a
    task of the same task kind on their worker ("warm": that code just ran there) and of
    those that ran first or after another kind ("cold"). A large gap points at the
    instruction cache rather than at the task's bytes."""
    ops = compiled_program.graph.ops
    whats = [_what(op) for op in ops]
    op_of = np.array([record.op for record in compiled_program.tasks])
    split: dict[str, dict[str, list[float]]] = {}
    for worker in np.unique(timeline["worker"]):
        previous = None
        for entry in timeline[timeline["worker"] == worker]:  # in order of start
            bucket = "warm" if entry["kind"] == previous else "cold"
            times = split.setdefault(whats[op_of[entry["task"]]], {"warm": [], "cold": []})
            times[bucket].append(float(entry["end_us"] - entry["start_us"]))
            previous = entry["kind"]
    rows = [{"what": what, **{f"{b}_tasks": len(t) for b, t in times.items()},
             **{f"{b}_us": float(np.mean(t)) if t else float("nan") for b, t in times.items()}}
            for what, times in split.items()]
    return sorted(rows, key=lambda r: -(r["warm_tasks"] + r["cold_tasks"]))
