"""The SASS lines where the megakernel's warps spent the most sampled cycles, from ncu's
source page (`ncu --import R.ncu-rep --page source --csv --print-source sass`), which for the
whole megakernel runs to tens of MB: keeps the top N rows and the stall-reason columns, and
prints each reason's share of all samples to stderr.

    python scripts/ncu_hot_lines.py source.csv [N] > hot.csv
"""

import csv
import sys


def main() -> None:
    path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    header_at = next(i for i, row in enumerate(rows)
                     if any("Warp Stall Sampling" in c for c in row))
    header, body = rows[header_at], rows[header_at + 1:]
    samples = next(i for i, c in enumerate(header) if c.startswith("Warp Stall Sampling (All"))

    def number(text: str) -> float:
        try:
            return float(text.replace(",", ""))
        except ValueError:
            return 0.0

    body.sort(key=lambda row: -number(row[samples]) if len(row) > samples else 0.0)
    total = sum(number(row[samples]) for row in body if len(row) > samples)
    keep = [i for i, c in enumerate(header)
            if i <= samples or "stall" in c.lower() or c in ("Address", "Source")]
    # Over every line, not only the kept ones: each stall reason's share of the samples.
    totals = {header[i]: sum(number(row[i]) for row in body if len(row) > i)
              for i in keep if i > samples and "stall" in header[i].lower()}
    for name, value in sorted(totals.items(), key=lambda kv: -kv[1])[:12]:
        print(f"{value / total if total else 0.0:6.3f} {name}", file=sys.stderr)
    out = csv.writer(sys.stdout)
    out.writerow(["share"] + [header[i] for i in keep])
    for row in body[:top]:
        share = number(row[samples]) / total if total else 0.0
        out.writerow([f"{share:.4f}"] + [row[i] if i < len(row) else "" for i in keep])


if __name__ == "__main__":
    main()
