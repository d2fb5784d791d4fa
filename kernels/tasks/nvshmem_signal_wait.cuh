// SIGNAL_WAIT: waits until this PE's signal word named by the NVSHMEM event
// dims[0] has counted dims[1] signals in every iteration so far (lag
// dims[2] = 1: in every iteration before this one, the shape of an
// acknowledgement that a peer consumed the previous iteration's tile), as
// nvshmem_signal_wait_until(word, NVSHMEM_CMP_GE, ...) would, but under the
// watchdog: a peer that never signals becomes an error, not a hang.
#pragma once

#include "../runtime/task_context.cuh"

namespace mpk {

struct SignalWaitTask {
  static constexpr TaskKind kKind = kTaskSignalWait;
  static constexpr const char* kName = "signal_wait";

  // The validator checks the event against the header: this PE, a word in range.
  static const char* check(const TaskDesc& d, const Operand*) {
    if (d.num_operands != 0) return "signal_wait takes no operands";
    if (!is_nvshmem_event(uint32_t(d.dims[0]))) return "signal_wait needs an NVSHMEM (tagged) event id in dims[0]";
    if (d.dims[1] <= 0) return "signal_wait needs a threshold of at least 1 signal per iteration";
    if (d.dims[2] != 0 && d.dims[2] != 1) return "signal_wait's lag (dims[2]) is 0 or 1 iterations";
    return nullptr;
  }

  __device__ static void run(const TaskContext& ctx) {
    if (ctx.thread != 0) return;
    const uint32_t event = uint32_t(ctx.desc.dims[0]);
    const uint64_t* word = reinterpret_cast<const uint64_t*>(ctx.params.signals) + nvshmem_event_word(event);
    const uint64_t target = uint64_t(ctx.desc.dims[1]) * (ctx.params.signal_base + ctx.iteration + 1 - ctx.desc.dims[2]);
    Watchdog dog(ctx.error(), ctx.params.watchdog_ns);
    uint64_t seen;
    while ((seen = ld_acquire_sys(word)) < target) {
      const Watchdog::Verdict v = dog.poll();
      if (v == Watchdog::kAborted) return;
      if (v == Watchdog::kExpired) {
        report_error(ctx.error(), kWatchdogSignalWait, ctx.task, event, ctx.iteration, seen, target);
        return;
      }
    }
  }
};

}  // namespace mpk
