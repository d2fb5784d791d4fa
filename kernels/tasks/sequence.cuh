// SEQUENCE: steps, each a task of another kind, run one after another by the whole block
// over rows [first, first + count), a barrier between them so that a step reads what the
// earlier steps of this task wrote. operands: descriptor, then each step's operands;
// dims: first, count; descriptor: n_steps, then per step kind, num_operands, range_dim,
// units_per_row, dims[kMaxTaskDims] (jax_mpk/task_kinds.py). Step dims[range_dim] and
// dims[range_dim + 1] become first and count times units_per_row; range_dim -1: whole.
#pragma once

#include "../runtime/task_context.cuh"
#include "dynamic_slice.cuh"
#include "dynamic_update_slice.cuh"
#include "elementwise.cuh"
#include "gather_rows.cuh"
#include "reduce.cuh"

namespace mpk {

struct SequenceTask {
  static constexpr TaskKind kKind = kTaskSequence;
  static constexpr const char* kName = "sequence";
  static constexpr int kStepWords = 4 + kMaxTaskDims;  // jax_mpk.task_kinds.SEQUENCE_STEP_WORDS

  static const char* check(const TaskDesc& d, const Operand* ops) {
    if (d.num_operands < 1) return "sequence takes operands descriptor, then its steps' operands";
    if (ops[0].bytes < 4 || ops[0].bytes % 4) return "sequence descriptor operand is not int32 words";
    if (d.dims[0] < 0 || d.dims[1] < 0) return "sequence needs first >= 0 and count >= 0 rows";
    return nullptr;
  }

  using StepKinds = TaskList<ElementwiseTask, ReduceTask, GatherRowsTask, DynamicSliceTask, DynamicUpdateSliceTask>;

  static MPK_HOST_DEVICE bool is_step_kind(int32_t kind) {
    return kind == kTaskElementwise || kind == kTaskReduce || kind == kTaskGatherRows ||
           kind == kTaskDynamicSlice || kind == kTaskDynamicUpdateSlice;
  }

  // Step `words` of a sequence task as a task of its own, its operands from `first_operand`.
  static MPK_HOST_DEVICE TaskDesc step_desc(const int32_t* words, const TaskDesc& task, uint32_t first_operand) {
    TaskDesc d{};
    d.kind = uint16_t(words[0]);
    d.num_operands = uint16_t(words[1]);
    d.first_operand = first_operand;
    for (int i = 0; i < int(kMaxTaskDims); ++i) d.dims[i] = words[4 + i];
    const int range = words[2], per_row = words[3];
    if (range >= 0 && range + 1 < int(kMaxTaskDims)) {
      d.dims[range] = task.dims[0] * per_row;
      d.dims[range + 1] = task.dims[1] * per_row;
    }
    return d;
  }

  __device__ static void run(const TaskContext& ctx) {
    const int32_t* words = ctx.operand<const int32_t>(0);
    const int steps = words[0];
    uint32_t operand = ctx.desc.first_operand + 1;
    for (int s = 0; s < steps; ++s) {
      __shared__ ResolvedTask step;
      if (ctx.thread == 0) step.desc = step_desc(words + 1 + s * kStepWords, ctx.desc, operand);
      __syncthreads();
      resolve_tasks(StepKinds{}, ctx.params, &step, 1, ctx.iteration, ctx.thread);
      operand += step.desc.num_operands;
      __syncthreads();
      const TaskContext sub(ctx.params, step, ctx.task, ctx.iteration, ctx.thread, ctx.shared);
      switch (step.desc.kind) {
        case kTaskElementwise: ElementwiseTask::run(sub); break;
        case kTaskReduce: ReduceTask::run(sub); break;
        case kTaskGatherRows: GatherRowsTask::run(sub); break;
        case kTaskDynamicSlice: DynamicSliceTask::run(sub); break;
        case kTaskDynamicUpdateSlice: DynamicUpdateSliceTask::run(sub); break;
        default:
          if (ctx.thread == 0)
            report_error(ctx.error(), kBadTaskKind, ctx.task, 0xFFFFFFFFu, ctx.iteration, kKind, step.desc.kind);
          return;
      }
      __syncthreads();  // the next step may read what this one wrote
    }
  }
};

}  // namespace mpk
