"""`jax_mpk.jit`: jax.jit's interface, running the function as one task graph."""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import sys

import jax
import numpy as np

from jax_mpk import passes, reference, tensor_parallel
from jax_mpk.frontend import build_graph
from jax_mpk.frontend.rules import is_key
from jax_mpk.program import TaskKind
from jax_mpk.report import report
from jax_mpk.tensor_parallel import TensorParallel
from jax_mpk.tiling import STEP_TASK_KINDS, CompiledProgram, DeviceSpec, compile_graph

BACKENDS = ("auto", "megakernel", "reference")


def jit(fn=None, *, static_argnums=(), static_argnames=(), donate_argnums=(),
        donate_argnames=(), backend: str = "auto", device: DeviceSpec | None = None,
        schedule: str = "static", tensor_parallel: TensorParallel | None = None):
    """Like jax.jit(fn); backend "reference" runs the program with the numpy executor.

    Arguments are passed as to jax.jit's function, positionally or by keyword; static and
    donated ones are named by position or by name (jax.jit's four *_argnums/_argnames).
    schedule: "static" (compiled per-worker task lists) or "dynamic" (scheduler
    warps dispatch tasks as their events fire); see README.md, The runtime.
    tensor_parallel: compile fn as one rank's code, its `jax.lax.psum`/`all_gather` over
    that axis becoming NVSHMEM collectives (jax_mpk/tensor_parallel.py).
    """
    if fn is None:
        return functools.partial(jit, static_argnums=static_argnums,
                                 static_argnames=static_argnames, donate_argnums=donate_argnums,
                                 donate_argnames=donate_argnames, backend=backend, device=device,
                                 schedule=schedule, tensor_parallel=tensor_parallel)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if device is None:
        device = _default_device(backend, schedule)
    static = Arguments.named(fn, static_argnums, static_argnames)
    donated = Arguments.named(fn, donate_argnums, donate_argnames)
    both = (static.positions & donated.positions) | (static.names & donated.names)
    if both:
        raise ValueError(f"arguments {sorted(both, key=str)} are both static and donated")
    return Function(fn, static, donated, backend, device, tensor_parallel)


def _default_device(backend: str, schedule: str) -> DeviceSpec:
    """The CUDA device the megakernel runs on, else an H100."""
    if backend != "reference" and _has_cuda():
        from jax_mpk import runtime

        return DeviceSpec.of_cuda_device(runtime.device_info(), schedule=schedule)
    return DeviceSpec(schedule=schedule)


@dataclasses.dataclass(frozen=True)
class Arguments:
    """A set of fn's arguments, by position and by name: each named parameter that can be
    passed either way is in both (as jax.jit resolves static_argnums and static_argnames)."""

    positions: frozenset[int]
    names: frozenset[str]

    @classmethod
    def named(cls, fn, argnums, argnames) -> Arguments:
        positions = {argnums} if isinstance(argnums, int) else set(argnums)
        names = {argnames} if isinstance(argnames, str) else set(argnames)
        try:
            parameters = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # no signature to read: take them as given
            parameters = []
        either = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        for i, name in enumerate(either):
            if i in positions or name in names:
                positions.add(i)
                names.add(name)
        return cls(frozenset(positions), frozenset(names))

    def __contains__(self, key: int | str) -> bool:
        return key in (self.positions if isinstance(key, int) else self.names)


