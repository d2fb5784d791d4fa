#!/usr/bin/env bash
# Builds libjax_mpk_runtime.so (the CUDA runtime, no Python in it) of a git revision into
# OUT_DIR/libjax_mpk_runtime.so, in a worktree of its own: several revisions build side by
# side (each is one nvcc of megakernel.cu, about 7 minutes on this 2-core machine), for an
# A/B of kernel changes in one GPU call (scripts/ab_decode.sh). With --tree it also puts the
# revision's source in OUT_DIR/tree (under 1 MB), for revisions whose Python side differs
# (another program format): ab_decode.sh then installs and runs that tree with its runtime.
# Usage: bash scripts/build_runtime_at.sh REV OUT_DIR [--tree]
set -euo pipefail
rev=$1
out=$(realpath -m "$2")
repo=$(git rev-parse --show-toplevel)
tree=$(mktemp -d /tmp/jax_mpk_rev.XXXXXX)
git -C "$repo" worktree add -q --detach "$tree" "$rev"
trap 'git -C "$repo" worktree remove --force "$tree"' EXIT
python=$(command -v python3)
nanobind_dir=$("$python" -c "import nanobind; print(nanobind.cmake_dir())")
cmake -S "$tree" -B "$tree/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$python" -Dnanobind_DIR="$nanobind_dir" > "$tree/configure.log"
cmake --build "$tree/build" --target jax_mpk_runtime > "$tree/build.log" || { tail -30 "$tree/build.log"; exit 1; }
mkdir -p "$out"
cp "$tree/build/libjax_mpk_runtime.so" "$out/libjax_mpk_runtime.so"
if [ "${3:-}" = --tree ]; then
  rm -rf "$out/tree" && mkdir -p "$out/tree"
  git -C "$repo" archive "$rev" | tar -x -C "$out/tree"
fi
echo "$(git -C "$repo" rev-parse --short "$rev") -> $out/libjax_mpk_runtime.so"
