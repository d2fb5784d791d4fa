// DYNAMIC_UPDATE_SLICE: dst[start : start + update_shape] = update, in place (a KV-cache
// append). operands: dst, update, start_0 .. start_{rank-1}; dims: rank, dst_shape[4],
// update_shape[4], wrap_mask, itemsize (see dynamic_box.cuh).
#pragma once

#include "dynamic_box.cuh"

namespace mpk {

struct DynamicUpdateSliceTask {
  static constexpr TaskKind kKind = kTaskDynamicUpdateSlice;
  static constexpr const char* kName = "dynamic_update_slice";

  static const char* check(const TaskDesc& d, const Operand* ops) { return DynamicBox::check(d, ops, 0); }

  __device__ static void run(const TaskContext& ctx) {
    DynamicBox::copy(ctx, ctx.operand<char>(0), ctx.operand<const char>(1), true);
  }
};

}  // namespace mpk
