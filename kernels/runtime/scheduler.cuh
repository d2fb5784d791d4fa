// The scheduler loop: one warp polls its event queue and dispatches the tasks
// each event launches round-robin to the workers it owns. Scheduler 0 also
// starts each iteration and, after the last, tells every scheduler to stop.
#pragma once

#include "control.cuh"

namespace mpk {

constexpr uint32_t kMaxWorkersPerScheduler = 256;

class Scheduler {
 public:
  __device__ Scheduler(const LaunchParams& p, uint32_t id)
      : p_(p), c_(p), id_(id),
        first_worker_(uint32_t(uint64_t(id) * p.num_workers / p.num_schedulers)),
        last_worker_(uint32_t(uint64_t(id + 1) * p.num_workers / p.num_schedulers)),
        next_worker_(first_worker_) {
    for (uint32_t w = 0; w < last_worker_ - first_worker_; ++w) published_[w] = consumed_[w] = 0;
  }

  __device__ void run() {
    if (id_ == 0) fire_event(p_, c_, p_.start_event, 0);
    const uint64_t cap = p_.sched_queue_capacity;
    const uint64_t* queue = c_.sched_queues + id_ * cap;
    for (uint64_t head = 0;; ++head) {
      const uint64_t lap = (head / cap + 1) & 0xFFFFFFull;
      uint64_t entry = ld_acquire(&queue[head % cap]);
      Watchdog dog(c_.error, kIdleBudgetFactor * p_.watchdog_ns);
      while ((entry >> 40) != lap) {
        Watchdog::Verdict v = dog.poll();
        if (v == Watchdog::kAborted) return;
        if (v == Watchdog::kExpired) {
          report_error(c_.error, kWatchdogSchedulerIdle, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, head, head + 1);
          return;
        }
        entry = ld_acquire(&queue[head % cap]);
      }
      st_relaxed(&c_.sched_head[id_], head + 1);
      const uint32_t event = uint32_t(entry & 0xFFFFFFu);
      const uint32_t iteration = uint32_t((entry >> 24) & 0xFFFFu);
      if (event == kTerminateEvent) {
        fence_acq_rel_gpu();
        for (uint32_t w = first_worker_; w < last_worker_; ++w)
          if (!write_entry(w, 0, kTerminateTask)) return;
        return;
      }
      const EventDesc& e = p_.events[event];
      if (e.kind == kEventEndOfGraph) {
        if (iteration + 1 < p_.num_iterations) {
          fire_event(p_, c_, p_.start_event, iteration + 1);
        } else {
          for (uint32_t s = 0; s < p_.num_schedulers; ++s)
            push_to_scheduler(p_, c_, s, kTerminateEvent, iteration);
        }
        continue;
      }
      uint32_t first = e.first_task, last = e.last_task;
      if (e.kind == kEventLaunchMassive) {
        const uint64_t n = last - first;
        last = first + uint32_t(n * (id_ + 1) / p_.num_schedulers);
        first = first + uint32_t(n * id_ / p_.num_schedulers);
      }
      if (!dispatch_range(first, last, iteration)) return;
    }
  }

 private:
  // Round-robin over the owned workers. One fence releases everything this
  // scheduler acquired (the tasks' inputs) to all the entries written after it.
  __device__ bool dispatch_range(uint32_t first, uint32_t last, uint32_t iteration) {
    fence_acq_rel_gpu();
    for (uint32_t t = first; t < last; ++t) {
      if (!write_entry(next_worker_, iteration, t)) return false;
      next_worker_ = next_worker_ + 1 == last_worker_ ? first_worker_ : next_worker_ + 1;
    }
    return true;
  }

  // Single producer per worker queue; the entry's lap tag publishes it.
  __device__ bool write_entry(uint32_t worker, uint32_t iteration, uint32_t task) {
    const uint64_t cap = p_.worker_queue_capacity;
    uint64_t& next = published_[worker - first_worker_];
    // The worker's consumed count is re-read only when the cached one says
    // full: a round trip per dispatch would bound throughput at ~1 task/µs.
    uint64_t& consumed = consumed_[worker - first_worker_];
    if (next - consumed >= cap) {
      Watchdog dog(c_.error, p_.watchdog_ns);
      while (next - (consumed = ld_acquire(&c_.worker_consumed[worker])) >= cap) {
        Watchdog::Verdict v = dog.poll();
        if (v == Watchdog::kAborted) return false;
        if (v == Watchdog::kExpired) {
          report_error(c_.error, kWatchdogWorkerQueueFull, task, 0xFFFFFFFFu, iteration, next - consumed, cap);
          return false;
        }
      }
    }
    st_relaxed(&c_.worker_queues[worker * cap + next % cap], pack_worker_entry(next / cap + 1, iteration, task));
    ++next;
    return true;
  }

  const LaunchParams& p_;
  const Control c_;
  const uint32_t id_;
  const uint32_t first_worker_;
  const uint32_t last_worker_;
  uint32_t next_worker_;
  uint64_t published_[kMaxWorkersPerScheduler];  // entries written per owned worker
  uint64_t consumed_[kMaxWorkersPerScheduler];   // last seen worker_consumed
};

}  // namespace mpk
