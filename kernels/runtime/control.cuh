// Typed views of the workspace's control region, and the one way an event is
// handed to the schedulers.
#pragma once

#include "launch_params.h"
#include "sync.cuh"

namespace mpk {

struct Control {
  ErrorRecord* error;
  uint64_t* counters;
  uint64_t* sched_tail;
  uint64_t* sched_head;
  uint64_t* sched_queues;
  uint64_t* worker_consumed;
  uint64_t* worker_queues;
  uint64_t* profile_counts;
  ProfileEntry* profile;

  __device__ explicit Control(const LaunchParams& p) {
    uint8_t* w = p.workspace;
    error = reinterpret_cast<ErrorRecord*>(w + p.control.error);
    counters = reinterpret_cast<uint64_t*>(w + p.control.event_counters);
    sched_tail = reinterpret_cast<uint64_t*>(w + p.control.sched_tail);
    sched_head = reinterpret_cast<uint64_t*>(w + p.control.sched_head);
    sched_queues = reinterpret_cast<uint64_t*>(w + p.control.sched_queues);
    worker_consumed = reinterpret_cast<uint64_t*>(w + p.control.worker_consumed);
    worker_queues = reinterpret_cast<uint64_t*>(w + p.control.worker_queues);
    profile_counts = reinterpret_cast<uint64_t*>(w + p.control.profile_counts);
    profile = reinterpret_cast<ProfileEntry*>(w + p.control.profile);
  }
};

// Multi-producer ring: reserve a position, then publish the entry with its lap
// tag so the scheduler needs no separate "ready" counter. Capacity is proven
// by the validator; the check turns a broken proof into an error, never a
// silent overwrite.
__device__ inline bool push_to_scheduler(const LaunchParams& p, const Control& c, uint32_t s,
                                         uint32_t event, uint32_t iteration) {
  const uint64_t cap = p.sched_queue_capacity;
  const uint64_t pos = atom_add_relaxed(&c.sched_tail[s], 1);
  st_release(&c.sched_queues[s * cap + pos % cap], pack_sched_entry(pos / cap + 1, iteration, event));
  // Checked after the store, off the scheduler's critical path. The entry at
  // pos - cap was unconsumed (and is now clobbered) exactly when the head has
  // not passed it: the scheduler cannot pass a slot whose tag it never sees.
  const uint64_t head = ld_relaxed(&c.sched_head[s]);
  if (pos >= head + cap) {
    report_error(c.error, kSchedQueueOverflow, 0xFFFFFFFFu, event, iteration, pos - head, cap);
    return false;
  }
  return true;
}

__device__ inline void fire_event(const LaunchParams& p, const Control& c, uint32_t event,
                                  uint32_t iteration) {
  const EventDesc& e = p.events[event];
  if (e.kind == kEventLaunchMassive) {
    for (uint32_t s = 0; s < p.num_schedulers; ++s) push_to_scheduler(p, c, s, event, iteration);
  } else if (e.kind == kEventEndOfGraph) {
    push_to_scheduler(p, c, 0, event, iteration);
  } else {
    push_to_scheduler(p, c, e.scheduler, event, iteration);
  }
}

}  // namespace mpk
