// A task that does nothing: runtime overhead benchmarks and graph plumbing.
#pragma once

#include "../runtime/task_context.cuh"

namespace mpk {

struct NoopTask {
  static constexpr TaskKind kKind = kTaskNoop;
  static constexpr const char* kName = "noop";

  static const char* check(const TaskDesc&, const Operand*) { return nullptr; }

  __device__ static void run(const TaskContext&) {}
};

}  // namespace mpk
