// The worker loop: one block per SM fetches task ids from its queue in
// batches, runs each task, then triggers the events it feeds.
#pragma once

#include "../tasks/all_tasks.cuh"
#include "control.cuh"

namespace mpk {

constexpr int kFetchBatch = 8;

template <typename... Tasks>
__device__ __forceinline__ bool run_task(TaskList<Tasks...>, const TaskContext& ctx) {
  bool found = false;
  ((ctx.desc.kind == Tasks::kKind ? (Tasks::run(ctx), found = true) : false), ...);
  return found;
}

__device__ inline void trigger_events(const LaunchParams& p, const Control& c, uint32_t first_trigger,
                                      uint32_t num_triggers, uint32_t iteration) {
  fence_acq_rel_gpu();
  for (uint32_t k = 0; k < num_triggers; ++k) {
    const uint32_t event = p.triggers[first_trigger + k];
    const uint64_t target = uint64_t(p.events[event].threshold) * (iteration + 1);
    if (atom_add_acq_rel(&c.counters[event], 1) + 1 == target) fire_event(p, c, event, iteration);
  }
}

__device__ inline void run_worker(const LaunchParams& p, uint32_t worker) {
  __shared__ uint64_t batch[kFetchBatch];
  __shared__ int batch_size;  // -1: exit
  __shared__ TaskDesc desc;
  const Control c(p);
  const int thread = threadIdx.x;
  const uint64_t cap = p.worker_queue_capacity;
  uint64_t* queue = c.worker_queues + worker * cap;
  uint64_t head = 0;  // thread 0's

  while (true) {
    if (thread == 0) {
      uint64_t ready = ld_acquire(&c.worker_ready[worker]);
      Watchdog dog(c.error, kIdleBudgetFactor * p.watchdog_ns);
      int n = 0;
      while (ready == head) {
        Watchdog::Verdict v = dog.poll();
        if (v != Watchdog::kWait) {
          if (v == Watchdog::kExpired)
            report_error(c.error, kWatchdogWorkerIdle, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, head, head + 1);
          n = -1;
          break;
        }
        ready = ld_acquire(&c.worker_ready[worker]);
      }
      if (n == 0) {
        n = ready - head < kFetchBatch ? int(ready - head) : kFetchBatch;
        for (int i = 0; i < n; ++i) batch[i] = ld_relaxed(&queue[(head + i) % cap]);
        head += n;
        st_release(&c.worker_consumed[worker], head);
      }
      batch_size = n;
    }
    __syncthreads();
    const int n = batch_size;
    if (n < 0) return;
    for (int i = 0; i < n; ++i) {
      const uint32_t task = uint32_t(batch[i]);
      const uint32_t iteration = uint32_t(batch[i] >> 32);
      if (task == kTerminateTask) return;
      if (thread < int(sizeof(TaskDesc) / 4))
        reinterpret_cast<uint32_t*>(&desc)[thread] = reinterpret_cast<const uint32_t*>(&p.tasks[task])[thread];
      __syncthreads();
      const TaskContext ctx{p, desc, task, iteration, thread};
      if (!run_task(AllTasks{}, ctx) && thread == 0)
        report_error(c.error, kBadTaskKind, task, 0xFFFFFFFFu, iteration, desc.kind, kNumTaskKinds);
      // Read before the barrier: after it, other threads load the next descriptor.
      const uint32_t first_trigger = desc.first_trigger, num_triggers = desc.num_triggers;
      __syncthreads();
      if (thread == 0) trigger_events(p, c, first_trigger, num_triggers, iteration);
    }
    __syncthreads();
  }
}

}  // namespace mpk
