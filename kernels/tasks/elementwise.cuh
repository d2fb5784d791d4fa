// ELEMENTWISE: each thread walks output elements and interprets the op's instruction
// program (jax_mpk/task_kinds.py) for each; registers hold the held 32-bit words of
// dtype.cuh. operands: out, program, in_0 .. in_{n-1}; dims: first, count.
#pragma once

#include "../runtime/task_context.cuh"
#include "async_copy.cuh"
#include "dtype.cuh"
#include "dynamic_box.cuh"

namespace mpk {

// Opcodes of jax_mpk.task_kinds.Opcode.
enum ElementwiseOp : int32_t {
  kOpLoad = 0, kOpConst, kOpIota, kOpConvert, kOpNeg, kOpAbs, kOpSign, kOpExp, kOpExp2, kOpLog,
  kOpLog1p, kOpExpm1, kOpTanh, kOpLogistic, kOpErf, kOpRsqrt, kOpSqrt, kOpSin, kOpCos, kOpFloor,
  kOpCeil, kOpNot, kOpIntegerPow, kOpAdd, kOpSub, kOpMul, kOpDiv, kOpRem, kOpPow, kOpMax, kOpMin,
  kOpAnd, kOpOr, kOpXor, kOpEq, kOpNe, kOpLt, kOpLe, kOpGt, kOpGe, kOpSelect, kOpClamp,
  kOpIsFinite, kOpSquare, kOpRound, kOpTan, kOpCbrt, kOpErfc, kOpShiftLeft, kOpShiftRightArithmetic,
  kOpShiftRightLogical, kNumElementwiseOps
};

struct ElementwiseTask {
  static constexpr TaskKind kKind = kTaskElementwise;
  static constexpr const char* kName = "elementwise";
  static constexpr int kMaxRank = 6;            // jax_mpk.task_kinds.MAX_ELEMENTWISE_RANK
  static constexpr int kMaxRegisters = 64;      // instructions per program
  static constexpr int kSharedProgramWords = 1024;  // longer programs are read from global memory
  static constexpr int kInstrWords = 6;             // opcode, dtype, a, b, c, imm
  static constexpr uint32_t kPrefetchedElements = 4;  // per thread, inputs into L1 up front
  static constexpr int32_t kProgramDynamicRow = 1 << 8;  // jax_mpk.task_kinds.PROGRAM_DYNAMIC_ROW

  static const char* check(const TaskDesc& d, const Operand* ops) {
    if (d.num_operands < 2) return "elementwise takes operands out, program, inputs...";
    if (d.dims[0] < 0 || d.dims[1] < 0) return "elementwise needs first >= 0 and count >= 0";
    if (ops[1].bytes < 16 || ops[1].bytes % 4) return "elementwise program operand is not an int32 program";
    return nullptr;
  }

  // The float ops of a decode step's programs (norms, RoPE, gatings, softmax) in a switch of
  // their own, which float_unary and float_binary share: the interpreter calls it directly
  // and reaches the general `evaluate` (tens of KB of code with the math functions, out of
  // line so that it stays out of the instruction cache) only for other ops.
  __device__ static bool is_common_float(int32_t op) {
    switch (op) {
      case kOpNeg: case kOpExp: case kOpLogistic: case kOpRsqrt: case kOpSqrt: case kOpSquare:
      case kOpAdd: case kOpSub: case kOpMul: case kOpDiv: case kOpMax: case kOpMin: return true;
      default: return false;
    }
  }

  __device__ static float common_float(int32_t op, float a, float b) {
    switch (op) {
      case kOpNeg: return -a;
      case kOpExp: return expf(a);
      case kOpLogistic: return logistic(a);
      case kOpRsqrt: return 1.0f / sqrtf(a);
      case kOpSqrt: return sqrtf(a);
      case kOpSquare: return a * a;
      case kOpAdd: return a + b;
      case kOpSub: return a - b;
      case kOpMul: return a * b;
      case kOpDiv: return a / b;
      case kOpMax: return isnan(a) || isnan(b) ? a + b : fmaxf(a, b);  // numpy propagates NaN
      default: return isnan(a) || isnan(b) ? a + b : fminf(a, b);  // kOpMin
    }
  }

  // a op b for float32 values: ADD, SUB, MUL, DIV, REM, POW, MAX, MIN.
  __device__ static float float_binary(int32_t op, float a, float b) {
    switch (op) {
      case kOpRem: return fmodf(a, b);
      case kOpPow: return powf(a, b);
      default: return common_float(op, a, b);
    }
  }

