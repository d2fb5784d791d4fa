// Copies dims[0..1] bytes from operand 1 to operand 0, 16 bytes per load
// where both ends are aligned.
#pragma once

#include "../runtime/task_context.cuh"

namespace mpk {

struct CopyTask {
  static constexpr TaskKind kKind = kTaskCopy;
  static constexpr const char* kName = "copy";

  static const char* check(const TaskDesc& d, const Operand* ops) {
    if (d.num_operands != 2) return "copy takes two operands: dst, src";
    uint64_t n = uint64_t(uint32_t(d.dims[0])) | (uint64_t(uint32_t(d.dims[1])) << 32);
    if (ops[0].bytes < n || ops[1].bytes < n) return "copy moves more bytes than its operands hold";
    return nullptr;
  }

  __device__ static void run(const TaskContext& ctx) {
    copy_block(ctx.operand<uint8_t>(0), ctx.operand<const uint8_t>(1), dims_u64(ctx.desc, 0), ctx.thread);
  }

  // n bytes from src to dst with every thread of the block; dst may be a peer's memory.
  __device__ static void copy_block(uint8_t* dst, const uint8_t* src, uint64_t n, int thread) {
    const bool aligned = ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & 15) == 0;
    uint64_t done = 0;
    if (aligned) {
      const uint64_t vectors = n / 16;
      auto* d16 = reinterpret_cast<uint4*>(dst);
      auto* s16 = reinterpret_cast<const uint4*>(src);
      // kUnroll independent loads in flight per thread before the first store.
      constexpr int kUnroll = 8;
      uint64_t i = thread;
      for (; i + (kUnroll - 1) * kWorkerThreads < vectors; i += kUnroll * kWorkerThreads) {
        uint4 v[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) v[u] = s16[i + u * kWorkerThreads];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) d16[i + u * kWorkerThreads] = v[u];
      }
      for (; i < vectors; i += kWorkerThreads) d16[i] = s16[i];
      done = vectors * 16;
    }
    for (uint64_t i = done + thread; i < n; i += kWorkerThreads) dst[i] = src[i];
  }
};

}  // namespace mpk
