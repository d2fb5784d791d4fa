"""Reading the megakernel's machine code without a GPU: the CUDA binary tools and the
mnemonic of a SASS line (tests/test_ptxas.py, scripts/ncu_by_kind.py)."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil


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
