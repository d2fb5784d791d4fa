// What one launch of the megakernel receives by value: the uploaded program
// and this call's buffer addresses, one per slot.
#pragma once

#include "program_format.h"

namespace mpk {

struct LaunchParams {
  const TaskDesc* tasks;
  const EventDesc* events;
  const uint32_t* triggers;
  const Operand* operands;
  const uint32_t* worker_task_begin;
  const WorkerTask* worker_tasks;
  uint8_t* workspace;
  uint64_t watchdog_ns;
  uint32_t num_workers;
  uint32_t num_schedulers;
  uint32_t worker_queue_capacity;
  uint32_t sched_queue_capacity;
  uint32_t num_iterations;
  uint32_t start_event;
  uint32_t end_event;
  uint32_t num_slots;
  uint32_t schedule;
  uint32_t profile_capacity;
  ControlLayout control;
  // NVSHMEM: a local symmetric address plus peer_delta[pe] is the same object
  // on PE `pe` (NVSHMEM maps each peer's heap contiguously). Signal words
  // count from signal_base iterations: earlier launches on the same buffer.
  int64_t peer_delta[kMaxPes];
  uint64_t signal_base;
  uint8_t* signals;  // the program's signal words on this PE, or null
  uint8_t* slots[kMaxSlots];
};

}  // namespace mpk
