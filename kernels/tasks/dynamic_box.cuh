// The box DYNAMIC_SLICE reads and DYNAMIC_UPDATE_SLICE writes: dims rank, big_shape[4],
// small_shape[4], wrap_mask, itemsize; operands 2 .. 2 + rank hold the int32 starts, clamped
// so the box fits (bit d of wrap_mask first adds big_shape[d] to a negative start).
#pragma once

#include "../runtime/task_context.cuh"

namespace mpk {

struct DynamicBox {
  static constexpr int kMaxRank = 4;  // jax_mpk.task_kinds.MAX_SLICE_RANK

  // Operand `big` is the whole tensor, operand 1 - big the box.
  static const char* check(const TaskDesc& d, const Operand* ops, int big_operand) {
    const int rank = d.dims[0];
    if (rank < 0 || rank > kMaxRank) return "dynamic slice rank must be 0..4";
    if (d.num_operands != 2 + rank) return "dynamic slice takes operands big, small, one start per dim";
    const int itemsize = d.dims[10];
    if (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8)
      return "dynamic slice itemsize must be 1, 2, 4 or 8";
    uint64_t big = itemsize, small = itemsize;
    for (int i = 0; i < rank; ++i) {
      if (d.dims[5 + i] < 0 || d.dims[5 + i] > d.dims[1 + i])
        return "dynamic slice box is larger than the tensor it lies in";
      big *= uint64_t(d.dims[1 + i]);
      small *= uint64_t(d.dims[5 + i]);
    }
    if (ops[big_operand].bytes < big) return "dynamic slice tensor operand is shorter than its shape";
    if (ops[1 - big_operand].bytes < small) return "dynamic slice box operand is shorter than its shape";
    for (int i = 0; i < rank; ++i)
      if (ops[2 + i].bytes < 4) return "dynamic slice start operand is not an int32 scalar";
    return nullptr;
  }

  // A start clamped so that `small` elements from it fit in `big` (a negative start first
  // counts from the end where `wrap`), as JAX's dynamic slices clamp.
  __device__ static int64_t clamped_start(int64_t s, int64_t big, int64_t small, bool wrap) {
    if (wrap && s < 0) s += big;
    return min(max(s, int64_t(0)), big - small);
  }

  // Copies the box between `big` and `small` (to_big: small into big), in the widest units
  // that every row of the box allows.
  __device__ static void copy(const TaskContext& ctx, char* dst, const char* src, bool to_big) {
    const int rank = ctx.desc.dims[0];
    const int itemsize = ctx.desc.dims[10];
    const uint32_t wrap = uint32_t(ctx.desc.dims[9]);
    int64_t big_strides[kMaxRank], start_offset = 0, rows = 1;
    int32_t small_shape[kMaxRank];
    int64_t stride = itemsize;
    for (int d = rank - 1; d >= 0; --d) {
      const int32_t big = ctx.desc.dims[1 + d], small = ctx.desc.dims[5 + d];
      const int64_t s = clamped_start(*ctx.operand<const int32_t>(2 + d), big, small, (wrap >> d) & 1);
      big_strides[d] = stride;
      small_shape[d] = small;
      start_offset += int64_t(s) * stride;
      stride *= big;
      if (d < rank - 1) rows *= small;
    }
    // A row: the innermost dim of the box (the whole box when rank is 0).
    const int64_t row_bytes = rank ? int64_t(small_shape[rank - 1]) * itemsize : itemsize;
    if (rank == 0) rows = 1;
    const char* big_base = (to_big ? dst : src) + start_offset;
    const uintptr_t align = reinterpret_cast<uintptr_t>(big_base) | reinterpret_cast<uintptr_t>(to_big ? src : dst) |
                            uintptr_t(row_bytes) | uintptr_t(rank > 1 ? big_strides[rank - 2] : 0);
    int unit = 16;
    while (align % unit) unit /= 2;
    const int64_t units = row_bytes / unit, total = rows * units;
    for (int64_t i = ctx.thread; i < total; i += kWorkerThreads) {
      int64_t row = i / units, big_offset = (i % units) * unit;
      const int64_t small_offset = row * row_bytes + big_offset;
      for (int d = rank - 2; d >= 0; --d) {
        big_offset += (row % small_shape[d]) * big_strides[d];
        row /= small_shape[d];
      }
      const char* from = to_big ? src + small_offset : big_base + big_offset;
      char* to = to_big ? const_cast<char*>(big_base) + big_offset : dst + small_offset;
      switch (unit) {
        case 16: *reinterpret_cast<uint4*>(to) = *reinterpret_cast<const uint4*>(from); break;
        case 8: *reinterpret_cast<uint2*>(to) = *reinterpret_cast<const uint2*>(from); break;
        case 4: *reinterpret_cast<uint32_t*>(to) = *reinterpret_cast<const uint32_t*>(from); break;
        case 2: *reinterpret_cast<uint16_t*>(to) = *reinterpret_cast<const uint16_t*>(from); break;
        default: *to = *from;
      }
    }
  }
};

}  // namespace mpk
