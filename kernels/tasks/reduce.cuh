// REDUCE: out[o, i] = reduce over l of in[o, l, i] (sum, max, min, argmax, argmin), floats
// in float32 and integers in int64. operands: out, in; dims: outer, length, inner, reducer,
// in_dtype, out_dtype, first, count (output elements). Arg reductions write the first index
// of the extreme, NaN counting as the extreme, as numpy does.
#pragma once

#include "../runtime/task_context.cuh"
#include "dtype.cuh"

namespace mpk {

enum Reducer : int32_t { kReduceSum = 0, kReduceMax, kReduceMin, kReduceArgmax, kReduceArgmin, kNumReducers };

struct ReduceTask {
  static constexpr TaskKind kKind = kTaskReduce;
  static constexpr const char* kName = "reduce";
  static constexpr int kWarps = kWorkerThreads / 32;

  static const char* check(const TaskDesc& d, const Operand* ops) {
    if (d.num_operands != 2) return "reduce takes operands out, in";
    const int64_t outer = d.dims[0], length = d.dims[1], inner = d.dims[2];
    if (outer < 0 || length < 0 || inner < 0) return "reduce needs outer, length, inner >= 0";
    if (d.dims[3] < 0 || d.dims[3] >= kNumReducers) return "reduce has an unknown reducer code";
    if (!dtype_valid(d.dims[4]) || !dtype_valid(d.dims[5])) return "reduce has an unknown dtype code";
    if (d.dims[6] < 0 || d.dims[7] < 0 || int64_t(d.dims[6]) + d.dims[7] > outer * inner)
      return "reduce output range [first, first + count) lies outside outer x inner";
    if (ops[1].bytes < uint64_t(outer * length * inner) * dtype_size(d.dims[4]))
      return "reduce input operand is shorter than outer x length x inner";
    if (ops[0].bytes < uint64_t(d.dims[6] + d.dims[7]) * dtype_size(d.dims[5]))
      return "reduce output operand is shorter than its outputs";
    return nullptr;
  }

  template <typename T>
  struct State {
    T value;
    int index;
  };

  __device__ static bool is_nan(float v) { return isnan(v); }
  __device__ static bool is_nan(long long) { return false; }
  __device__ static float lowest(float) { return -INFINITY; }
  __device__ static long long lowest(long long) { return LLONG_MIN; }
  __device__ static float highest(float) { return INFINITY; }
  __device__ static long long highest(long long) { return LLONG_MAX; }

  template <typename T>
  __device__ static State<T> identity(int reducer) {
    const T v = reducer == kReduceSum ? T(0) : reducer == kReduceMax || reducer == kReduceArgmax ? lowest(T(0)) : highest(T(0));
    return {v, INT_MAX};
  }

  // Commutative and associative, so any order of combination gives numpy's answer.
  template <typename T>
  __device__ static State<T> combine(int reducer, State<T> a, State<T> b) {
    if (reducer == kReduceSum) return {a.value + b.value, 0};
    const bool a_nan = is_nan(a.value), b_nan = is_nan(b.value);
    const bool first = a.index < b.index;
    if (a_nan || b_nan) return a_nan && b_nan ? (first ? a : b) : a_nan ? a : b;
    const bool wants_max = reducer == kReduceMax || reducer == kReduceArgmax;
    if (a.value != b.value) return (a.value > b.value) == wants_max ? a : b;
    return first ? a : b;
  }

  template <typename T>
  __device__ static T load(const void* in, int32_t dtype, int64_t i) {
    if constexpr (sizeof(T) == 4) {
      return load_f32(in, dtype, i);
    } else {
      const uint32_t v = load_held(in, dtype, i);
      return dtype_is_signed(dtype) ? T(int32_t(v)) : T(v);
    }
  }

  template <typename T>
  __device__ static State<T> shuffle_combine(int reducer, State<T> s) {
    for (int offset = 16; offset > 0; offset /= 2) {
      const State<T> other{__shfl_xor_sync(0xFFFFFFFFu, s.value, offset), __shfl_xor_sync(0xFFFFFFFFu, s.index, offset)};
      s = combine(reducer, s, other);
    }
    return s;
  }

  template <typename T>
  __device__ static void store(void* out, int32_t dtype, int reducer, int64_t j, State<T> s) {
    if (reducer == kReduceArgmax || reducer == kReduceArgmin) {
      store_held(out, dtype, j, convert_held(uint32_t(s.index), kI32, dtype, true));
    } else if constexpr (sizeof(T) == 4) {
      store_f32(out, dtype, j, s.value);
    } else {
      if (dtype_is_float(dtype)) store_f32(out, dtype, j, float(s.value));
      else store_held(out, dtype, j, wrap_int(uint32_t(s.value), dtype));
    }
  }

  // Output j's partial over l = l0, l0 + step, ...
  template <typename T>
  __device__ static State<T> partial(const void* in, int32_t dtype, int reducer, int64_t j, int64_t length,
                                     int64_t inner, int64_t l0, int64_t step) {
    const int64_t base = j / inner * length * inner + j % inner;
    State<T> s = identity<T>(reducer);
    for (int64_t l = l0; l < length; l += step) s = combine(reducer, s, State<T>{load<T>(in, dtype, base + l * inner), int(l)});
    return s;
  }

  template <typename T>
  __device__ static void reduce(const TaskContext& ctx) {
    __shared__ State<T> warp_states[kWarps];
    const int64_t length = ctx.desc.dims[1], inner = ctx.desc.dims[2];
    const int reducer = ctx.desc.dims[3], in_dtype = ctx.desc.dims[4], out_dtype = ctx.desc.dims[5];
    const int64_t first = ctx.desc.dims[6], end = first + ctx.desc.dims[7];
    const void* in = ctx.operand<const char>(1);
    void* out = ctx.operand<char>(0);
    const int lane = ctx.thread % 32, warp = ctx.thread / 32;
    if (inner > 1) {  // neighbouring outputs are neighbouring in memory: a thread each
      for (int64_t j = first + ctx.thread; j < end; j += kWorkerThreads)
        store(out, out_dtype, reducer, j, partial<T>(in, in_dtype, reducer, j, length, inner, 0, 1));
    } else if (end - first >= kWarps) {  // a warp each
      for (int64_t j = first + warp; j < end; j += kWarps) {
        const State<T> s = shuffle_combine(reducer, partial<T>(in, in_dtype, reducer, j, length, 1, lane, 32));
        if (lane == 0) store(out, out_dtype, reducer, j, s);
      }
    } else {  // few long rows (argmax over a vocabulary): the whole block each
      for (int64_t j = first; j < end; ++j) {
        const State<T> s = shuffle_combine(reducer, partial<T>(in, in_dtype, reducer, j, length, 1, ctx.thread, kWorkerThreads));
        if (lane == 0) warp_states[warp] = s;
        __syncthreads();
        if (ctx.thread == 0) {
          State<T> total = warp_states[0];
          for (int w = 1; w < kWarps; ++w) total = combine(reducer, total, warp_states[w]);
          store(out, out_dtype, reducer, j, total);
        }
        __syncthreads();
      }
    }
  }

  __device__ static void run(const TaskContext& ctx) {
    if (dtype_is_float(ctx.desc.dims[4])) reduce<float>(ctx);
    else reduce<long long>(ctx);
  }
};

}  // namespace mpk
