#!/usr/bin/env bash
# On the GPU machine: warp-state samples of one whole Llama-1B decode step (scripts/ncu_step.py,
# its second launch), kept per SASS instruction that has any (address, SASS, stall-reason
# columns; and the first row, the kernel's entry) in OUT_PREFIX.samples.csv.gz.
# scripts/ncu_by_kind.py then attributes them to task kinds with the line table of the same
# runtime build. SourceCounters: the sampling pass gives each stall reason its own column.
# Usage: bash scripts/ncu_step.sh OUT_PREFIX
set -uo pipefail
prefix=$1
PY=${PYTHON:-/opt/torch/.venv/bin/python}
ncu --kernel-name regex:megakernel --launch-skip 1 --launch-count 1 \
  --section SourceCounters \
  -f -o "$prefix" $PY scripts/ncu_step.py > "$prefix.run.log" 2>&1 || { tail -20 "$prefix.run.log"; exit 1; }
ncu --import "$prefix.ncu-rep" --page source --csv --print-source sass > "$prefix.source.csv" 2>&1
head -c 3000 "$prefix.source.csv" | head -4; echo
$PY - "$prefix" <<'PYEOF'
import csv, gzip, sys
prefix = sys.argv[1]
with open(f"{prefix}.source.csv", newline="") as f:
    rows = [r for r in csv.reader(f) if r]
at = next(i for i, r in enumerate(rows) if "Address" in r)
header = rows[at]
samples = next(i for i, c in enumerate(header)
               if c.startswith("Warp Stall Sampling (All") or c == "group:smsp__pcsamp_warp_stall_reasons")
def number(t):
    try:
        return float(t.replace(",", ""))
    except ValueError:
        return 0.0
# The first row too, sampled or not: the kernel's entry, whose address is offset 0.
kept = [r for i, r in enumerate(rows[at + 1:])
        if i == 0 or (len(r) > samples and number(r[samples]) > 0)]
with gzip.open(f"{prefix}.samples.csv.gz", "wt", newline="") as f:
    out = csv.writer(f)
    out.writerow(header)
    out.writerows(kept)
print(f"{len(rows) - at - 1} SASS rows, {len(kept)} with samples, "
      f"{sum(number(r[samples]) for r in kept):.0f} samples")
PYEOF
rm -f "$prefix.source.csv"
