// Waits until the uint64 at operand 0 reaches dims[0..1]: the shape of every
// wait on a value another agent (a peer GPU, the host) writes.
#pragma once

#include "../runtime/task_context.cuh"

namespace mpk {

struct WaitValueTask {
  static constexpr TaskKind kKind = kTaskWaitValue;
  static constexpr const char* kName = "wait_value";

  static const char* check(const TaskDesc& d, const Operand* ops) {
    if (d.num_operands != 1 || ops[0].bytes < 8) return "wait_value takes one 8-byte flag operand";
    return nullptr;
  }

  __device__ static void run(const TaskContext& ctx) {
    if (ctx.thread != 0) return;
    const uint64_t* flag = ctx.operand<const uint64_t>(0);
    const uint64_t value = dims_u64(ctx.desc, 0);
    Watchdog dog(ctx.error(), ctx.params.watchdog_ns);
    uint64_t seen;
    while ((seen = ld_acquire(flag)) < value) {
      Watchdog::Verdict v = dog.poll();
      if (v == Watchdog::kAborted) return;
      if (v == Watchdog::kExpired) {
        report_error(ctx.error(), kWatchdogTaskWait, ctx.task, 0xFFFFFFFFu, ctx.iteration, seen, value);
        return;
      }
    }
  }
};

}  // namespace mpk
