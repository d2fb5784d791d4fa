#!/usr/bin/env bash
# One call on the GPU machine: build in place, run the GPU tests (with XLA
# command buffers on and off), compute-sanitizer, and the benchmarks.
# Results land in $OUT (or ./gpu_out): gpu.log with every step's output, the
# benchmark JSON files and the timeline files. Usage: bash scripts/gpu_check.sh [pytest -k expr]
# BASELINE_RUNTIME=path/to/libjax_mpk_runtime.so (carried) reruns bench_kinds on that build
# too, for an A/B of kernel changes in one call; KINDS_ONLY=name,... limits bench_kinds.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
trap 'cat "$LOGS"/*.log > "$OUT/gpu.log" 2>/dev/null' EXIT
PY=${PYTHON:-/opt/torch/.venv/bin/python}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
status=0
step() { echo "== $*"; }
# A prebuilt runtime linked against NVSHMEM elsewhere finds libnvshmem_host here.
nvshmem_lib=$($PY -c "import nvidia.nvshmem as n; print(list(n.__path__)[0] + '/lib')" 2>/dev/null) \
  && export LD_LIBRARY_PATH=$nvshmem_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

step build
start=$(date +%s)
touch kernels/runtime/megakernel.cu  # ninja once lost the .cuh dependencies: never build stale
# PREBUILT_RUNTIME: a libjax_mpk_runtime.so built elsewhere; only the Python module compiles.
prebuilt=${PREBUILT_RUNTIME:+-Cbuild-dir=/tmp/jax_mpk_prebuilt -Ccmake.define.JAX_MPK_PREBUILT_RUNTIME=$(realpath "$PREBUILT_RUNTIME")}
$PY -m pip install --no-build-isolation --no-deps -e . $prebuilt >"$LOGS/1_build.log" 2>&1 || { tail -50 "$LOGS/1_build.log"; exit 1; }
grep -h "jax_mpk:" build/*/CMakeCache.txt "$LOGS/1_build.log" 2>/dev/null | head -2
echo "build took $(( $(date +%s) - start )) s"
$PY -c "import jax, jax_mpk.runtime as r; print(jax.devices(), r.device_info(), r.extension().build_info())"

if [ -z "${SKIP_TESTS:-}" ]; then
step "gpu tests, command buffers on (XLA default)"
# -v: one line per test, so the counts survive a run cut off before its summary line.
timeout -s USR1 -k 20 ${TEST_TIMEOUT:-420} $PY -m pytest -m gpu -v -rs ${1:+-k "$1"} tests >"$LOGS/2_pytest_gpu.log" 2>&1 || status=1
echo "passed $(grep -c ' PASSED' "$LOGS/2_pytest_gpu.log"), failed $(grep -c ' FAILED' "$LOGS/2_pytest_gpu.log"), errors $(grep -c ' ERROR' "$LOGS/2_pytest_gpu.log"), skipped $(grep -c ' SKIPPED' "$LOGS/2_pytest_gpu.log")"
grep -E "^(FAILED|ERROR)|passed|failed|Thread 0x|File " "$LOGS/2_pytest_gpu.log" | tail -25
step "two NVSHMEM PEs on one GPU"
timeout 90 $PY scripts/nvshmem_two_pes.py >"$LOGS/3_nvshmem_two_pes.log" 2>&1; tail -2 "$LOGS/3_nvshmem_two_pes.log"
step "tensor-parallel decode over two PEs on one GPU, through jax_mpk.jit (needs the NVSHMEM build)"
timeout 200 $PY scripts/tp_decode_two_pes.py >"$LOGS/3_tp_decode_two_pes.log" 2>&1; tail -3 "$LOGS/3_tp_decode_two_pes.log"
step "gpu tests, command buffers off"
XLA_FLAGS=--xla_gpu_enable_command_buffer= $PY -m pytest -m gpu -q -rs tests/test_runtime_gpu.py \
  -k "jit or watchdog" >"$LOGS/3_pytest_gpu_no_command_buffers.log" 2>&1 || status=1
grep -E "^(FAILED|ERROR)|passed|failed" "$LOGS/3_pytest_gpu_no_command_buffers.log" | tail -5
fi

if [ -z "${SKIP_SANITIZER:-}" ]; then
  step "compute-sanitizer memcheck and racecheck: a medium random graph, a small model's decode step"
  for script in sanitize_graph sanitize_decode; do
    for tool in memcheck racecheck; do
      compute-sanitizer --tool $tool --target-processes all --error-exitcode 9 \
        $PY scripts/$script.py >"$LOGS/4_${script}_$tool.log" 2>&1
      echo "$script $tool exit $? : $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOGS/4_${script}_$tool.log" | tail -1)"
      tail -2 "$LOGS/4_${script}_$tool.log"
    done
  done
fi

[ -n "${SKIP_BENCH:-}" ] && exit $status
step benchmarks
$PY benchmarks/bench_runtime.py --json "$OUT/bench_runtime.json" 2>&1 | tee "$LOGS/5_bench_runtime.log" | tail -8
$PY scripts/timeline_demo.py "$OUT" 2>&1 | tee "$LOGS/7_timeline.log" | tail -2
rm -f "$OUT"/timeline_dynamic.* "$OUT"/timeline_static.*  # the device tool returns 8 files
$PY benchmarks/bench_copy.py --json "$OUT/bench_copy.json" 2>&1 | tee "$LOGS/6_bench_copy.log" | tail -9
step "task kinds inside the megakernel"
timeout 300 $PY benchmarks/bench_kinds.py ${KINDS_ONLY:+--only "$KINDS_ONLY"} --json "$OUT/bench_kinds.json" 2>&1 | tee "$LOGS/6_bench_kinds.log" | tail -20
if [ -n "${BASELINE_RUNTIME:-}" ]; then  # an A/B in one call: the same cases on another runtime build
  step "task kinds again, on the baseline runtime $BASELINE_RUNTIME"
  installed=$($PY -c "import os, jax_mpk._jax_mpk as m; print(os.path.join(os.path.dirname(m.__file__), 'libjax_mpk_runtime.so'))")
  cp "$installed" /tmp/jax_mpk_runtime_under_test.so && cp "$BASELINE_RUNTIME" "$installed"
  timeout 300 $PY benchmarks/bench_kinds.py ${KINDS_ONLY:+--only "$KINDS_ONLY"} --json "$OUT/bench_kinds_baseline.json" 2>&1 \
    | tee "$LOGS/6_bench_kinds_baseline.log" | tail -20
  cp /tmp/jax_mpk_runtime_under_test.so "$installed"
fi
step "decode steps beside jax.jit (DECODE_SWEEP=1: Qwen3-8B too, batch 32, context 2048)"
if [ -n "${DECODE_SWEEP:-}" ]; then sweep="--models llama-1b,qwen3-8b --batches 1,8,32 --contexts 512,2048"
else sweep="--models llama-1b --batches 1,8 --contexts 512"; fi
timeout ${DECODE_TIMEOUT:-400} $PY benchmarks/bench_decode.py $sweep --unfused-attention --json "$OUT/bench_decode.json" \
  --plot "$OUT/bench_decode.png" --timeline "$OUT" 2>&1 | tee "$LOGS/8_bench_decode.log" | tail -30
step "endurance: 10,000 decode steps (tiny model), no memory growth; peak against jax.jit (1B)"
timeout 300 $PY scripts/endurance.py --jit jax_mpk --steps 10000 2>&1 | tee "$LOGS/9_endurance.log" | tail -2
for jit in jax jax_mpk; do
  timeout 150 $PY scripts/endurance.py --jit $jit --size 1b --steps 50 2>&1 | tee -a "$LOGS/9_endurance.log" | tail -1
done
step "greedy decode loop, Llama-3.2-1B size"
timeout 150 $PY examples/decode_loop.py --family llama --size 1b --steps 16 2>&1 \
  | tee "$LOGS/9_decode_loop.log" | tail -3
exit $status
