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

// Under the static schedule nobody dispatches: consumers poll the counters,
// so a release reduction is all a trigger takes.
template <Schedule kSchedule>
__device__ inline void trigger_events(const LaunchParams& p, const Control& c, uint32_t first_trigger,
                                      uint32_t num_triggers, uint32_t iteration) {
  if (kSchedule == kScheduleStatic) {
    for (uint32_t k = 0; k < num_triggers; ++k) red_add_release(&c.counters[p.triggers[first_trigger + k]], 1);
    return;
  }
  fence_acq_rel_gpu();
  for (uint32_t k = 0; k < num_triggers; ++k) {
    const uint32_t event = p.triggers[first_trigger + k];
    if (atom_add_acq_rel(&c.counters[event], 1) + 1 == uint64_t(p.events[event].threshold) * (iteration + 1))
      fire_event(p, c, event, iteration);
  }
}

__device__ __forceinline__ void load_desc(TaskDesc& desc, const TaskDesc& from, int lane) {
  if (lane < int(sizeof(TaskDesc) / 4))
    reinterpret_cast<uint32_t*>(&desc)[lane] = reinterpret_cast<const uint32_t*>(&from)[lane];
}

// Runs one task with every thread of the block, then triggers its events.
template <Schedule kSchedule>
__device__ __forceinline__ void run_and_trigger(const LaunchParams& p, const Control& c, const TaskDesc& desc,
                                                uint32_t task, uint32_t iteration) {
  const int thread = threadIdx.x;
  const TaskContext ctx{p, desc, task, iteration, thread};
  if (!run_task(AllTasks{}, ctx) && thread == 0)
    report_error(c.error, kBadTaskKind, task, 0xFFFFFFFFu, iteration, desc.kind, kNumTaskKinds);
  // Read before the barrier: after it, other threads load the next descriptor.
  const uint32_t first_trigger = desc.first_trigger, num_triggers = desc.num_triggers;
  __syncthreads();
  if (thread == 0) trigger_events<kSchedule>(p, c, first_trigger, num_triggers, iteration);
}

// Static schedule: walk this worker's compiled list once per iteration. A
// task waits for its launch event to reach this iteration's threshold (the
// start event stands for "the previous iteration ended"), unless all its
// producers ran earlier on this worker. Warp 1 fetches the next descriptor
// while the current task runs.
__device__ inline void run_static_worker(const LaunchParams& p, uint32_t worker) {
  __shared__ uint32_t desc_words[sizeof(TaskDesc) / 4];
  __shared__ int stop;
  const TaskDesc& desc = *reinterpret_cast<const TaskDesc*>(desc_words);
  const Control c(p);
  const int thread = threadIdx.x;
  const int lane = thread - 32;
  const bool stager = lane >= 0 && lane < int(sizeof(TaskDesc) / 4);
  const uint32_t begin = p.worker_task_begin[worker], end = p.worker_task_begin[worker + 1];
  if (begin == end) return;
  const EventDesc& end_event = p.events[p.end_event];
  WorkerTask next = p.worker_tasks[begin];
  uint32_t next_word = stager ? reinterpret_cast<const uint32_t*>(&p.tasks[next.task])[lane] : 0;
  for (uint32_t iteration = 0; iteration < p.num_iterations; ++iteration) {
    for (uint32_t i = begin; i < end; ++i) {
      const WorkerTask item = next;
      if (thread == 0) {
        int verdict = Watchdog::kWait;
        if (item.wait_event != kNoWait) {
          const bool first = item.wait_event == p.start_event;
          const uint32_t event = first ? p.end_event : item.wait_event;
          const uint64_t target = first ? uint64_t(end_event.threshold) * iteration
                                        : uint64_t(p.events[event].threshold) * (iteration + 1);
          uint64_t seen;
          Watchdog dog(c.error, kIdleBudgetFactor * p.watchdog_ns);  // the producer's own wait reports first
          while ((seen = ld_acquire(&c.counters[event])) < target && (verdict = dog.poll()) == Watchdog::kWait) {
          }
          if (verdict == Watchdog::kExpired)
            report_error(c.error, kWatchdogTaskInputs, item.task, event, iteration, seen, target);
        }
        stop = verdict != Watchdog::kWait;
      } else if (stager) {
        desc_words[lane] = next_word;
      }
      __syncthreads();
      if (stop) return;
      next = p.worker_tasks[i + 1 < end ? i + 1 : begin];
      if (stager) next_word = reinterpret_cast<const uint32_t*>(&p.tasks[next.task])[lane];
      run_and_trigger<kScheduleStatic>(p, c, desc, item.task, iteration);
    }
  }
}

// Dynamic schedule: take task ids from this worker's queue as schedulers publish them.
__device__ inline void run_dynamic_worker(const LaunchParams& p, uint32_t worker) {
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
      load_desc(desc, p.tasks[task], thread);
      __syncthreads();
      run_and_trigger<kScheduleDynamic>(p, c, desc, task, iteration);
    }
    __syncthreads();
  }
}

}  // namespace mpk
