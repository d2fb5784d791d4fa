// MATMUL: out[b, m, n] = sum_k x[b, m, k] w[b, k, n] (+ residual[b, m, n]) (+ bias[n]) over
// the task's (b, n, k) ranges and every m, accumulated in float32.
// operands: out, descriptor, x, w[, residual][, bias][, extent]; dims: b_first, b_count,
// n_first, n_count, k_first, k_count; descriptor: see jax_mpk/task_kinds.py (batch index b
// is (b / B1, b % B1) for the x and w strides). Its extent axis (1 M, 2 N, 3 K) is bounded by
// the int32 last operand: rows or columns past it get a zero sum (and the epilogue) without
// reading x or w there; k stops there.
//
// Weights contiguous along n: each thread owns V adjacent columns (one 16-byte load per k)
// and a slice of k; the slices are summed through shared memory. Weights contiguous along
// k: a warp per column, lanes along k, summed by shuffles. Anything else: one column per thread.
#pragma once

#include "../runtime/task_context.cuh"
#include "dtype.cuh"

namespace mpk {

struct MatmulTask {
  static constexpr TaskKind kKind = kTaskMatmul;
  static constexpr const char* kName = "matmul";
  static constexpr int kDescWords = 21;
  static constexpr int kRows = 8;    // output rows a thread accumulates per pass over k ...
  static constexpr int kAccumulators = 32;  // ... unless that makes more accumulators than this
  static constexpr int kUnroll = 4;  // weight loads in flight per thread
  static constexpr int kWarps = kWorkerThreads / 32;
  static constexpr int kPartials = 2048;  // floats: k-slice partial sums of one output row

  struct Problem {
    int B1, M, x_dtype, w_dtype, out_dtype, flags;
    int live_rows, live_end;  // rows m < live_rows and columns n < live_end are summed
    int64_t xs[4], ws[4], os[3];  // x, w: b0, b1, m or k, k or n
    const char* x;
    const char* w;
    char* out;
    const char* residual;
    const char* bias;
    int n0, nn, k0, kn;
  };

  static const char* check(const TaskDesc& d, const Operand* ops) {
    if (d.num_operands < 4 || d.num_operands > 7)
      return "matmul takes operands out, descriptor, x, w[, residual][, bias][, extent]";
    if (ops[1].bytes < 4 * kDescWords) return "matmul descriptor operand is shorter than 21 int32";
    for (int i = 0; i < 6; ++i)
      if (d.dims[i] < 0) return "matmul dims (b, n, k first and count) must be >= 0";
    return nullptr;
  }

  // The output element (b, m, n), its residual and bias added, stored in out's dtype.
  __device__ static void store(const Problem& p, int b, int m, int n, float acc) {
    const int64_t at = b * p.os[0] + int64_t(m) * p.os[1] + int64_t(n) * p.os[2];
    if (p.residual) acc += load_f32(p.residual, p.out_dtype, at);
    if (p.bias) acc += load_f32(p.bias, p.out_dtype, n);
    store_f32(p.out, p.out_dtype, at, acc);
  }

  // 16 bytes of consecutive weights along n, kept raw until used.
  template <typename T>
  struct VectorWeights {
    static constexpr int kWidth = 16 / sizeof(T);
    using Raw = uint4;
    __device__ static Raw load(const char* w, int32_t, int64_t at) {
      return *reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(w) + at);
    }
    __device__ static float get(const Raw& raw, int v) { return to_float(reinterpret_cast<const T*>(&raw)[v]); }
  };

  struct ScalarWeights {
    static constexpr int kWidth = 1;
    using Raw = float;
    __device__ static Raw load(const char* w, int32_t dtype, int64_t at) { return load_f32(w, dtype, at); }
    __device__ static float get(const Raw& raw, int) { return raw; }
  };

  __device__ static float to_float(float v) { return v; }
  __device__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static float to_float(__half v) { return __half2float(v); }

