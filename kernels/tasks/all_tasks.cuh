// The task library: adding a kind is adding its file and a line here.
#pragma once

#include "combine_u32.cuh"
#include "copy.cuh"
#include "elementwise.cuh"
#include "matmul.cuh"
#include "noop.cuh"
#include "wait_value.cuh"

namespace mpk {

template <typename... Tasks>
struct TaskList {};

using AllTasks = TaskList<NoopTask, CopyTask, CombineU32Task, WaitValueTask, ElementwiseTask, MatmulTask>;

}  // namespace mpk
