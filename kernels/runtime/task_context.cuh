// What a task's device `run` receives: its descriptor, its operands' addresses
// for this iteration, its thread index within the worker block, and a way to
// report a failure. Tasks never read blockIdx: the block is the worker.
#pragma once

#include "launch_params.h"
#include "sync.cuh"

namespace mpk {

constexpr int kWorkerThreads = 256;
// Dynamic shared memory every task may use as it likes (ctx.shared): tasks run one at a
// time on a worker, so they share one arena instead of each declaring its own arrays.
constexpr int kTaskSharedBytes = 112 * 1024;

struct TaskContext {
  const LaunchParams& params;
  const TaskDesc& desc;
  uint32_t task;
  uint32_t iteration;
  int thread;  // 0 .. kWorkerThreads-1
  char* shared;  // kTaskSharedBytes, 16-byte aligned; contents undefined at task start
  // The task's `prefetch` ran before its wait (static schedule, kTaskPrefetch): its copies
  // into `shared` are in flight.
  bool prefetched = false;

  template <typename T>
  __device__ __forceinline__ T* operand(int i) const {
    const Operand& o = params.operands[desc.first_operand + i];
    return reinterpret_cast<T*>(params.slots[o.slot] + o.offset +
                                uint64_t(iteration) * o.iteration_stride);
  }

  __device__ __forceinline__ uint64_t operand_bytes(int i) const {
    return params.operands[desc.first_operand + i].bytes;
  }

  __device__ __forceinline__ ErrorRecord* error() const {
    return reinterpret_cast<ErrorRecord*>(params.workspace + params.control.error);
  }
};

__device__ __forceinline__ uint64_t dims_u64(const TaskDesc& d, int i) {
  return uint64_t(uint32_t(d.dims[i])) | (uint64_t(uint32_t(d.dims[i + 1])) << 32);
}

}  // namespace mpk