  // Thread t owns V columns (group g = t % groups) and the k values k0 + s, k0 + s + slices, ...
  template <typename Weights>
  __device__ static void by_columns(const TaskContext& ctx, const Problem& p, int b, float* partials) {
    constexpr int V = Weights::kWidth;
    constexpr int rows = kRows * V <= kAccumulators ? kRows : kAccumulators / V;
    const int groups = p.nn / V;
    int round_groups = groups;  // groups a round of all threads covers
    if (groups <= 32) {
      round_groups = 1;
      while (round_groups < groups) round_groups *= 2;
    } else if (round_groups > kWorkerThreads) {
      round_groups = kWorkerThreads;
    }
    const bool shuffled = round_groups <= 32;  // lanes of one group share a warp
    const int slices = kWorkerThreads / round_groups;
    const int g = ctx.thread % round_groups, s = ctx.thread / round_groups;
    const int lane = ctx.thread % 32, warp = ctx.thread / 32;
    const int kend = p.k0 + p.kn;
    const int64_t x_b = b / p.B1 * p.xs[0] + b % p.B1 * p.xs[1], w_b = b / p.B1 * p.ws[0] + b % p.B1 * p.ws[1];
    for (int round = 0; round < groups; round += round_groups) {
      const int n = p.n0 + (round + g) * V;  // first column of this thread
      const bool active = s < slices && round + g < groups && n < p.live_end;
      // Columns past the live extent read as 0 (the loaded bytes may be stale).
      const int live = min(V, p.live_end - n);
      for (int m0 = 0; m0 < p.M; m0 += rows) {
        float acc[rows][V] = {};
        if (active) {
          int k = p.k0 + s;
          for (; k + (kUnroll - 1) * slices < kend; k += kUnroll * slices) {
            typename Weights::Raw w[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u)
              w[u] = Weights::load(p.w, p.w_dtype, w_b + int64_t(k + u * slices) * p.ws[2] + n * p.ws[3]);
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) accumulate<rows, Weights>(p, acc, w[u], live, x_b, m0, k + u * slices);
          }
          for (; k < kend; k += slices)
            accumulate<rows, Weights>(p, acc, Weights::load(p.w, p.w_dtype, w_b + int64_t(k) * p.ws[2] + n * p.ws[3]),
                                live, x_b, m0, k);
        }
        // Sum the slices of each row: within warps by shuffles where they share one, then
        // across (warps or slices) through shared memory.
        const int width = round_groups * V;  // columns of this round, as laid out in partials
        const int num_partials = shuffled ? kWarps : slices;
#pragma unroll
        for (int r = 0; r < rows; ++r) {
          if (m0 + r >= p.M) break;  // uniform: every thread sees the same M
#pragma unroll
          for (int v = 0; v < V; ++v) {
            float sum = acc[r][v];
            if (shuffled) {
              for (int offset = 16; offset >= round_groups; offset /= 2)
                sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
              if (lane < round_groups) partials[warp * width + g * V + v] = sum;
            } else if (s < slices) {
              partials[s * width + g * V + v] = sum;
            }
          }
          __syncthreads();
          const int column = round * V + ctx.thread;
          if (ctx.thread < width && column < p.nn) {
            float sum = 0.0f;
            for (int i = 0; i < num_partials; ++i) sum += partials[i * width + ctx.thread];
            store(p, b, m0 + r, p.n0 + column, sum);
          }
          __syncthreads();
        }
      }
    }
  }

  // acc[r][v] += x[b, m0 + r, k] * w[k, n + v] for the live rows and columns.
  template <int rows, typename Weights>
  __device__ static void accumulate(const Problem& p, float (&acc)[rows][Weights::kWidth],
                                    const typename Weights::Raw& w, int live, int64_t x_b, int m0, int k) {
#pragma unroll
    for (int r = 0; r < rows; ++r) {
      if (m0 + r < p.live_rows) {
        const float xv = load_f32(p.x, p.x_dtype, x_b + int64_t(m0 + r) * p.xs[2] + int64_t(k) * p.xs[3]);
#pragma unroll
        for (int v = 0; v < Weights::kWidth; ++v)
          if (v < live) acc[r][v] = fmaf(xv, Weights::get(w, v), acc[r][v]);
      }
    }
  }

  // Weights contiguous along k: warp per column, lanes along k.
  __device__ static void by_warps(const TaskContext& ctx, const Problem& p, int b) {
    const int lane = ctx.thread % 32, warp = ctx.thread / 32;
    const int kend = p.k0 + p.kn;
    const int64_t x_b = b / p.B1 * p.xs[0] + b % p.B1 * p.xs[1], w_b = b / p.B1 * p.ws[0] + b % p.B1 * p.ws[1];
    for (int c = warp; c < p.nn; c += kWarps) {
      const int n = p.n0 + c;
      for (int m0 = 0; m0 < p.M; m0 += kRows) {
        float acc[kRows] = {};
#pragma unroll kUnroll
        for (int k = p.k0 + lane; k < kend && n < p.live_end; k += 32) {
          const float wv = load_f32(p.w, p.w_dtype, w_b + k * p.ws[2] + n * p.ws[3]);
#pragma unroll
          for (int r = 0; r < kRows; ++r)
            if (m0 + r < p.live_rows)
              acc[r] = fmaf(load_f32(p.x, p.x_dtype, x_b + int64_t(m0 + r) * p.xs[2] + k * p.xs[3]), wv, acc[r]);
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          float sum = acc[r];
          for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
          if (lane == 0 && m0 + r < p.M) store(p, b, m0 + r, n, sum);
        }
      }
    }
  }

  template <typename T>
  __device__ static bool vectorizable(const Problem& p, int b) {
    constexpr int V = 16 / sizeof(T);
    const uintptr_t first = reinterpret_cast<uintptr_t>(p.w) + (b / p.B1 * p.ws[0] + b % p.B1 * p.ws[1] + p.n0) * sizeof(T);
    return p.ws[3] == 1 && p.nn % V == 0 && first % 16 == 0 && (p.ws[2] * sizeof(T)) % 16 == 0;
  }

  __device__ static void run(const TaskContext& ctx) {
    const int32_t* desc = ctx.operand<const int32_t>(1);
    Problem p;
    p.B1 = max(desc[1], 1);
    p.M = desc[2];
    p.x_dtype = desc[5];
    p.w_dtype = desc[6];
    p.out_dtype = desc[7];
    p.flags = desc[8];
    for (int i = 0; i < 4; ++i) {
      p.xs[i] = desc[9 + i];
      p.ws[i] = desc[13 + i];
    }
    for (int i = 0; i < 3; ++i) p.os[i] = desc[17 + i];
    p.out = ctx.operand<char>(0);
    p.x = ctx.operand<const char>(2);
    p.w = ctx.operand<const char>(3);
    int extra = 4;
    p.residual = p.flags & 1 ? ctx.operand<const char>(extra++) : nullptr;
    p.bias = p.flags & 2 ? ctx.operand<const char>(extra) : nullptr;
    p.n0 = ctx.desc.dims[2];
    p.nn = ctx.desc.dims[3];
    p.k0 = ctx.desc.dims[4];
    p.kn = ctx.desc.dims[5];
    p.live_rows = p.M;
    p.live_end = p.n0 + p.nn;
    const int extent_axis = desc[20];
    if (extent_axis) {
      const int bound = extent_axis == 1 ? p.M : extent_axis == 2 ? desc[3] : desc[4];
      const int limit = min(max(*ctx.operand<const int32_t>(ctx.desc.num_operands - 1), 0), bound);
      if (extent_axis == 1) p.live_rows = limit;
      if (extent_axis == 2) p.live_end = min(p.live_end, limit);
      if (extent_axis == 3) p.kn = max(0, min(p.k0 + p.kn, limit) - p.k0);
    }
    __shared__ float partials[kPartials];
    const int b_end = ctx.desc.dims[0] + ctx.desc.dims[1];
    for (int b = ctx.desc.dims[0]; b < b_end; ++b) {
      if (p.w_dtype == kBF16 && vectorizable<__nv_bfloat16>(p, b))
        by_columns<VectorWeights<__nv_bfloat16>>(ctx, p, b, partials);
      else if (p.w_dtype == kF16 && vectorizable<__half>(p, b))
        by_columns<VectorWeights<__half>>(ctx, p, b, partials);
      else if (p.w_dtype == kF32 && vectorizable<float>(p, b))
        by_columns<VectorWeights<float>>(ctx, p, b, partials);
      else if (p.ws[2] == 1 && p.ws[3] != 1)
        by_warps(ctx, p, b);
      else
        by_columns<ScalarWeights>(ctx, p, b, partials);
    }
  }
};

}  // namespace mpk
