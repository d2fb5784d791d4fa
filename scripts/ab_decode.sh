#!/usr/bin/env bash
# On the GPU machine: the Llama-1B decode step (bench_decode.py) on several prebuilt runtimes
# in one call. Installs the package against the first, then swaps the installed
# libjax_mpk_runtime.so for each in turn (the Python module is the same for all).
# Each DIR holds a libjax_mpk_runtime.so (scripts/build_runtime_at.sh); carry them. A DIR
# that also holds tree/ (build_runtime_at.sh --tree: another revision's source, e.g. an older
# program format) is installed from that tree against its runtime and benchmarked there; the
# next plain DIR reinstalls this checkout.
# DIR:VARIANTS also times bench_decode's --variants VARIANTS on that runtime, in the same process
# (DeviceSpec overrides, ';' between variants: "matmul_prefetch_loads=8;prefetch=0").
# Usage: bash scripts/ab_decode.sh DIR[:VARIANTS]... (BENCH_ARGS overrides the bench_decode
# arguments; SKIP_INSTALL=1 keeps what gpu_check.sh installed from this checkout)
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-/opt/torch/.venv/bin/python}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
here=$PWD
# The installed package's runtime library, as seen from tree $1 (the one every DIR replaces).
installed_library() {
  (cd "$1" && $PY -c "import os, jax_mpk._jax_mpk as m; print(os.path.join(os.path.dirname(m.__file__), 'libjax_mpk_runtime.so'))")
}
# Installs the package at $1 (a source tree) against the runtime library $2.
install() {
  local lib
  lib=$(realpath "$2")
  (cd "$1" && $PY -m pip install --no-build-isolation --no-deps -e . -Cbuild-dir=/tmp/jax_mpk_prebuilt_$3 \
    -Ccmake.define.JAX_MPK_PREBUILT_RUNTIME="$lib") >> "$OUT/install.log" 2>&1 \
    || { tail -20 "$OUT/install.log"; exit 1; }
  installed=$(installed_library "$1")
}
installed_tree=""
if [ -n "${SKIP_INSTALL:-}" ]; then  # this checkout is installed already (gpu_check.sh install)
  installed_tree=$here
  installed=$(installed_library "$here")
fi
# Name a DIR twice (A B A B) to see the spread between processes: kernel medians of one
# runtime agreed within 15 µs in session 10, while jax.jit's wall time moved 0.3 ms.
args=${BENCH_ARGS:---models llama-1b --batches 1 --contexts 512 --repeats 30}
run=0
for spec in "$@"; do
  dir=${spec%%:*}
  variants=() limit=200  # batches 1 and 8 of the 1B step: about 130 s
  if [ "$dir" != "$spec" ]; then
    variants=(--variants "${spec#*:}")
    limit=$((limit + 40 * ($(tr -cd ';' <<< "${spec#*:}" | wc -c) + 1)))
  fi
  name=$((++run))_$(basename "$dir")
  tree=$here
  [ -d "$dir/tree" ] && tree=$(realpath "$dir/tree")
  started=$SECONDS
  if [ "$tree" != "$installed_tree" ]; then
    install "$tree" "$dir/libjax_mpk_runtime.so" "$run"
    installed_tree=$tree
    echo "(installed $tree in $((SECONDS - started)) s)"
  fi
  cp "$dir/libjax_mpk_runtime.so" "$installed"
  benched=$SECONDS
  # shellcheck disable=SC2086
  (cd "$tree" && timeout $limit $PY benchmarks/bench_decode.py $args "${variants[@]}") \
    > "$OUT/decode_$name.log" 2>&1
  echo "== $name ($((SECONDS - benched)) s)"
  grep -E "llama|qwen|tiny|back to back|kernel|variant|rror" "$OUT/decode_$name.log" | head -12
done
