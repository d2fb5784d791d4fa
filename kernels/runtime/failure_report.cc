#include "megakernel.h"
#include "message.h"

namespace mpk {

std::string describe_failure(const uint8_t* blob, const ErrorRecord& err, const uint64_t* counters) {
  const auto& h = *reinterpret_cast<const ProgramHeader*>(blob);
  const BlobLayout at(h);
  const auto* tasks = reinterpret_cast<const TaskDesc*>(blob + at.tasks);
  const auto* events = reinterpret_cast<const EventDesc*>(blob + at.events);
  const double budget_ms = h.watchdog_ns / 1e6;
  Message msg;
  switch (err.code) {
    case kWatchdogWorkerIdle:
      msg << "watchdog: worker " << err.block << " waited " << kIdleBudgetFactor * budget_ms << " ms for a task";
      break;
    case kWatchdogSchedulerIdle:
      msg << "watchdog: a scheduler (block " << err.block << ") waited " << kIdleBudgetFactor * budget_ms
          << " ms for an event";
      break;
    case kWatchdogWorkerQueueFull:
      msg << "watchdog: a scheduler waited " << budget_ms << " ms for room in a worker queue to dispatch task "
          << err.task << " of iteration " << err.iteration;
      break;
    case kWatchdogTaskWait:
      msg << "watchdog: task " << err.task;
      if (err.task < h.num_tasks) msg << " (kind " << tasks[err.task].kind << ")";
      msg << " of iteration " << err.iteration << " waited " << budget_ms << " ms for a value: saw "
          << err.observed << ", needs " << err.expected;
      break;
    case kWatchdogTaskInputs:
      msg << "watchdog: task " << err.task << " of iteration " << err.iteration << " waited "
          << kIdleBudgetFactor * budget_ms << " ms for event " << err.event << ": its counter reached " << err.observed << " of " << err.expected;
      break;
    case kWatchdogSignalWait:
      msg << "watchdog: task " << err.task << " (signal_wait) of iteration " << err.iteration << " waited "
          << budget_ms << " ms for NVSHMEM signal word " << nvshmem_event_word(err.event) << " of PE "
          << nvshmem_event_pe(err.event) << ": it counted " << err.observed << " signals of " << err.expected
          << "; a peer never signalled it (is every PE running its program?)";
      break;
    case kSchedQueueOverflow:
      msg << "scheduler queue overflow while firing event " << err.event << ": " << err.observed
          << " entries pending in a queue of " << err.expected;
      break;
    case kBadTaskKind:
      msg << "task " << err.task << " has unknown kind " << err.observed;
      break;
    default:
      msg << "device error code " << err.code;
  }
  if (counters) {
    // Name the events that never completed: where the graph stopped.
    const EventDesc& end = events[h.end_event];
    const uint64_t iteration = end.threshold ? counters[h.end_event] / end.threshold : 0;
    int named = 0, stuck = 0;
    Message detail;
    for (uint32_t e = 0; e < h.num_events; ++e) {
      if (e == h.start_event) continue;
      const uint64_t done_before = uint64_t(events[e].threshold) * iteration;
      if (counters[e] >= done_before + events[e].threshold) continue;
      ++stuck;
      if (counters[e] > done_before && named < 4) {
        detail << "; event " << e << " (launching tasks [" << events[e].first_task << ", "
               << events[e].last_task << ")) has " << counters[e] - done_before << " of "
               << events[e].threshold << " triggers";
        ++named;
      }
    }
    msg << " in iteration " << iteration << " of " << h.num_iterations << "; " << stuck
        << " events did not fire" << detail.str();
  }
  msg << ". The launch was aborted and its outputs are not valid.";
  return msg.str();
}

}  // namespace mpk