  __device__ static float float_unary(int32_t op, float x) {
    if (is_common_float(op)) return common_float(op, x, 0.0f);
    switch (op) {
      case kOpAbs: return fabsf(x);
      case kOpSign: return isnan(x) ? x : float((x > 0.0f) - (x < 0.0f));
      case kOpExp2: return exp2f(x);
      case kOpLog: return logf(x);
      case kOpLog1p: return log1pf(x);
      case kOpExpm1: return expm1f(x);
      case kOpTanh: return tanhf(x);
      case kOpErf: return erff(x);
      case kOpErfc: return erfcf(x);
      case kOpSin: return sinf(x);
      case kOpCos: return cosf(x);
      case kOpTan: return tanf(x);
      case kOpCbrt: return cbrtf(x);
      case kOpFloor: return floorf(x);
      case kOpCeil: return ceilf(x);
      case kOpRound: return copysignf(floorf(fabsf(x) + 0.5f), x);
      default: return 0.0f;
    }
  }

  // Integer a op b in 64 bits; the caller wraps the result into the instruction's dtype.
  __device__ static int64_t int_binary(int32_t op, int64_t a, int64_t b, bool is_bool) {
    switch (op) {
      case kOpAdd: return is_bool ? (a | b) : a + b;
      case kOpSub: return a - b;
      case kOpMul: return a * b;
      // As XLA: by zero, a quotient of all ones and a remainder of a; by -1 no overflow trap
      // (the quotient wraps, as INT_MIN / -1 does there).
      case kOpDiv: return b == 0 ? -1 : b == -1 ? int64_t(0ull - uint64_t(a)) : a / b;
      case kOpRem: return b == 0 ? a : b == -1 ? 0 : a % b;
      case kOpPow: {
        if (b < 0) return a == 1 ? 1 : a == -1 ? (b & 1 ? -1 : 1) : 0;
        int64_t r = 1;
        for (; b; b >>= 1, a *= a)
          if (b & 1) r *= a;
        return r;
      }
      case kOpMax: return a > b ? a : b;
      case kOpMin: return a < b ? a : b;
      case kOpAnd: return a & b;
      case kOpOr: return a | b;
      case kOpXor: return a ^ b;
      default: return 0;
    }
  }

  __device__ static bool compare(int32_t op, bool lt, bool eq, bool gt) {
    switch (op) {
      case kOpEq: return eq;
      case kOpNe: return !eq;
      case kOpLt: return lt;
      case kOpLe: return lt || eq;
      case kOpGt: return gt;
      default: return gt || eq;
    }
  }

  __device__ static int64_t as_int64(uint32_t v, int32_t d) {
    return dtype_is_signed(d) ? int64_t(int32_t(v)) : int64_t(v);
  }

