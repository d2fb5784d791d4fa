"""The highest register each function of the megakernel touches, and its local-memory
instructions (STL/LDL: spills and stack arrays), from a built runtime, in seconds (test_ptxas
compiles for minutes): equal counts in the workers against main's build mean no new spills.
ptxas allocates registers across the megakernel's internal calls, so an out-of-line task
path that needs more registers makes its callers, the workers, spill what they hold across
the call (session 20: by_columns_mma at 249 where main had 217 cost the workers 104 spilled
bytes each and the batch-1 step about 20 µs).

    python scripts/function_registers.py build/DIR/libjax_mpk_runtime.so [more .so] [--match mma]
    python scripts/function_registers.py OLD.so NEW.so --lines run_static_worker

A function listed for some of the builds only was inlined in the others: nvcc's choice moves
with the size of the code around it (session 25: the float32 or float16 matmul dispatch out
of line, and the workers' local-memory instructions 568 -> 750-920).

--lines NAME counts the local-memory instructions of the functions whose name holds NAME by
their innermost source line, side by side for each build (lines that moved between two builds
show as two rows): session 24 found main's static worker's 568 nearly all in stack arrays (the
elementwise interpreter's registers, dynamic_box's starts, the sequence's), not in the
matmul's paths.

Needs cuobjdump (the nvidia-cuda-cuobjdump wheel brings it: `pip install
nvidia-cuda-cuobjdump`) and readelf.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from sass import INSTRUCTION, cuda_tool, located_instructions, opcode  # noqa: E402


def function_ranges(cubin: Path) -> list[tuple[int, int, str]]:
    """(start, size, name) of each function inside the megakernel's code section."""
    symbols = subprocess.run(["readelf", "-sW", str(cubin)], capture_output=True, text=True,
                             check=True).stdout
    ranges = []
    for line in symbols.splitlines():
        parts = line.split()
        if len(parts) >= 8 and parts[3] == "FUNC" and "megakernel" in parts[7]:
            ranges.append((int(parts[1], 16), int(parts[2], 0), parts[7].split("$")[-1]))
    return sorted(ranges)


def runtime_ranges(so: str) -> list[tuple[int, int, str]]:
    """function_ranges of the megakernel's sm_90a cubin inside a built runtime library."""
    tool = cuda_tool("cuobjdump")
    assert tool, "cuobjdump is neither on PATH nor in an nvidia-cuda-cuobjdump wheel"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([tool, "-xelf", "all", os.path.abspath(so)], cwd=tmp, check=True,
                       capture_output=True)
        return function_ranges(next(Path(tmp).glob("megakernel*.sm_90a.cubin")))


def highest_registers(so: str) -> dict[str, tuple[int, int, int]]:
    """name -> (highest register index used, STL + LDL instructions, code bytes) for every
    function of the kernel."""
    ranges = runtime_ranges(so)
    sass = subprocess.run([cuda_tool("cuobjdump"), "-sass", so], capture_output=True, text=True,
                          check=True).stdout
    start = sass.index("Function : _ZN3mpk10megakernel")
    end = sass.find("Function :", start + 1)
    highest: dict[str, int] = {}
    local: dict[str, int] = {}
    for m in INSTRUCTION.finditer(sass[start:end if end > 0 else None]):
        registers = [int(r) for r in re.findall(r"\bR(\d+)\b", m.group(2))]
        if not registers:
            continue
        address = int(m.group(1), 16)
        for first, size, name in ranges:
            if first <= address < first + size:
                highest[name] = max(highest.get(name, 0), max(registers))
                local[name] = local.get(name, 0) + bool(re.search(r"\b(STL|LDL)\b", m.group(2)))
                break
    return {name: (highest.get(name, -1), local.get(name, 0), size) for _, size, name in ranges}


def local_memory_lines(so: str, match: str) -> collections.Counter:
    """(opcode, 'file:line') -> count of the STL/LDL instructions of the functions whose name
    holds `match`, by the innermost line of their chain of inlined calls."""
    ranges = [r for r in runtime_ranges(so) if match in r[2]]
    counts = collections.Counter()
    for address, chain, sass in located_instructions(so):
        op = opcode(sass).split(".")[0]
        inside = any(first <= address < first + size for first, size, _ in ranges)
        if op in ("STL", "LDL") and inside:
            counts[op, f"{os.path.basename(chain[0][0])}:{chain[0][1]}" if chain else "?"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runtimes", nargs="+")
    parser.add_argument("--match", default="", help="only functions whose mangled name holds this")
    parser.add_argument("--lines", metavar="NAME",
                        help="local-memory instructions by source line in functions holding NAME")
    args = parser.parse_args()
    if args.lines:
        counts = [local_memory_lines(so, args.lines) for so in args.runtimes]
        names = [os.path.basename(os.path.dirname(so)) or so for so in args.runtimes]
        print("  ".join(f"{name:>8}" for name in names), " op  line")
        for key in sorted(set().union(*counts), key=lambda k: -max(c[k] for c in counts)):
            print("  ".join(f"{c[key]:8d}" for c in counts), f" {key[0]}  {key[1]}")
        return
    tables = [highest_registers(so) for so in args.runtimes]
    for so, table in zip(args.runtimes, tables, strict=True):
        print(f"== {so}: highest register, local-memory instructions, code bytes, function")
        for name, (register, local, size) in sorted(table.items()):
            if args.match in name:
                print(f"{register:5d} {local:6d} {size:9d}  {name[:100]}")
    for name in sorted(set().union(*tables)):
        builds = [so for so, table in zip(args.runtimes, tables, strict=True) if name in table]
        if args.match in name and len(builds) < len(tables):
            print(f"a function of its own only in {', '.join(builds)}: {name[:100]}")


if __name__ == "__main__":
    main()
