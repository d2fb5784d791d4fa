"""The compiled extension, the FFI target, and launching a program from JAX."""

from __future__ import annotations

import atexit
import functools
import sys
import weakref
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jax_mpk import program as fmt

TARGET = "jax_mpk_megakernel"


@functools.cache
def extension():
    try:
        from jax_mpk import _jax_mpk
    except ImportError as e:
        raise ImportError(
            "jax_mpk's compiled extension is missing; install the package with "
            "`pip install .` (it builds the CUDA runtime with nvcc)"
        ) from e
    return _jax_mpk


@functools.cache
def _register_target() -> None:
    ext = extension()
    jax.ffi.register_ffi_type("jax_mpk_call_site", ext.call_site_type(), platform="CUDA")
    for name, stages in ext.registrations().items():
        jax.ffi.register_ffi_target(name, stages, platform="CUDA")
    atexit.register(_report_unchecked_failures)  # a deferred failure no launch came to read


def cuda_devices() -> list[jax.Device]:
    """This process's CUDA devices (under jax.distributed, jax.devices() lists every process's)."""
    try:
        return jax.local_devices(backend="gpu")
    except RuntimeError:
        return []


def device_info(device: jax.Device | int | None = None) -> dict:
    """SM count, opt-in shared memory per block and name of a CUDA device (a CUDA ordinal
    asks CUDA directly, with no JAX GPU backend)."""
    if not isinstance(device, int):
        device = (device or cuda_devices()[0]).local_hardware_id
    return extension().device_info(device)


def hbm_copy_rate(nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Bytes per second (read + written) of a device-to-device cudaMemcpy on
    the current CUDA device: the ceiling bandwidth benchmarks report against."""
    return extension().copy_rate(nbytes, repeats)


def last_launch_timing() -> dict:
    """The last megakernel launch in this process: `kernel_us`, the kernel alone (CUDA
    events on its stream), and `run_us`, the FFI handler's whole run on the host (slot
    binding, control-region memset, launch, and the wait for the kernel's error record).
    With DeviceSpec(defer_errors=True) the handler does not wait, and `kernel_us` is that of
    the newest launch whose end the handler has seen."""
    return extension().last_launch_timing()


def check_launches(results=None) -> None:
    """Waits for `results` (any pytree of arrays), then for every megakernel launch in this
    process, and raises RuntimeError with the first failure not reported yet. A program
    compiled with DeviceSpec(defer_errors=True) returns from each launch once it is queued;
    a launch of it that fails fills its results with NaN and raises from the next launch of
    the same program, or from here."""
    if results is not None:
        jax.block_until_ready(results)
    why = extension().check_launches()
    if why:
        raise RuntimeError(f"jax_mpk megakernel: {why}")


def _report_unchecked_failures() -> None:
    try:
        check_launches()
    except RuntimeError as e:
        print(f"a megakernel launch failed and was never reported: {e}", file=sys.stderr)


def implemented_task_kinds() -> set[str]:
    """Names (as in program.TaskKind) of the task kinds the CUDA library implements."""
    return {fmt.TaskKind(kind).name for kind in extension().task_kinds()}


def validate(program: fmt.Program) -> None:
    """Raises ValueError naming what is wrong with the program, if anything."""
    why = extension().validate_program(program.to_bytes())
    if why:
        raise ValueError(f"invalid program: {why}")


class RegisteredProgram:
    """A program held by the extension for as long as this object lives."""

    def __init__(self, program: fmt.Program):
        self.program = program
        self.key = extension().register_program(program.to_bytes())
        weakref.finalize(self, extension().release_program, self.key)


def call(
    registered: RegisteredProgram,
    args: Sequence[jax.Array],
    out_shapes: Sequence[jax.ShapeDtypeStruct],
    input_output_aliases: Mapping[int, int] | None = None,
    return_workspace: bool = False,
) -> list[jax.Array]:
    """Runs the program as one persistent kernel, eagerly or inside a trace.

    `args` bind to ARG slots and `out_shapes` to RET slots by position; the
    workspace is appended as the last result and returned only when asked for
    (it holds the timeline of a profiled program: jax_mpk.profile reads it).
    """
    _register_target()
    program = registered.program
    if len(args) != program.num_args or len(out_shapes) != program.num_rets:
        raise ValueError(
            f"the program takes {program.num_args} operands and {program.num_rets} results; "
            f"got {len(args)} and {len(out_shapes)}"
        )
    workspace = jax.ShapeDtypeStruct((program.workspace_bytes,), np.uint8)
    outs = jax.ffi.ffi_call(
        TARGET,
        [*out_shapes, workspace],
        input_output_aliases=dict(input_output_aliases or {}),
        # With no outputs, nothing else keeps XLA from dropping the call.
        has_side_effect=not out_shapes and not return_workspace,
    )(*args, program=np.uint64(registered.key))
    return list(outs) if return_workspace else list(outs[:-1])


def run_once(
    program: fmt.Program,
    args: Sequence[np.ndarray],
    results: Sequence[tuple[tuple[int, ...], np.dtype]],
    aliases: Mapping[int, int] | None = None,
) -> list[np.ndarray]:
    """Runs the program once on the current CUDA device without JAX: each argument is
    copied to the device and each result back. Result i is written in place into argument
    aliases[i], as a donated buffer is. For compute-sanitizer, which has crashed at start in
    processes that use JAX's GPU backend: with JAX_PLATFORMS=cpu, JAX traces and checks on
    the CPU and only this touches the GPU (scripts/sanitize_*.py)."""
    aliases = dict(aliases or {})
    result_bytes = [int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in results]
    raw = extension().run_once(
        program.to_bytes(), [np.ascontiguousarray(a).tobytes() for a in args], result_bytes,
        [aliases.get(i, -1) for i in range(len(results))])
    return [np.frombuffer(r, dtype).reshape(shape).copy()
            for r, (shape, dtype) in zip(raw, results, strict=True)]
