"""`jax_mpk.jit`: jax.jit's interface, running the function as one task graph."""

from __future__ import annotations

import collections
import dataclasses
import functools
import sys

import jax
import numpy as np

from jax_mpk import passes, reference, tensor_parallel
from jax_mpk.frontend import build_graph
from jax_mpk.program import TaskKind
from jax_mpk.report import report
from jax_mpk.tensor_parallel import TensorParallel
from jax_mpk.tiling import STEP_TASK_KINDS, CompiledProgram, DeviceSpec, compile_graph

BACKENDS = ("auto", "megakernel", "reference")


def jit(fn=None, *, static_argnums=(), donate_argnums=(), backend: str = "auto",
        device: DeviceSpec | None = None, schedule: str = "static",
        tensor_parallel: TensorParallel | None = None):
    """Like jax.jit(fn); backend "reference" runs the program with the numpy executor.

    schedule: "static" (compiled per-worker task lists) or "dynamic" (scheduler
    warps dispatch tasks as their events fire); see README.md, The runtime.
    tensor_parallel: compile fn as one rank's code, its `jax.lax.psum`/`all_gather` over
    that axis becoming NVSHMEM collectives (jax_mpk/tensor_parallel.py).
    """
    if fn is None:
        return functools.partial(jit, static_argnums=static_argnums,
                                 donate_argnums=donate_argnums, backend=backend, device=device,
                                 schedule=schedule, tensor_parallel=tensor_parallel)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if device is None:
        device = _default_device(backend, schedule)
    return Function(fn, _tuple(static_argnums), _tuple(donate_argnums), backend, device,
                    tensor_parallel)


def _default_device(backend: str, schedule: str) -> DeviceSpec:
    """The CUDA device the megakernel runs on, else an H100."""
    if backend != "reference" and _has_cuda():
        from jax_mpk import runtime

        return DeviceSpec.of_cuda_device(runtime.device_info(), schedule=schedule)
    return DeviceSpec(schedule=schedule)


def _tuple(x) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


@dataclasses.dataclass
class Compiled:
    """One compiled program and how flat arguments and results map onto it."""

    program: CompiledProgram
    in_tree: object
    out_tree: object
    results: list[tuple[tuple[int, ...], np.dtype]]
    aliases: dict[int, int]  # result index -> flat argument index written in place
    names: list[str]
    registered: object = None  # the program as registered with the extension, once launched
    tensor_parallel: TensorParallel | None = None

    @property
    def symmetric_buffers(self) -> dict[int, int]:
        """Bytes of each symmetric buffer the program names, by id (tensor_parallel.py)."""
        return self.program.symmetric_buffers

    @property
    def task_kinds(self) -> collections.Counter:
        return collections.Counter(r.kind for r in self.program.tasks)

    @property
    def kinds_run(self) -> collections.Counter:
        """task_kinds, each sequence task counting also as a task of each of its steps."""
        kinds = self.task_kinds
        for r in self.program.tasks:
            if r.kind == TaskKind.SEQUENCE:
                kinds.update(STEP_TASK_KINDS[s.kind]
                             for s in self.program.graph.ops[r.op].attrs["steps"])
        return kinds


class Lowered:
    def __init__(self, compiled: Compiled, name: str):
        self.compiled = compiled
        self.name = name

    @property
    def program(self):
        return self.compiled.program.program

    def as_text(self) -> str:
        return report(self.compiled, self.name)

    def timeline(self, *args):
        """Runs the program once on the GPU and returns its task timeline
        (jax_mpk.profile.read); compile with DeviceSpec(profile_capacity=N)."""
        from jax_mpk import profile

        flat = jax.tree.leaves(args)
        workspace = _megakernel_call(self.compiled, flat, return_workspace=True)[-1]
        return profile.read(self.program, np.asarray(workspace))


