#!/usr/bin/env bash
# The GPU machine's one script: installs the package, then runs the named parts, each under
# its own time limit with its log under $OUT (or ./gpu_out). The whole set outlasts one
# 10-minute device call, so a call names the parts that fit; the times are an H200's
# (session 15), the install's included once:
#
#   install    pip install -e . (prebuilt runtime: about 80 s; a full build: about 5 min)
#   runtime    tests/test_runtime_gpu.py and test_jit_arguments.py, and the former's
#              jit/watchdog tests with XLA command buffers off (about 90 s, session 15)
#   bench      bench_decode.py, Llama-1B batch 1 context 512 beside jax.jit (about 75 s)
#   sanitizer  compute-sanitizer memcheck and racecheck of sanitize_graph.py and
#              sanitize_decode.py (about 25 s)
#   endurance  10,000 tiny decode steps; the 1B step's peak memory under each jit
#   loop       examples/decode_loop.py at the Llama-3.2-1B size, both jits' tokens/s
#   matmul     test_task_kinds_gpu.py -k "matmul or float32_step" (about 250 s in one process)
#   kinds      the rest of test_task_kinds_gpu.py (reduce, elementwise, gathers, slices,
#              model steps, the decode loop: about 150 s)
#   attention  test_decode_attention.py, test_repeated_heads.py, test_rope_attention.py (about
#              270 s in one process before the last)
#   folds      test_cache_append, test_sequence, test_gating_linear, test_norm_linear
#   nvshmem    test_nvshmem_gpu.py, nvshmem_two_pes.py, tp_decode_two_pes.py (an NVSHMEM
#              runtime; about 60 s)
#   ncu        scripts/ncu_step.sh: the step's warp samples, for ncu_by_kind.py (about 140 s)
#   benchmarks bench_runtime, bench_copy, bench_kinds, the timeline demo
#   sweep      bench_decode.py's whole table (Qwen3-8B, batches 1/8/32, contexts 512/2048)
#   timeline   the task timelines of the Llama-1B and Qwen3-8B steps (batch 1, context 512)
#              under $OUT/timeline_MODEL, with their per-stage tables (about 60 + 200 s)
#
# Usage: [PREBUILT_RUNTIME=dir/libjax_mpk_runtime.so] bash scripts/gpu_check.sh PART...
# SKIP_INSTALL=1 tests what is installed (e.g. after scripts/ab_decode.sh: its last runtime).
# e.g. `bash scripts/gpu_check.sh runtime bench sanitizer endurance`. With no PART: runtime
# bench sanitizer. A test part takes a -k expression after a colon: `matmul:"ragged"`.
# BASELINE_RUNTIME=path (carried) reruns bench_kinds on that build too; KINDS_ONLY=name,...
# limits bench_kinds' cases.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-/opt/torch/.venv/bin/python}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
status=0
# A prebuilt runtime linked against NVSHMEM elsewhere finds libnvshmem_host here.
nvshmem_lib=$($PY -c "import nvidia.nvshmem as n; print(list(n.__path__)[0] + '/lib')" 2>/dev/null) \
  && export LD_LIBRARY_PATH=$nvshmem_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

step() { echo "== $* ($(date +%T))"; }

install() {
  step install
  touch kernels/runtime/megakernel.cu  # ninja once lost the .cuh dependencies: never build stale
  local prebuilt=""
  [ -n "${PREBUILT_RUNTIME:-}" ] && prebuilt="-Cbuild-dir=/tmp/jax_mpk_prebuilt -Ccmake.define.JAX_MPK_PREBUILT_RUNTIME=$(realpath "$PREBUILT_RUNTIME")"
  # shellcheck disable=SC2086
  $PY -m pip install --no-build-isolation --no-deps -e . $prebuilt > "$OUT/install.log" 2>&1 \
    || { tail -50 "$OUT/install.log"; exit 1; }
  $PY -c "import jax, jax_mpk.runtime as r; print(jax.devices(), r.device_info(), r.extension().build_info())"
}

