"""Instructions per source line of two runtime builds' megakernels (the same line numbers: a
kernel change that does not move lines, or a build of each side). Each instruction counts for
the innermost line of FILE in its chain of inlined calls. Lines whose code shrank to a fraction
are what to read first when a build is suddenly faster: in session 16, x15_arena's LM head
lost its stores this way (store_column 4,918 -> 6 instructions) and its logits were NaN.

    python scripts/sass_by_line.py BASE.so NEW.so [--file matmul.cuh] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from sass import located_instructions  # noqa: E402


def per_line(runtime_library: str, file: str) -> collections.Counter:
    counts = collections.Counter()
    for _, chain, _ in located_instructions(runtime_library):
        line = next((at for path, at in chain if os.path.basename(path) == file), None)
        if line is not None:
            counts[line] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("new")
    parser.add_argument("--file", default="matmul.cuh", help="a source file's name")
    parser.add_argument("--ratio", type=float, default=0.5,
                        help="print lines whose count left this fraction or less (or gained 1/it)")
    args = parser.parse_args()
    base, new = per_line(args.base, args.file), per_line(args.new, args.file)
    print(f"{args.file}: {sum(base.values())} -> {sum(new.values())} instructions")
    for line in sorted(base.keys() | new.keys()):
        b, n = base[line], new[line]
        if n <= b * args.ratio or b <= n * args.ratio:
            print(f"  line {line}: {b} -> {n}")


if __name__ == "__main__":
    main()
