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
  uint8_t* slots[kMaxSlots];
};

}  // namespace mpk