# The test parts whose cases are independent (matmul, kinds, attention, folds) run on
# GPU_TEST_WORKERS processes through pytest-xdist (in the image): their cases are small, so most
# of their time should be tracing and compiling on the host's 16 cores (not yet measured).
# 0: one process.
parallel=()
[ "${GPU_TEST_WORKERS:-6}" -gt 0 ] && parallel=(-n "${GPU_TEST_WORKERS:-6}")

# pytest NAME LIMIT ARGS...: -m gpu, one line a test (-v), so the counts survive a cut.
pytest_part() {
  local name=$1 limit=$2
  shift 2
  timeout -s USR1 -k 20 "$limit" $PY -m pytest -m gpu -v -rs -p no:cacheprovider "$@" > "$OUT/$name.log" 2>&1 || status=1
  echo "$name: passed $(grep -c ' PASSED' "$OUT/$name.log"), failed $(grep -c ' FAILED' "$OUT/$name.log")," \
       "errors $(grep -c ' ERROR' "$OUT/$name.log"), skipped $(grep -c ' SKIPPED' "$OUT/$name.log")"
  grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)|Thread 0x" "$OUT/$name.log" | tail -8
}

run_part() {
  local part=${1%%:*} k=""
  [ "$part" != "$1" ] && k=${1#*:}
  step "$part${k:+ (-k $k)}"
  case $part in
    runtime)
      pytest_part runtime 200 tests/test_runtime_gpu.py tests/test_jit_arguments.py ${k:+-k "$k"}
      XLA_FLAGS=--xla_gpu_enable_command_buffer= pytest_part runtime_no_command_buffers 90 \
        tests/test_runtime_gpu.py -k "jit or watchdog" ;;
    matmul) pytest_part matmul 330 "${parallel[@]}" tests/test_task_kinds_gpu.py -k "${k:-matmul or float32_step}" ;;
    kinds) pytest_part kinds 300 "${parallel[@]}" tests/test_task_kinds_gpu.py -k "${k:-not matmul and not float32_step}" ;;
    attention) pytest_part attention 330 "${parallel[@]}" tests/test_decode_attention.py tests/test_repeated_heads.py \
      tests/test_rope_attention.py \
      ${k:+-k "$k"} ;;
    folds)
      pytest_part folds 200 "${parallel[@]}" tests/test_cache_append.py tests/test_sequence.py \
        tests/test_gating_linear.py tests/test_norm_linear.py ${k:+-k "$k"} ;;
    nvshmem)
      pytest_part nvshmem 120 tests/test_nvshmem_gpu.py
      timeout 90 $PY scripts/nvshmem_two_pes.py > "$OUT/nvshmem_two_pes.log" 2>&1; tail -2 "$OUT/nvshmem_two_pes.log"
      timeout 200 $PY scripts/tp_decode_two_pes.py > "$OUT/tp_decode_two_pes.log" 2>&1
      grep -E "match|PASS|FAIL|rror" "$OUT/tp_decode_two_pes.log" | grep -v -i grpc | tail -4 ;;
    sanitizer)
      for script in sanitize_graph sanitize_decode "sanitize_decode qwen3"; do
        for tool in memcheck racecheck; do
          read -r name arg <<< "$script"
          log="$OUT/${script// /_}_$tool.log"
          # shellcheck disable=SC2086
          timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 $PY scripts/$name.py $arg \
            > "$log" 2>&1 || status=1
          echo "$script $tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)"
        done
      done ;;
    bench)
      timeout 200 $PY benchmarks/bench_decode.py --models llama-1b --batches 1 --contexts 512 --repeats 30 \
        --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1 || status=1
      grep -E "copy rate|llama|back to back|kernel|rror" "$OUT/bench_decode.log" | head -8 ;;
    sweep)
      timeout 560 $PY benchmarks/bench_decode.py --models llama-1b,qwen3-8b --batches 1,8,32 --contexts 512,2048 \
        --json "$OUT/bench_decode_sweep.json" --plot "$OUT/bench_decode.png" > "$OUT/bench_decode_sweep.log" 2>&1 || status=1
      tail -30 "$OUT/bench_decode_sweep.log" ;;
    timeline)
      for model in llama-1b qwen3-8b; do
        timeout 260 $PY benchmarks/bench_decode.py --models $model --batches 1 --contexts 512 \
          --timeline "$OUT/timeline_$model" --timeline-only > "$OUT/timeline_$model.log" 2>&1 || status=1
        grep -E "timeline of|rror" "$OUT/timeline_$model.log"
      done ;;
    endurance)
      timeout 300 $PY scripts/endurance.py --jit jax_mpk --steps 10000 > "$OUT/endurance.log" 2>&1 || status=1
      for jit in jax jax_mpk; do  # one jit a process: a process's peak cannot be reset
        timeout 150 $PY scripts/endurance.py --jit $jit --size 1b --steps 50 >> "$OUT/endurance.log" 2>&1 || status=1
      done
      grep -E "steps in|rror" "$OUT/endurance.log" ;;
    loop)
      timeout 200 $PY examples/decode_loop.py --family llama --size 1b --steps 16 > "$OUT/decode_loop.log" 2>&1 \
        || status=1
      tail -3 "$OUT/decode_loop.log" ;;
    ncu) timeout 400 bash scripts/ncu_step.sh "$OUT/step" || status=1; rm -f "$OUT/step.ncu-rep" ;;
    benchmarks)
      $PY benchmarks/bench_runtime.py --json "$OUT/bench_runtime.json" > "$OUT/bench_runtime.log" 2>&1 || status=1
      tail -8 "$OUT/bench_runtime.log"
      $PY scripts/timeline_demo.py "$OUT" > "$OUT/timeline.log" 2>&1 || status=1
      tail -2 "$OUT/timeline.log"
      rm -f "$OUT"/timeline_dynamic.* "$OUT"/timeline_static.*  # a call returns 8 files
      $PY benchmarks/bench_copy.py --json "$OUT/bench_copy.json" > "$OUT/bench_copy.log" 2>&1 || status=1
      tail -9 "$OUT/bench_copy.log"
      timeout 300 $PY benchmarks/bench_kinds.py ${KINDS_ONLY:+--only "$KINDS_ONLY"} --json "$OUT/bench_kinds.json" \
        > "$OUT/bench_kinds.log" 2>&1 || status=1
      tail -20 "$OUT/bench_kinds.log"
      if [ -n "${BASELINE_RUNTIME:-}" ]; then  # an A/B in one call: the same cases on another build
        local installed
        installed=$($PY -c "import os, jax_mpk._jax_mpk as m; print(os.path.join(os.path.dirname(m.__file__), 'libjax_mpk_runtime.so'))")
        cp "$installed" /tmp/jax_mpk_runtime_under_test.so && cp "$BASELINE_RUNTIME" "$installed"
        timeout 300 $PY benchmarks/bench_kinds.py ${KINDS_ONLY:+--only "$KINDS_ONLY"} \
          --json "$OUT/bench_kinds_baseline.json" > "$OUT/bench_kinds_baseline.log" 2>&1
        tail -20 "$OUT/bench_kinds_baseline.log"
        cp /tmp/jax_mpk_runtime_under_test.so "$installed"
      fi ;;
    install) ;;  # the install alone, e.g. before swapping runtimes by hand
    *) echo "unknown part $part"; status=1 ;;
  esac
}

[ -n "${SKIP_INSTALL:-}" ] || install
[ $# -eq 0 ] && set -- runtime bench sanitizer
for part in "$@"; do run_part "$part"; done
exit $status
