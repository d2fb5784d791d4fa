"""The megakernel's warp-state samples (scripts/ncu_step.sh) by task kind: each sampled SASS
instruction is placed in the source file it came from, by the line table of the same runtime
build (nvdisasm -gi, which gives each instruction's chain of inlined calls). An instruction
belongs to the innermost task file in its chain (kernels/tasks/<kind>.cuh; the helpers shared
by several kinds, such as dtype.cuh, count as their caller), else to the runtime.

    python scripts/ncu_by_kind.py step.samples.csv.gz build/rt_x/libjax_mpk_runtime.so

Prints, per kind: its share of all samples, its share of the "no instruction" samples (warps
waiting for their next instruction to be fetched), that reason's share of its own samples,
and the bytes of SASS it ran.
"""

from __future__ import annotations

import collections
import csv
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile

HELPERS = {"dtype.cuh", "async_copy.cuh", "dynamic_box.cuh", "all_tasks.cuh"}
LOCATION = re.compile(r'//## File "([^"]+)", line \d+(?: inlined at "([^"]+)", line \d+)?')
INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def tool(name: str) -> str:
    """A CUDA binary utility: on PATH, else beside the pip-installed nvidia-cuda toolchain."""
    found = shutil.which(name)
    if found:
        return found
    import nvidia  # the cu13 wheels install cuobjdump and nvdisasm under nvidia/cu13/bin

    for root in nvidia.__path__:
        candidate = os.path.join(root, "cu13", "bin", name)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"{name} is neither on PATH nor in the nvidia-cu13 wheels")


def kind_of(chain: list[str]) -> str:
    for path in chain:
        parts = os.path.normpath(path).split(os.sep)
        if "tasks" in parts and parts[-1] not in HELPERS:
            return parts[-1].removesuffix(".cuh")
    return "runtime"


def line_table(runtime_library: str) -> dict[int, tuple[str, str]]:
    """Offset of each instruction in the megakernel's sm_90a code -> (kind, SASS text)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([tool("cuobjdump"), "-xelf", "all", os.path.abspath(runtime_library)],
                       cwd=tmp, check=True, capture_output=True)
        cubin = next(os.path.join(tmp, f) for f in os.listdir(tmp)
                     if f.startswith("megakernel") and "sm_90" in f)
        text = subprocess.run([tool("nvdisasm"), "-gi", "-c", cubin], check=True,
                              capture_output=True, text=True).stdout
    table, chain, fresh = {}, [], False
    for line in text.splitlines():
        if match := LOCATION.search(line):
            if not fresh:  # a new block of locations: the next instruction's chain
                chain, fresh = [], True
            chain.extend(p for p in match.groups() if p)
        elif match := INSTRUCTION.search(line):
            table[int(match.group(1), 16)] = (kind_of(chain), opcode(match.group(2)))
            fresh = False
    return table


def opcode(sass: str) -> str:
    """The instruction's mnemonic, past a predicate such as @!P0."""
    words = sass.split()
    return words[1] if words and words[0].startswith("@") and len(words) > 1 else (words or [""])[0]


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def main() -> None:
    samples_path, runtime_library = sys.argv[1], sys.argv[2]
    with gzip.open(samples_path, "rt", newline="") as f:
        header, *rows = list(csv.reader(f))
    address = header.index("Address")
    source = header.index("Source")
    total_col = next(i for i, c in enumerate(header) if c.startswith("Warp Stall Sampling (All"))
    fetch_cols = [i for i, c in enumerate(header)
                  if "no_instruction" in c.lower().replace(" ", "_")
                  and "not_issued" not in c.lower().replace(" ", "_")]
    base = int(rows[0][address], 16)  # the first row is the kernel's entry
    table = line_table(runtime_library)
    total, fetch, opcode_misses = collections.Counter(), collections.Counter(), 0
    for row in rows:
        offset = int(row[address], 16) - base
        kind, mnemonic = table.get(offset, ("unmapped", ""))
        opcode_misses += mnemonic != opcode(row[source])
        total[kind] += number(row[total_col])
        fetch[kind] += sum(number(row[i]) for i in fetch_cols)
    sizes = collections.Counter(kind for kind, _ in table.values())
    all_samples, all_fetch = sum(total.values()), sum(fetch.values())
    print(f"{all_samples:.0f} samples, {all_fetch:.0f} waiting for an instruction "
          f"(columns: {[header[i] for i in fetch_cols]}); "
          f"{opcode_misses} of {len(rows)} rows' SASS differs from the line table's")
    print(f"{'kind':<22}{'samples':>9}{'share':>8}{'of fetch':>10}{'fetch/own':>11}{'SASS KB':>9}")
    for kind, count in total.most_common():
        print(f"{kind:<22}{count:>9.0f}{count / all_samples:>8.3f}"
              f"{fetch[kind] / max(all_fetch, 1):>10.3f}{fetch[kind] / max(count, 1):>11.3f}"
              f"{sizes[kind] * 16 / 1024:>9.0f}")


if __name__ == "__main__":
    main()
