// GATHER_ROWS: out[i, :] = table[ids[i], :] for the task's ids (embedding lookups).
// operands: out, table, ids (int32); dims: n, width, rows, dtype, mode, first, count.
// mode bit 0: out-of-range ids fill the row with NaN (floats) or 0, else they clamp;
// bit 1: a negative id first gets rows added.
#pragma once

#include "../runtime/task_context.cuh"
#include "dtype.cuh"

namespace mpk {

struct GatherRowsTask {
  static constexpr TaskKind kKind = kTaskGatherRows;
  static constexpr const char* kName = "gather_rows";

  static const char* check(const TaskDesc& d, const Operand* ops) {
    if (d.num_operands != 3) return "gather_rows takes operands out, table, ids";
    const int64_t n = d.dims[0], width = d.dims[1], rows = d.dims[2], first = d.dims[5], count = d.dims[6];
    if (!dtype_valid(d.dims[3])) return "gather_rows has an unknown dtype code";
    if (n < 0 || width < 0 || rows < 1 || first < 0 || count < 0 || first + count > n)
      return "gather_rows needs rows >= 1 and 0 <= first <= first + count <= n";
    const uint64_t row_bytes = uint64_t(width) * dtype_size(d.dims[3]);
    if (ops[0].bytes < uint64_t(first + count) * row_bytes) return "gather_rows out is shorter than its rows";
    if (ops[1].bytes < uint64_t(rows) * row_bytes) return "gather_rows table is shorter than rows x width";
    if (ops[2].bytes < 4 * uint64_t(first + count)) return "gather_rows ids are shorter than first + count";
    return nullptr;
  }

  // Copies `count` rows of `units` units of type U; invalid rows get `fill`.
  template <typename U>
  __device__ static void copy_rows(const TaskContext& ctx, int first, int count, int64_t units,
                                   int rows, int mode, U fill) {
    U* out = ctx.operand<U>(0);
    const U* table = ctx.operand<const U>(1);
    const int32_t* ids = ctx.operand<const int32_t>(2);
    const int64_t total = int64_t(count) * units;
    for (int64_t i = ctx.thread; i < total; i += kWorkerThreads) {
      const int64_t row = i / units, unit = i % units;
      int64_t id = ids[first + row];
      if ((mode & 2) && id < 0) id += rows;
      const bool valid = id >= 0 && id < rows;
      const int64_t safe = id < 0 ? 0 : id >= rows ? rows - 1 : id;
      out[(first + row) * units + unit] = !valid && (mode & 1) ? fill : table[safe * units + unit];
    }
  }

  __device__ static void run(const TaskContext& ctx) {
    const int width = ctx.desc.dims[1], rows = ctx.desc.dims[2], dtype = ctx.desc.dims[3];
    const int mode = ctx.desc.dims[4], first = ctx.desc.dims[5], count = ctx.desc.dims[6];
    const int size = dtype_size(dtype);
    const int64_t row_bytes = int64_t(width) * size;
    const uintptr_t bases = reinterpret_cast<uintptr_t>(ctx.operand<char>(0)) |
                            reinterpret_cast<uintptr_t>(ctx.operand<const char>(1));
    // Fills apply whole rows, so wide units are fine when each row is a whole number of them
    // and the fill pattern repeats within a unit.
    const uint32_t nan_bits = dtype == kF32 ? 0x7FC00000u : dtype == kBF16 ? 0x7FC07FC0u : 0x7E007E00u;
    const uint32_t fill32 = dtype_is_float(dtype) ? nan_bits : 0u;
    if ((row_bytes % 16 | bases % 16) == 0)
      copy_rows<uint4>(ctx, first, count, row_bytes / 16, rows, mode, make_uint4(fill32, fill32, fill32, fill32));
    else if ((row_bytes % 4 | bases % 4) == 0)
      copy_rows<uint32_t>(ctx, first, count, row_bytes / 4, rows, mode, fill32);
    else if (size == 2)
      copy_rows<uint16_t>(ctx, first, count, width, rows, mode, uint16_t(fill32));
    else
      copy_rows<uint8_t>(ctx, first, count, width, rows, mode, uint8_t(0));
  }
};

}  // namespace mpk