@dataclasses.dataclass(frozen=True)
class Call:
    """A call's arguments split for tracing: `static` is hashable (its static arguments and
    where every other argument goes), `donated` and `kept` the dynamic arguments' values,
    positions as ints and keywords as strs in `donated_keys` and `kept_keys`."""

    static: tuple
    donated_keys: tuple
    kept_keys: tuple

    @classmethod
    def split(cls, args, kwargs, static: Arguments, donated: Arguments):
        parts = {"static": [], "donated": [], "kept": []}
        for key, value in [*enumerate(args), *sorted(kwargs.items())]:
            part = "static" if key in static else "donated" if key in donated else "kept"
            parts[part].append((key, value))
        static_items = tuple(parts["static"])
        try:
            hash(static_items)
        except TypeError as e:
            raise ValueError(f"static arguments must be hashable, as jax.jit's are: {e}") from e
        call = cls(static_items, tuple(k for k, _ in parts["donated"]),
                   tuple(k for k, _ in parts["kept"]))
        return call, tuple(v for _, v in parts["donated"]), tuple(v for _, v in parts["kept"])

    def rebuild(self, donated, kept) -> tuple[list, dict]:
        """fn's positional and keyword arguments from the dynamic values."""
        items = [*self.static, *zip(self.donated_keys, donated, strict=True),
                 *zip(self.kept_keys, kept, strict=True)]
        positional = sorted((kv for kv in items if isinstance(kv[0], int)), key=lambda kv: kv[0])
        return [v for _, v in positional], {k: v for k, v in items if isinstance(k, str)}

    @staticmethod
    def name(key: int | str) -> str:
        return f"arg{key}" if isinstance(key, int) else key


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
    out_key_impls: tuple = ()  # per flat result: the PRNG impl of a key result (its key data)

    def unflatten(self, flat_results):
        """The function's results from the program's: keys wrapped again, as fn returned them."""
        impls = self.out_key_impls or (None,) * len(flat_results)
        leaves = [jax.random.wrap_key_data(x, impl=impl) if impl else x
                  for x, impl in zip(flat_results, impls, strict=True)]
        return jax.tree.unflatten(self.out_tree, leaves)

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
    def __init__(self, compiled: Compiled, name: str, function: Function):
        self.compiled = compiled
        self.name = name
        self.function = function

    @property
    def program(self):
        """The binary program; None for a function without results (nothing runs)."""
        return self.compiled.program and self.compiled.program.program

    def as_text(self) -> str:
        return report(self.compiled, self.name)

    def timeline(self, *args, **kwargs):
        """Runs the program once on the GPU and returns its task timeline
        (jax_mpk.profile.read); compile with DeviceSpec(profile_capacity=N)."""
        from jax_mpk import profile

        _, flat = self.function.compile_for(args, kwargs)
        workspace = _megakernel_call(self.compiled, flat, return_workspace=True)[-1]
        return profile.read(self.program, np.asarray(workspace))


