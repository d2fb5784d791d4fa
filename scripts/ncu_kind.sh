#!/usr/bin/env bash
# On the GPU machine: where the megakernel's warps stall while running one bench_kinds case
# (one launch, after bench_kinds' first two): ncu's warp-state summary and the hottest SASS
# lines with their stall reasons. Answers "what is a small task's floor made of".
# Usage: bash scripts/ncu_kind.sh "CASE NAME" OUT_PREFIX
set -uo pipefail
case_name=$1
prefix=$2
PY=${PYTHON:-/opt/torch/.venv/bin/python}
ncu --kernel-name regex:megakernel --launch-skip 2 --launch-count 1 \
  --section WarpStateStats --section SourceCounters --import-source no -f -o "$prefix" \
  $PY benchmarks/bench_kinds.py --only "$case_name" > "$prefix.run.log" 2>&1 || { tail -20 "$prefix.run.log"; exit 1; }
ncu --import "$prefix.ncu-rep" --page details --section WarpStateStats > "$prefix.stalls.txt" 2>&1
ncu --import "$prefix.ncu-rep" --page source --csv --print-source sass > "$prefix.source.csv" 2>&1
$PY scripts/ncu_hot_lines.py "$prefix.source.csv" 80 > "$prefix.hot.csv" 2> "$prefix.reasons.txt"
rm -f "$prefix.source.csv" "$prefix.ncu-rep"
grep -E "Warp Cycles|Issued" "$prefix.stalls.txt" | head -8; cat "$prefix.reasons.txt"