  // One instruction: its result as a held value of dtype `dt`. `ad` is the dtype of
  // register a (comparisons, IS_FINITE and CONVERT compute in their operand's dtype).
  __device__ __noinline__ static uint32_t evaluate(int32_t op, int32_t dt, int32_t ad, int32_t imm, uint32_t a,
                                                   uint32_t b, uint32_t c) {
    const bool is_float = dtype_is_float(dt);
    switch (op) {
      case kOpConvert:
        // XLA converts a float to an integer toward zero, saturated at the integer's range,
        // NaN to 0: PTX's cvt.rzi does so for 32 bits, the 8-bit range is clamped after it.
        // convert_held (inlined everywhere) wraps as integer arithmetic results must.
        if (dtype_is_float(ad) && dt == kU32) return __float2uint_rz(bits_f(a));
        if (dtype_is_float(ad) && dt != kBool && !dtype_is_float(dt)) {
          const int i = __float2int_rz(bits_f(a));
          return uint32_t(dt == kI8 ? min(max(i, -128), 127) : dt == kU8 ? min(max(i, 0), 255) : i);
        }
        return convert_held(a, ad, dt, true);
      case kOpSelect: return a != 0 ? c : b;
      case kOpClamp: {
        const uint32_t low = is_float ? f_bits(float_binary(kOpMax, bits_f(b), bits_f(a)))
                                      : wrap_int(uint32_t(int_binary(kOpMax, as_int64(b, dt), as_int64(a, dt), false)), dt);
        return is_float ? f_bits(float_binary(kOpMin, bits_f(low), bits_f(c)))
                        : wrap_int(uint32_t(int_binary(kOpMin, as_int64(low, dt), as_int64(c, dt), false)), dt);
      }
      case kOpIsFinite: return dtype_is_float(ad) ? isfinite(bits_f(a)) : 1u;
      case kOpNot: return dt == kBool ? uint32_t(a == 0) : wrap_int(~a, dt);
      case kOpIntegerPow: {
        if (is_float) {
          float base = bits_f(a), r = 1.0f;
          for (int e = imm < 0 ? -imm : imm; e; e >>= 1, base *= base)
            if (e & 1) r *= base;
          return f_bits(imm < 0 ? 1.0f / r : r);
        }
        if (imm < 0) {  // numpy: 1 / power, truncated back to the integer dtype
          const int64_t p = int_binary(kOpPow, as_int64(a, dt), -int64_t(imm), false);
          return wrap_int(uint32_t(p == 1 ? 1 : p == -1 ? -1 : 0), dt);
        }
        return wrap_int(uint32_t(int_binary(kOpPow, as_int64(a, dt), imm, false)), dt);
      }
      case kOpEq: case kOpNe: case kOpLt: case kOpLe: case kOpGt: case kOpGe: {
        bool r;
        if (dtype_is_float(ad)) {
          const float x = bits_f(a), y = bits_f(b);
          r = compare(op, x < y, x == y, x > y);
        } else {
          const int64_t x = as_int64(a, ad), y = as_int64(b, ad);
          r = compare(op, x < y, x == y, x > y);
        }
        return convert_held(r, kBool, dt, false);
      }
      case kOpShiftLeft: case kOpShiftRightArithmetic: case kOpShiftRightLogical: {
        // As XLA: a's bits in its dtype's width; by the width or more (a negative amount
        // among them), 0, or the sign for the arithmetic shift (an unsigned top bit too).
        const int bits = 8 * dtype_size(dt);
        const uint32_t word = bits == 32 ? a : a & ((1u << bits) - 1);
        const int32_t sign_extended = int32_t(word << (32 - bits)) >> (32 - bits);
        const int64_t n = as_int64(b, dt);
        const bool past = n < 0 || n >= bits;
        const uint32_t r = op == kOpShiftLeft            ? (past ? 0u : word << n)
                           : op == kOpShiftRightLogical ? (past ? 0u : word >> n)
                           : uint32_t(past ? (sign_extended < 0 ? -1 : 0) : sign_extended >> n);
        return wrap_int(r, dt);
      }
      case kOpAnd: case kOpOr: case kOpXor:
        return dt == kBool ? uint32_t(int_binary(op, a != 0, b != 0, true) != 0)
                           : wrap_int(uint32_t(int_binary(op, as_int64(a, dt), as_int64(b, dt), false)), dt);
      case kOpAdd: case kOpSub: case kOpMul: case kOpDiv: case kOpRem: case kOpPow:
      case kOpMax: case kOpMin:
        if (is_float) return f_bits(float_binary(op, bits_f(a), bits_f(b)));
        return wrap_int(uint32_t(int_binary(op, as_int64(a, dt), as_int64(b, dt), dt == kBool)), dt);
      default:  // unary
        if (is_float && op == kOpRound)  // imm 0: halves away from zero; 1: halves to even
          return f_bits(imm ? rintf(bits_f(a)) : float_unary(op, bits_f(a)));
        if (is_float) return f_bits(float_unary(op, bits_f(a)));
        if (op == kOpNeg) return wrap_int(uint32_t(-as_int64(a, dt)), dt);
        if (op == kOpAbs) { const int64_t x = as_int64(a, dt); return wrap_int(uint32_t(x < 0 ? -x : x), dt); }
        if (op == kOpSign) { const int64_t x = as_int64(a, dt); return wrap_int(uint32_t((x > 0) - (x < 0)), dt); }
        if (op == kOpSquare) { const int64_t x = as_int64(a, dt); return wrap_int(uint32_t(x * x), dt); }
        // A float function of an integer: numpy computes in float and casts back.
        return convert_held(f_bits(float_unary(op, bits_f(convert_held(a, dt, kF32, false)))), kF32, dt, false);
    }
  }

  // Elements the output base moves for a dynamic row: words [input j, elements per row, rows,
  // rows written, wrap], the row clamped as dynamic_update_slice clamps its start.
  __device__ static int64_t row_offset(const TaskContext& ctx, const int32_t* words) {
    return DynamicBox::clamped_start(*ctx.operand<const int32_t>(2 + words[0]), words[2], words[3], words[4]) *
           words[1];
  }

  // The row-major index of element e of the output.
  __device__ static void element_index(uint32_t e, int rank, const int32_t* out_shape, int32_t* index) {
    for (int d = rank - 1; d >= 0; --d) {
      index[d] = int32_t(e % uint32_t(out_shape[d]));
      e /= uint32_t(out_shape[d]);
    }
  }

