// A reduction fed by many producers, exact so tests can compare bit for bit:
// dst[j] = (sum_k src_k[j]) * mul + add, in wrapping uint32 arithmetic.
// dims: n, mul, add. operands: dst, src_0 .. src_{k-1}; dst may alias one of
// the first eight sources.
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
    if (sources == 0) {
      for (int j = ctx.thread; j < n; j += kWorkerThreads) dst[j] = add;
      return;
    }
    // Sources in groups of kGroup resolved once; dst holds the partial sum
    // between groups, so dst may alias a source only in the first group.
    constexpr int kGroup = 8;
    for (int k0 = 0; k0 < sources; k0 += kGroup) {
      const uint32_t* src[kGroup];
#pragma unroll
      for (int u = 0; u < kGroup; ++u) src[u] = k0 + u < sources ? ctx.operand<const uint32_t>(k0 + u + 1) : nullptr;
      const bool last = k0 + kGroup >= sources;
      for (int j = ctx.thread; j < n; j += kWorkerThreads) {
        uint32_t sum = k0 == 0 ? 0u : dst[j];
#pragma unroll
        for (int u = 0; u < kGroup; ++u)
          if (src[u]) sum += src[u][j];
        dst[j] = last ? sum * mul + add : sum;
      }
    }
  }
};

}  // namespace mpk
