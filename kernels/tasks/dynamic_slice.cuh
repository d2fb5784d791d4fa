// DYNAMIC_SLICE: out = src[start_d : start_d + out_shape_d], starts clamped into range.
// operands: out, src, start_0 .. start_{rank-1}; dims: rank, src_shape[4], out_shape[4],
// wrap_mask, itemsize (see dynamic_box.cuh).
#pragma once

#include "dynamic_box.cuh"

namespace mpk {

struct DynamicSliceTask {
  static constexpr TaskKind kKind = kTaskDynamicSlice;
  static constexpr const char* kName = "dynamic_slice";

  static const char* check(const TaskDesc& d, const Operand* ops) { return DynamicBox::check(d, ops, 1); }

  __device__ static void run(const TaskContext& ctx) {
    DynamicBox::copy(ctx, ctx.operand<char>(0), ctx.operand<const char>(1), false);
  }
};

}  // namespace mpk