  __device__ static void run(const TaskContext& ctx) {
    __shared__ int32_t shared_program[kSharedProgramWords];
    const int32_t* global_program = ctx.operand<const int32_t>(1);
    const uint64_t words = ctx.operand_bytes(1) / 4;
    const int32_t* prog = global_program;
    if (words <= kSharedProgramWords) {
      for (uint64_t i = ctx.thread; i < words; i += kWorkerThreads) shared_program[i] = global_program[i];
      __syncthreads();  // every thread: `words` is the same for all
      prog = shared_program;
    }
    ctx.mark(0);
    // jax_mpk.task_kinds.PROGRAM_DYNAMIC_ROW: five words after the header place the output's row.
    const bool dynamic_row = prog[0] & kProgramDynamicRow;
    const int rank = prog[0] & (kProgramDynamicRow - 1), num_inputs = prog[1], num_instrs = prog[2],
              out_dtype = prog[3];
    if (rank > kMaxRank || num_instrs > kMaxRegisters || num_instrs < 1) {
      if (ctx.thread == 0)
        report_error(ctx.error(), kBadTaskKind, ctx.task, 0xFFFFFFFFu, ctx.iteration, kKind,
                     num_instrs > kMaxRegisters ? num_instrs : rank);
      return;
    }
    const int32_t* out_shape = prog + (dynamic_row ? 9 : 4);
    const int32_t* out_strides = out_shape + rank;
    const int32_t* inputs = out_shape + 2 * rank;   // per input: dtype, strides[rank]
    const int32_t* instrs = inputs + num_inputs * (1 + rank);
    char* out = ctx.operand<char>(0);
    if (dynamic_row) out += row_offset(ctx, prog + 4) * dtype_size(out_dtype);
    const uint32_t first = uint32_t(ctx.desc.dims[0]), end = first + uint32_t(ctx.desc.dims[1]);

    // The interpreter reaches each LOAD after the instructions before it, so a thread's loads
    // would go to memory one after another (the inputs were just written: L2 round trips).
    // The inputs of a thread's first kPrefetchedElements are asked into L1 first, all in
    // flight together (a decode step's tasks have one or two elements a thread; more would
    // only evict one another in large tasks).
    for (uint32_t e = first + ctx.thread, k = 0; e < end && k < kPrefetchedElements; e += kWorkerThreads, ++k) {
      int32_t index[kMaxRank];
      element_index(e, rank, out_shape, index);
      for (int j = 0; j < num_inputs; ++j) {
        const int32_t* in = inputs + j * (1 + rank);
        int64_t offset = 0;
        for (int d = 0; d < rank; ++d) offset += int64_t(index[d]) * in[1 + d];
        prefetch_l1(ctx.operand<const char>(2 + j) + offset * dtype_size(in[0]));
      }
    }
    ctx.mark(1);
    uint32_t regs[kMaxRegisters];
    for (uint32_t e = first + ctx.thread; e < end; e += kWorkerThreads) {
      int32_t index[kMaxRank];
      element_index(e, rank, out_shape, index);
      for (int i = 0; i < num_instrs; ++i) {
        const int32_t* ins = instrs + i * kInstrWords;
        const int32_t op = ins[0], dt = ins[1], imm = ins[5];
        uint32_t v;
        if (op == kOpLoad) {
          const int32_t* in = inputs + imm * (1 + rank);
          int64_t offset = 0;
          for (int d = 0; d < rank; ++d) offset += int64_t(index[d]) * in[1 + d];
          v = convert_held(load_held(ctx.operand<const char>(2 + imm), in[0], offset), in[0], dt, false);
        } else if (op == kOpConst) {
          v = convert_held(uint32_t(imm), dtype_is_float(dt) ? kF32 : kI32, dt, true);
        } else if (op == kOpIota) {
          v = convert_held(uint32_t(index[imm]), kI32, dt, false);
        } else {
          const int32_t a = ins[2], ad = instrs[a * kInstrWords + 1];
          if (dtype_is_float(dt) && is_common_float(op))
            v = f_bits(common_float(op, bits_f(regs[a]), bits_f(regs[ins[3]])));
          else if (op == kOpConvert && dtype_is_float(dt) && dtype_is_float(ad))
            v = f_bits(round_float(bits_f(regs[a]), dt));
          else
            v = evaluate(op, dt, ad, imm, regs[a], regs[ins[3]], regs[ins[4]]);
        }
        regs[i] = v;
      }
      int64_t offset = 0;
      for (int d = 0; d < rank; ++d) offset += int64_t(index[d]) * out_strides[d];
      const int32_t last_dtype = instrs[(num_instrs - 1) * kInstrWords + 1];
      store_held(out, out_dtype, offset, convert_held(regs[num_instrs - 1], last_dtype, out_dtype, true));
      ctx.mark(2);
    }
  }
};

}  // namespace mpk
