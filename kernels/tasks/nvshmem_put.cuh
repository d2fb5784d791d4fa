// PUT: copies dims[0..1] bytes from operand 1 (local) to operand 0 (a
// symmetric buffer) in the copy of PE dims[2]. Peers are reached by
// load/store (NVLink or the same GPU): the address is the local symmetric one
// plus that PE's heap delta. With a tagged trigger to the same PE it is a put
// with signal: the signal is released after every thread's stores.
#pragma once

#include "../runtime/task_context.cuh"
#include "copy.cuh"

namespace mpk {

struct PutTask {
  static constexpr TaskKind kKind = kTaskPut;
  static constexpr const char* kName = "put";

  // The validator checks what needs the slot table: dst is symmetric, pe < num_pes.
  static const char* check(const TaskDesc& d, const Operand* ops) {
    if (d.num_operands != 2) return "put takes two operands: dst (symmetric), src";
    const uint64_t n = uint64_t(uint32_t(d.dims[0])) | (uint64_t(uint32_t(d.dims[1])) << 32);
    if (ops[0].bytes < n || ops[1].bytes < n) return "put moves more bytes than its operands hold";
    if (d.dims[2] < 0 || uint32_t(d.dims[2]) >= kMaxPes) return "put names a PE outside [0, 8)";
    return nullptr;
  }

  __device__ static void run(const TaskContext& ctx) {
    uint8_t* dst = ctx.operand<uint8_t>(0) + ctx.params.peer_delta[ctx.desc.dims[2]];
    CopyTask::copy_block(dst, ctx.operand<const uint8_t>(1), dims_u64(ctx.desc, 0), ctx.thread);
  }
};

}  // namespace mpk
