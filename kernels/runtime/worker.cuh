// The worker loop: one block per SM fetches task ids from its queue in
// batches, runs each task, then triggers the events it feeds.
#pragma once

#include <type_traits>
#include <utility>

#include "../tasks/all_tasks.cuh"
#include "control.cuh"

namespace mpk {

constexpr int kFetchBatch = 8;

// The kind is read once and the search stops at the match: a task's `run` may write shared
// memory, so re-reading desc.kind after it took a load a kind (and, with the TaskContext
// spilled, a local one before it) for every kind after the task's.
template <typename... Tasks>
__device__ __forceinline__ bool run_task(TaskList<Tasks...>, const TaskContext& ctx) {
  const uint32_t kind = ctx.desc.kind;
  return ((kind == Tasks::kKind && (Tasks::run(ctx), true)) || ...);
}

// Tasks that can start loading read-only operands before their inputs are ready define
// `static void prefetch(const TaskContext&)`; `run` then sees ctx.prefetched.
template <typename T, typename = void>
struct HasPrefetch : std::false_type {};
template <typename T>
struct HasPrefetch<T, std::void_t<decltype(T::prefetch(std::declval<const TaskContext&>()))>> : std::true_type {};

template <typename... Tasks>
__device__ __forceinline__ bool prefetch_task(TaskList<Tasks...>, const TaskContext& ctx) {
  bool done = false;
  (
      [&] {
        if constexpr (HasPrefetch<Tasks>::value) {
          if (ctx.desc.kind == Tasks::kKind) {
            Tasks::prefetch(ctx);
            done = true;
          }
        }
      }(),
      ...);
  return done;
}

// An NVSHMEM event: add 1 to a signal word in a peer's copy of the signal
// buffer. The release at system scope publishes the task's stores, which the
// block barrier ordered before this thread's trigger, to the peer first.
// Out of line: programs without NVSHMEM never take it.
__device__ __noinline__ void signal_peer(const LaunchParams& p, uint32_t event) {
  auto* words = reinterpret_cast<uint64_t*>(p.signals + p.peer_delta[nvshmem_event_pe(event)]);
  red_add_release_sys(words + nvshmem_event_word(event), 1);
}

// Under the static schedule nobody dispatches: consumers poll the counters,
// so a release reduction is all a trigger takes.
// When every consumer runs later on this worker, the block barrier already
// orders the data and the counter only keeps count: no fence.
template <Schedule kSchedule>
__device__ inline void trigger_events(const LaunchParams& p, const Control& c, uint32_t first_trigger,
                                      uint32_t num_triggers, uint32_t flags, uint32_t iteration) {
  if (kSchedule == kScheduleStatic) {
    for (uint32_t k = 0; k < num_triggers; ++k) {
      const uint32_t event = p.triggers[first_trigger + k];
      if (is_nvshmem_event(event)) {
        signal_peer(p, event);
        continue;
      }
      uint64_t* counter = &c.counters[event];
      if (flags & kTaskRelaxedTriggers)
        red_add_relaxed(counter, 1);
      else
        red_add_release(counter, 1);
    }
    return;
  }
  fence_acq_rel_gpu();
  for (uint32_t k = 0; k < num_triggers; ++k) {
    const uint32_t event = p.triggers[first_trigger + k];
    if (is_nvshmem_event(event)) {
      signal_peer(p, event);
      continue;
    }
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
__device__ __forceinline__ void run_and_trigger(const LaunchParams& p, const Control& c, const ResolvedTask& resolved,
                                                uint32_t task, uint32_t iteration, bool prefetched = false) {
  const TaskDesc& desc = resolved.desc;
  const int thread = threadIdx.x;
  const bool profiling = p.profile_capacity != 0 && thread == 0;
  if (profiling) {
    ProfileMarks& marks = profile_marks();
    marks.start_ns = global_timer_ns();
    for (int i = 0; i < kProfileMarks; ++i) marks.at[i] = 0;
  }
  extern __shared__ __align__(16) char task_shared[];
  const TaskContext ctx(p, resolved, task, iteration, thread, task_shared, prefetched);
  if (!run_task(AllTasks{}, ctx) && thread == 0)
    report_error(c.error, kBadTaskKind, task, 0xFFFFFFFFu, iteration, desc.kind, kNumTaskKinds);
  // Read before the barrier: after it, other threads load the next descriptor.
  const uint32_t first_trigger = desc.first_trigger, num_triggers = desc.num_triggers, flags = desc.flags;
  __syncthreads();
  if (profiling) {
    const uint32_t worker = blockIdx.x;
    const uint64_t n = c.profile_counts[worker]++;  // only this thread writes it
    if (n < p.profile_capacity) {
      const ProfileMarks& marks = profile_marks();
      ProfileEntry& entry = c.profile[uint64_t(worker) * p.profile_capacity + n];
      entry = ProfileEntry{marks.start_ns, global_timer_ns(), task, iteration, {}};
      for (int i = 0; i < kProfileMarks; ++i) entry.marks[i] = marks.at[i];
    }
  }
  if (thread == 0) trigger_events<kSchedule>(p, c, first_trigger, num_triggers, flags, iteration);
}

// Static schedule: walk this worker's compiled list once per iteration. A
// task waits for its launch event to reach this iteration's threshold (the
// start event stands for "the previous iteration ended"), unless all its
// producers ran earlier on this worker. List entries and descriptors are
// staged into shared memory a chunk at a time, one round trip per chunk, and so are the
// addresses of the tasks' first operands and their constant descriptors. A task
// flagged kTaskPrefetch starts loading its weights before the wait.
constexpr uint32_t kStagedTasks = 32;

__device__ inline void run_static_worker(const LaunchParams& p, uint32_t worker) {
  __shared__ WorkerTask items[kStagedTasks];
  __shared__ ResolvedTask staged[kStagedTasks];
  __shared__ int stop;
  constexpr uint32_t kWords = sizeof(TaskDesc) / 4;
  const Control c(p);
  const uint32_t thread = threadIdx.x;
  const uint32_t begin = p.worker_task_begin[worker], end = p.worker_task_begin[worker + 1];
  const EventDesc& end_event = p.events[p.end_event];
  for (uint32_t iteration = 0; iteration < p.num_iterations; ++iteration) {
    for (uint32_t chunk = begin; chunk < end; chunk += kStagedTasks) {
      const uint32_t n = min(kStagedTasks, end - chunk);
      __syncthreads();  // the previous chunk is done with the stage
      if (thread < n) items[thread] = p.worker_tasks[chunk + thread];
      __syncthreads();
      for (uint32_t k = thread; k < n * kWords; k += blockDim.x)
        reinterpret_cast<uint32_t*>(&staged[k / kWords].desc)[k % kWords] =
            reinterpret_cast<const uint32_t*>(&p.tasks[items[k / kWords].task])[k % kWords];
      __syncthreads();
      resolve_tasks(AllTasks{}, p, staged, n, iteration, thread);
      __syncthreads();
      for (uint32_t j = 0; j < n; ++j) {
        const WorkerTask item = items[j];
        bool prefetched = false;
        if (staged[j].desc.flags & kTaskPrefetch) {
          extern __shared__ __align__(16) char task_shared[];
          prefetched = prefetch_task(AllTasks{}, TaskContext(p, staged[j], item.task, iteration, int(thread), task_shared));
        }
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
        }
        __syncthreads();
        if (stop) return;
        run_and_trigger<kScheduleStatic>(p, c, staged[j], item.task, iteration, prefetched);
      }
    }
  }
}

// Dynamic schedule: take task ids from this worker's queue as schedulers publish them.
__device__ inline void run_dynamic_worker(const LaunchParams& p, uint32_t worker) {
  __shared__ uint64_t batch[kFetchBatch];
  __shared__ int batch_size;  // -1: exit
  __shared__ ResolvedTask resolved;
  const Control c(p);
  const int thread = threadIdx.x;
  const uint64_t cap = p.worker_queue_capacity;
  uint64_t* queue = c.worker_queues + worker * cap;
  uint64_t head = 0;  // thread 0's

  // An entry is ready when its lap tag matches the position's lap.
  auto tagged = [&](uint64_t position, uint64_t entry) { return (entry >> 48) == ((position / cap + 1) & 0xFFFF); };
  while (true) {
    if (thread == 0) {
      uint64_t entry = ld_relaxed(&queue[head % cap]);
      Watchdog dog(c.error, kIdleBudgetFactor * p.watchdog_ns);
      int n = 0;
      while (!tagged(head, entry)) {
        Watchdog::Verdict v = dog.poll();
        if (v != Watchdog::kWait) {
          if (v == Watchdog::kExpired)
            report_error(c.error, kWatchdogWorkerIdle, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, head, head + 1);
          n = -1;
          break;
        }
        entry = ld_relaxed(&queue[head % cap]);
      }
      if (n == 0) {
        batch[n++] = entry;
        while (n < kFetchBatch && tagged(head + n, entry = ld_relaxed(&queue[(head + n) % cap]))) batch[n++] = entry;
        fence_acq_rel_gpu();  // acquires every entry read above, and orders those reads before `consumed`
        head += n;
        st_relaxed(&c.worker_consumed[worker], head);
      }
      batch_size = n;
    }
    __syncthreads();
    const int n = batch_size;
    if (n < 0) return;
    for (int i = 0; i < n; ++i) {
      const uint32_t task = uint32_t(batch[i]);
      const uint32_t iteration = uint32_t(batch[i] >> 32) & 0xFFFFu;
      if (task == kTerminateTask) return;
      load_desc(resolved.desc, p.tasks[task], thread);
      __syncthreads();
      resolve_tasks(AllTasks{}, p, &resolved, 1, iteration, thread);
      __syncthreads();
      run_and_trigger<kScheduleDynamic>(p, c, resolved, task, iteration);
    }
    __syncthreads();
  }
}

}  // namespace mpk