class Function:
    def __init__(self, fn, static_argnums, donate_argnums, backend, device,
                 tensor_parallel=None):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.static_argnums = static_argnums
        self.donate_argnums = donate_argnums
        self.backend = backend
        self.device = device
        self.tensor_parallel = tensor_parallel
        self._cache: dict = {}
        self._noticed = False
        # The megakernel launch runs under jax.jit: its C++ dispatch path, and XLA aliases
        # donated buffers to the outputs written in place instead of copying them.
        self._launch = jax.jit(self._launch_traced, static_argnums=static_argnums,
                               donate_argnums=donate_argnums)

    def _launch_traced(self, *args):
        compiled, flat = self._compile(args)
        return jax.tree.unflatten(compiled.out_tree, _megakernel_call(compiled, flat))

    def _split(self, args):
        static = tuple((i, args[i]) for i in self.static_argnums)
        dynamic = [a for i, a in enumerate(args) if i not in self.static_argnums]
        return static, dynamic

    def compile_for(self, args: tuple) -> tuple[Compiled, list]:
        """The compiled program for these arguments and its flat arguments."""
        return self._compile(args)

    def _compile(self, args) -> tuple[Compiled, list]:
        static, dynamic = self._split(args)
        flat, in_tree = jax.tree.flatten(dynamic)
        flat = [x if hasattr(x, "dtype") else jax.numpy.asarray(x) for x in flat]
        key = (static, in_tree, tuple((tuple(x.shape), np.dtype(x.dtype)) for x in flat))
        compiled = self._cache.get(key)
        if compiled is None:
            compiled = self._trace_and_compile(static, flat, in_tree)
            self._cache[key] = compiled
        return compiled, flat

    def _trace_and_compile(self, static, flat, in_tree) -> Compiled:
        static_values = dict(static)
        dynamic = jax.tree.unflatten(in_tree, flat)
        positions = [i for i in range(len(dynamic) + len(static))
                     if i not in static_values]

        def flat_fn(*flat_args):
            dyn = jax.tree.unflatten(in_tree, flat_args)
            full = [None] * (len(dyn) + len(static_values))
            for i, v in static_values.items():
                full[i] = v
            for i, v in zip(positions, dyn, strict=False):
                full[i] = v
            return self.fn(*full)

        flat_avals = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in flat]
        tp = self.tensor_parallel
        axis_env = [(tp.axis, tp.size)] if tp else []
        closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True,
                                           axis_env=axis_env)(*flat_avals)
        donated, names = [], []
        paths = jax.tree_util.tree_flatten_with_path(dynamic)[0]
        for path, _ in paths:
            position = positions[path[0].idx] if path else 0
            donated.append(position in self.donate_argnums)
            names.append(f"arg{position}{jax.tree_util.keystr(path[1:])}")
        graph = build_graph(closed, donated, names, tp)
        spec = self._device_spec()
        passes.optimize(graph, fuse_attention=spec.fused_attention, fold_norms=spec.fold_norms,
                        fold_gating=spec.fold_gating, fold_appends=spec.fold_cache_appends,
                        device=spec)
        program = compile_graph(graph, spec, tp)
        out_leaves, out_tree = jax.tree.flatten(out_shape)
        results = [(tuple(o.shape), np.dtype(o.dtype)) for o in out_leaves]
        return Compiled(program, in_tree, out_tree, results, dict(graph.aliases), names,
                        tensor_parallel=tp)

    def _device_spec(self) -> DeviceSpec:
        return self.device

    def lower(self, *args) -> Lowered:
        compiled, _ = self._compile(args)
        return Lowered(compiled, getattr(self.fn, "__name__", "fn"))

    def __call__(self, *args):
        tp = self.tensor_parallel
        backend = self.backend
        if backend == "auto":
            backend = "megakernel" if _has_cuda() else "reference"
            if backend == "reference" and not self._noticed:
                print("jax_mpk: no CUDA device; running the task graph on the numpy reference "
                      "executor", file=sys.stderr)
                self._noticed = True
        if backend == "reference" and tp is not None and tp.size > 1:
            raise NotImplementedError(
                f"rank {tp.rank} of {tp.size} cannot run alone on the reference executor: run "
                "every rank's function together with jax_mpk.tensor_parallel.run_reference, or "
                "launch one process per GPU (jax_mpk.distributed.init) and call it there")
        if backend != "reference":
            return self._launch(*args)
        compiled, flat = self._compile(args)
        outs = reference.execute(compiled.program.program, [np.asarray(x) for x in flat],
                                 compiled.results, compiled.aliases)
        return jax.tree.unflatten(compiled.out_tree, [jax.numpy.asarray(o) for o in outs])


@functools.cache  # asked on every call; the devices of a process do not change
def _has_cuda() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def _megakernel_call(compiled: Compiled, flat_args, return_workspace: bool = False):
    from jax_mpk import runtime  # the compiled extension loads only here

    if compiled.registered is None:  # checked once: a count over every task costs ms
        missing = sorted({k.name for k in compiled.task_kinds} - runtime.implemented_task_kinds())
        if missing:
            raise NotImplementedError(
                "the megakernel has no CUDA implementation of task kinds "
                f"{', '.join(missing)} yet; run with backend=\"reference\" meanwhile")
        if compiled.symmetric_buffers:
            compiled.registered = tensor_parallel.register_on_symmetric_buffers(compiled)
        else:
            compiled.registered = runtime.RegisteredProgram(compiled.program.program)
    out_shapes = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in compiled.results]
    aliases = {arg: result for result, arg in compiled.aliases.items()}
    return runtime.call(compiled.registered, flat_args, out_shapes, aliases,
                        return_workspace=return_workspace)
