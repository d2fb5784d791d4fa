// A reduction fed by many producers, exact so tests can compare bit for bit:
// dst[j] = (sum_k src_k[j]) * mul + add, in wrapping uint32 arithmetic.
// dims: n, mul, add. operands: dst, src_0 .. src_{k-1}.
#pragma once

#include "../runtime/task_context.cuh"

namespace mpk {

struct CombineU32Task {
  static constexpr TaskKind kKind = kTaskCombineU32;
  static constexpr const char* kName = "combine_u32";

  static const char* check(const TaskDesc& d, const Operand* ops) {
    if (d.num_operands < 1) return "combine_u32 needs a destination operand";
    if (d.dims[0] < 0) return "combine_u32 needs n >= 0";
    for (int i = 0; i < d.num_operands; ++i)
      if (ops[i].bytes < 4ull * uint32_t(d.dims[0])) return "combine_u32 operand shorter than n words";
    return nullptr;
  }

  __device__ static void run(const TaskContext& ctx) {
    const int n = ctx.desc.dims[0];
    const uint32_t mul = uint32_t(ctx.desc.dims[1]);
    const uint32_t add = uint32_t(ctx.desc.dims[2]);
    const int sources = ctx.desc.num_operands - 1;
    uint32_t* dst = ctx.operand<uint32_t>(0);
    for (int j = ctx.thread; j < n; j += kWorkerThreads) {
      uint32_t sum = 0;
      for (int k = 0; k < sources; ++k) sum += ctx.operand<const uint32_t>(k + 1)[j];
      dst[j] = sum * mul + add;
    }
  }
};

}  // namespace mpk