class Function:
    def __init__(self, fn, static: Arguments, donated: Arguments, backend, device,
                 tensor_parallel=None):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.static = static
        self.donated = donated
        self.backend = backend
        self.device = device
        self.tensor_parallel = tensor_parallel
        self._cache: dict = {}
        self._noticed = False
        # The megakernel launch runs under jax.jit: its C++ dispatch path, and XLA aliases
        # donated buffers to the outputs written in place instead of copying them.
        self._launch = jax.jit(self._launch_traced, static_argnums=0, donate_argnums=1)

    def _launch_traced(self, call: Call, donated, kept):
        compiled, flat = self._compile(call, donated, kept)
        if not compiled.results:  # nothing to compute: no launch, as jax.jit runs nothing
            return compiled.unflatten([])
        return compiled.unflatten(_megakernel_call(compiled, flat))

    def compile_for(self, args: tuple, kwargs: dict | None = None) -> tuple[Compiled, list]:
        """The compiled program for these arguments and its flat arguments."""
        return self._compile(*Call.split(args, kwargs or {}, self.static, self.donated))

    def _compile(self, call: Call, donated, kept) -> tuple[Compiled, list]:
        flat, in_tree = jax.tree.flatten((donated, kept))
        # As jax.jit takes them: numpy arrays and Python scalars in jax's dtypes (float64
        # numpy arrays as float32 unless jax_enable_x64); abstract shapes for lower() as given.
        flat = [x if isinstance(x, jax.Array | jax.ShapeDtypeStruct) else jax.numpy.asarray(x)
                for x in flat]
        key = (call, in_tree, tuple((tuple(x.shape), x.dtype) for x in flat))
        compiled = self._cache.get(key)
        if compiled is None:
            compiled = self._trace_and_compile(call, flat, in_tree)
            self._cache[key] = compiled
        return compiled, [jax.random.key_data(x) if is_key(x) else x for x in flat]

    def _trace_and_compile(self, call: Call, flat, in_tree) -> Compiled:
        # PRNG keys (an nnx module's Rngs, say) go in and out as their key data.
        key_impls = [jax.random.key_impl(x) if is_key(x) else None for x in flat]
        out_key_impls = []

        def flat_fn(*flat_args):
            flat_args = [jax.random.wrap_key_data(x, impl=impl) if impl else x
                         for x, impl in zip(flat_args, key_impls, strict=True)]
            args, kwargs = call.rebuild(*jax.tree.unflatten(in_tree, flat_args))
            leaves, tree = jax.tree.flatten(self.fn(*args, **kwargs))
            # As jax.jit returns them: a Python or numpy scalar result as a jax array.
            leaves = [x if isinstance(x, jax.Array) else jax.numpy.asarray(x) for x in leaves]
            out_key_impls[:] = [jax.random.key_impl(x) if is_key(x) else None for x in leaves]
            return jax.tree.unflatten(tree, [jax.random.key_data(x) if is_key(x) else x
                                             for x in leaves])

        donated, names = [], []
        paths = jax.tree_util.tree_flatten_with_path(jax.tree.unflatten(in_tree, flat))[0]
        for path, _ in paths:  # (donated or kept, which argument, the path inside it)
            part, index = path[0].idx, path[1].idx
            key = (call.donated_keys, call.kept_keys)[part][index]
            donated.append(part == 0)
            names.append(f"{call.name(key)}{jax.tree_util.keystr(path[2:])}")
        flat_avals = [jax.random.key_data(x) if is_key(x) else x for x in flat]
        flat_avals = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in flat_avals]
        tp = self.tensor_parallel
        axis_env = [(tp.axis, tp.size)] if tp else []
        closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True,
                                           axis_env=axis_env)(*flat_avals)
        out_leaves, out_tree = jax.tree.flatten(out_shape)
        results = [(tuple(o.shape), np.dtype(o.dtype)) for o in out_leaves]
        if not results:  # nothing to compute: calls return out_tree's empty leaves, as jax.jit's
            return Compiled(None, in_tree, out_tree, [], {}, names, tensor_parallel=tp)
        graph = build_graph(closed, donated, names, tp)
        spec = self._device_spec()
        passes.optimize(graph, fuse_attention=spec.fused_attention, fold_norms=spec.fold_norms,
                        fold_gating=spec.fold_gating, fold_appends=spec.fold_cache_appends,
                        fold_rope=spec.fold_rope, device=spec)
        program = compile_graph(graph, spec, tp)
        return Compiled(program, in_tree, out_tree, results, dict(graph.aliases), names,
                        tensor_parallel=tp, out_key_impls=tuple(out_key_impls))

    def _device_spec(self) -> DeviceSpec:
        return self.device

    def lower(self, *args, **kwargs) -> Lowered:
        compiled, _ = self.compile_for(args, kwargs)
        return Lowered(compiled, getattr(self.fn, "__name__", "fn"), self)

    def __call__(self, *args, **kwargs):
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
        split = Call.split(args, kwargs, self.static, self.donated)
        if backend != "reference":
            return self._launch(*split)
        compiled, flat = self._compile(*split)
        if not compiled.results:
            return compiled.unflatten([])
        outs = reference.execute(compiled.program.program, [np.asarray(x) for x in flat],
                                 compiled.results, compiled.aliases)
        return compiled.unflatten([jax.numpy.asarray(o) for o in outs])


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
