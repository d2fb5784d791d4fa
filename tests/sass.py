"""Reading the megakernel's machine code without a GPU: the CUDA binary tools, the mnemonic
of a SASS line, and each instruction's chain of inlined source lines (tests/test_ptxas.py,
scripts/ncu_by_kind.py, scripts/sass_by_line.py)."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

LOCATION = re.compile(r'//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def cuda_tool(name: str) -> str | None:
    """A CUDA binary tool (cuobjdump, nvdisasm) from the toolkit, or from its pip wheel
    (nvidia-cuda-<name>, under nvidia/<package>/bin); None if neither has it."""
    found = shutil.which(name)
    if found:
        return found
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        for path in glob.glob(os.path.join(root, "*", "bin", name)):
            return path
    return None


def opcode(sass: str) -> str:
    """The instruction's mnemonic, past a predicate such as @!P0."""
    words = sass.split()
    return words[1] if words and words[0].startswith("@") and len(words) > 1 else (words or [""])[0]


def located_instructions(runtime_library: str) -> Iterator[tuple[int, list[tuple[str, int]], str]]:
    """(offset, chain, SASS) of each instruction of the megakernel's sm_90 code in a built
    libjax_mpk_runtime.so, by nvdisasm -gi's line table: chain lists the (file, line) of the
    instruction's source and of each call it is inlined into, innermost first."""
    cuobjdump, nvdisasm = cuda_tool("cuobjdump"), cuda_tool("nvdisasm")
    if not (cuobjdump and nvdisasm):
        raise FileNotFoundError("cuobjdump and nvdisasm: neither on PATH nor in the nvidia wheels "
                                "(pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([cuobjdump, "-xelf", "all", os.path.abspath(runtime_library)],
                       cwd=tmp, check=True, capture_output=True)
        cubin = next(os.path.join(tmp, f) for f in os.listdir(tmp)
                     if f.startswith("megakernel") and "sm_90" in f)
        text = subprocess.run([nvdisasm, "-gi", "-c", cubin], check=True,
                              capture_output=True, text=True).stdout
    chain, fresh = [], False
    for line in text.splitlines():
        if match := LOCATION.search(line):
            if not fresh:  # a new block of locations: the next instruction's chain
                chain, fresh = [], True
            file, at, outer, outer_at = match.groups()
            chain.append((file, int(at)))
            if outer:
                chain.append((outer, int(outer_at)))
        elif match := INSTRUCTION.search(line):
            yield int(match.group(1), 16), chain, match.group(2)
            fresh = False
