"""The megakernel's warp-state samples (scripts/ncu_step.sh) by task kind: each sampled SASS
instruction is placed in the source file it came from, by the line table of the same runtime
build (nvdisasm -gi, which gives each instruction's chain of inlined calls). An instruction
belongs to the innermost task file in its chain (kernels/tasks/<kind>.cuh; the helpers shared
by several kinds, such as dtype.cuh, count as their caller), else to the runtime.

    python scripts/ncu_by_kind.py step.samples.csv.gz build/rt_x/libjax_mpk_runtime.so

Prints, per kind: the bytes of SASS it has, its share of all samples, and the share of its own
samples that each of the commonest stall reasons takes (no_inst: the warp waits for its next
instruction to be fetched).
"""

from __future__ import annotations

import collections
import csv
import gzip
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from sass import located_instructions, opcode  # noqa: E402

HELPERS = {"dtype.cuh", "async_copy.cuh", "dynamic_box.cuh", "all_tasks.cuh"}


def kind_of(chain: list[str]) -> str:
    for path in chain:
        parts = os.path.normpath(path).split(os.sep)
        if "tasks" in parts and parts[-1] not in HELPERS:
            return parts[-1].removesuffix(".cuh")
    return "runtime"


def line_table(runtime_library: str) -> dict[int, tuple[str, str]]:
    """Offset of each instruction in the megakernel's sm_90a code -> (kind, SASS mnemonic)."""
    return {offset: (kind_of([file for file, _ in chain]), opcode(sass))
            for offset, chain, sass in located_instructions(runtime_library)}


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
    reasons = {c.removeprefix("stall_"): i for i, c in enumerate(header)
               if c.startswith("stall_") and "Not Issued" not in c}
    base = int(rows[0][address], 16)  # the first row is the kernel's entry
    table = line_table(runtime_library)
    total, by_reason = collections.Counter(), collections.defaultdict(collections.Counter)
    opcode_misses = 0
    for row in rows:
        kind, mnemonic = table.get(int(row[address], 16) - base, ("unmapped", ""))
        opcode_misses += mnemonic != opcode(row[source])
        total[kind] += number(row[total_col])
        for reason, i in reasons.items():
            by_reason[kind][reason] += number(row[i])
    sizes = collections.Counter(kind for kind, _ in table.values())
    everything = collections.Counter()
    for counts in by_reason.values():
        everything.update(counts)
    top = [r for r, _ in everything.most_common(7)]
    all_samples = sum(total.values())
    print(f"{all_samples:.0f} samples over {len(rows)} SASS rows; {opcode_misses} rows' SASS "
          "differs from the line table's (a wrong build if many)")
    print("columns: the kind's share of all samples, then each reason's share of the kind's own")
    print(f"{'kind':<20}{'SASS KB':>8}{'samples':>9}{'share':>7}"
          + "".join(f"{r[:10]:>11}" for r in top))
    print(f"{'(all)':<20}{len(table) * 16 / 1024:>8.0f}{all_samples:>9.0f}{1:>7.3f}"
          + "".join(f"{everything[r] / all_samples:>11.3f}" for r in top))
    for kind, count in total.most_common():
        print(f"{kind:<20}{sizes[kind] * 16 / 1024:>8.0f}{count:>9.0f}{count / all_samples:>7.3f}"
              + "".join(f"{by_reason[kind][r] / max(count, 1):>11.3f}" for r in top))


if __name__ == "__main__":
    main()
