// The task library: adding a kind is adding its file and a line here.
#pragma once

#include "combine_u32.cuh"
#include "copy.cuh"
#include "decode_attention.cuh"
#include "dynamic_slice.cuh"
#include "dynamic_update_slice.cuh"
#include "elementwise.cuh"
#include "gather_rows.cuh"
#include "matmul.cuh"
#include "noop.cuh"
#include "nvshmem_put.cuh"
#include "nvshmem_signal_wait.cuh"
#include "reduce.cuh"
#include "sequence.cuh"
#include "wait_value.cuh"

namespace mpk {

using AllTasks = TaskList<NoopTask, CopyTask, CombineU32Task, WaitValueTask, ElementwiseTask, ReduceTask,
                          MatmulTask, GatherRowsTask, DynamicSliceTask, DynamicUpdateSliceTask, PutTask,
                          SignalWaitTask, SequenceTask, DecodeAttentionTask>;

}  // namespace mpk
