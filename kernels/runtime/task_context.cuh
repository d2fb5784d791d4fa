// What a task's device `run` receives: its descriptor, its operands' addresses
// for this iteration, its thread index within the worker block, and a way to
// report a failure. Tasks never read blockIdx: the block is the worker.
#pragma once

#include <type_traits>

#include "launch_params.h"
#include "sync.cuh"

namespace mpk {

constexpr int kWorkerThreads = 256;
// Dynamic shared memory every task may use as it likes (ctx.shared): tasks run one at a
// time on a worker, so they share one arena instead of each declaring its own arrays.
constexpr int kTaskSharedBytes = 144 * 1024;

// A task's first operands are resolved into shared memory by its worker (before the task's
// wait, under the static schedule): an address from the program takes two dependent global
// loads (operand record, then slot), and an acquiring wait leaves L1 empty.
constexpr int kResolvedOperands = 8;

__device__ __forceinline__ uint64_t operand_address(const LaunchParams& params, const TaskDesc& desc, int i,
                                                    uint32_t iteration) {
  const Operand& o = params.operands[desc.first_operand + i];
  return uint64_t(params.slots[o.slot]) + o.offset + uint64_t(iteration) * o.iteration_stride;
}

// Kinds that define kDescWords read a constant int32 descriptor of that many words at
// operand 1; the worker stages it too (at most kStagedDescWords), as no task writes it.
constexpr int kStagedDescWords = 40;

template <typename T, typename = void>
struct DescWords : std::integral_constant<int, 0> {};
template <typename T>
struct DescWords<T, std::void_t<decltype(T::kDescWords)>> : std::integral_constant<int, T::kDescWords> {
  static_assert(T::kDescWords <= kStagedDescWords, "raise kStagedDescWords");
};

// A descriptor beside the addresses of its task's first operands in this iteration and its
// constant descriptor words, in shared memory: TaskContext finds them next to its `desc`, at
// no register's cost.
struct ResolvedTask {
  TaskDesc desc;
  uint64_t operands[kResolvedOperands];
  int32_t desc_words[kStagedDescWords];
};

template <typename... Tasks>
struct TaskList {};

template <typename... Tasks>
__device__ __forceinline__ int desc_words(TaskList<Tasks...>, uint32_t kind) {
  int words = 0;
  ((kind == Tasks::kKind ? (words = DescWords<Tasks>::value) : 0), ...);
  return words;
}

// Fills in tasks[0, n), whose descriptors are in place: the addresses of their first operands,
// and the constant descriptors of those whose kind (among `kinds`) has one. Every thread
// calls it; a barrier follows before the tasks run.
template <typename... Tasks>
__device__ __forceinline__ void resolve_tasks(TaskList<Tasks...> kinds, const LaunchParams& params,
                                              ResolvedTask* tasks, uint32_t n, uint32_t iteration,
                                              uint32_t thread) {
  for (uint32_t k = thread; k < n * kResolvedOperands; k += blockDim.x) {
    ResolvedTask& t = tasks[k / kResolvedOperands];
    const int i = k % kResolvedOperands;
    if (i < t.desc.num_operands) t.operands[i] = operand_address(params, t.desc, i, iteration);
  }
  for (uint32_t k = thread; k < n * kStagedDescWords; k += blockDim.x) {
    ResolvedTask& t = tasks[k / kStagedDescWords];
    const int w = k % kStagedDescWords;
    if (w < desc_words(kinds, t.desc.kind))
      t.desc_words[w] = reinterpret_cast<const int32_t*>(operand_address(params, t.desc, 1, iteration))[w];
  }
}

// The running task's start and phase marks, kept by thread 0 while the timeline is on.
struct ProfileMarks {
  uint64_t start_ns;
  uint32_t at[kProfileMarks];
};

__device__ __forceinline__ ProfileMarks& profile_marks() {
  __shared__ ProfileMarks marks;
  return marks;
}

struct TaskContext {
  const LaunchParams& params;
  const TaskDesc& desc;  // a ResolvedTask's
  uint32_t task;
  uint32_t iteration;
  int thread;  // 0 .. kWorkerThreads-1
  char* shared;  // kTaskSharedBytes, 16-byte aligned; contents undefined at task start
  // The task's `prefetch` ran before its wait (static schedule, kTaskPrefetch): its copies
  // into `shared` are in flight.
  bool prefetched;

  __device__ TaskContext(const LaunchParams& params, const ResolvedTask& resolved, uint32_t task, uint32_t iteration,
                         int thread, char* shared, bool prefetched = false)
      : params(params), desc(resolved.desc), task(task), iteration(iteration), thread(thread), shared(shared),
        prefetched(prefetched) {}

  template <typename T>
  __device__ __forceinline__ T* operand(int i) const {
    return reinterpret_cast<T*>(i < kResolvedOperands ? reinterpret_cast<const ResolvedTask&>(desc).operands[i]
                                                      : operand_address(params, desc, i, iteration));
  }

  // The constant descriptor at operand 1 of a kind with kDescWords, staged by the worker.
  __device__ __forceinline__ const int32_t* descriptor() const {
    return reinterpret_cast<const ResolvedTask&>(desc).desc_words;
  }

  __device__ __forceinline__ uint64_t operand_bytes(int i) const {
    return params.operands[desc.first_operand + i].bytes;
  }

  // With the timeline on, the time from the task's start to the first time it reaches phase
  // i (0 .. kProfileMarks - 1) goes into its ProfileEntry.
  __device__ __forceinline__ void mark(int i) const {
    if (params.profile_capacity != 0 && thread == 0 && profile_marks().at[i] == 0)
      profile_marks().at[i] = max(1u, uint32_t(global_timer_ns() - profile_marks().start_ns));
  }

  __device__ __forceinline__ ErrorRecord* error() const {
    return reinterpret_cast<ErrorRecord*>(params.workspace + params.control.error);
  }
};

__device__ __forceinline__ uint64_t dims_u64(const TaskDesc& d, int i) {
  return uint64_t(uint32_t(d.dims[i])) | (uint64_t(uint32_t(d.dims[i + 1])) << 32);
}

}  // namespace mpk
