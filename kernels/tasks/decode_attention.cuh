// DECODE_ATTENTION: softmax(round(q . k) * scale) . v over the live cache positions t <
// extent, for the G query rows of each batch index b (a head group: GQA, MHA at G = 1, MQA).
// operands: out, descriptor, q, k, v, extent[, partials[, counters]]; dims: b_first, b_count,
// t_first, t_count, mode, split (jax_mpk/task_kinds.py). WHOLE runs every position and writes
// out; PARTIAL runs its split's share of the live positions (ceil(extent / splits) each, in
// split order: at most ceil(T / splits), which the compiler sized the arena for) and writes
// the split's row max m, sum l of exp(s - m) and acc = sum exp(s - m) v to its float32
// record; MERGE rescales the records of each b by exp(m - max m) and writes out. With task
// counters, the last split of each b to finish merges it, one hop earlier than a MERGE task.
// Float32 throughout; scores round to their dtype first, as the scores matmul they replace
// stores them.
//
// With the rope operands (new_k, new_v, cos, sin, pos after the others; descriptor words
// from kProblemWords on, zeros without them: passes/rope_attention.py), q is read
// unrotated and rotated as it is staged, and the task whose positions hold the appended row
// (the first split, or the whole task, where no task's do) first writes row pos of b's k
// (rotated) and v, then reads the cache like the others. With the norms' operands too
// (q_scale and k_scale after pos, and kNormWords words after the staged ones, read where
// used), each head row of q and of k is normed before its rotation, as Qwen3's qk-norm: x
// becomes round((x * inv) * (c + scale[d])) with inv = 1 / sqrt(sums / n + eps), sums the
// row's sum of squares, which the task takes itself.
//
// In the task arena: q rows as float32 [G][D], then the split's scores [G][positions] (and,
// whole, the output [G][Dv]); its last kReduceFloats hold the value pass's per-warp sums.
// Rows of k and v that are contiguous and 16-byte aligned (bf16, f16, f32) are read 16 bytes
// a load: a group of C lanes per row, each thread's loads of a round issued together. The
// dot products are summed across a group by shuffles; the value sums (four query rows a
// pass) across a warp by shuffles, then across warps in shared memory. Otherwise a thread
// per position computes its dot products, a thread per (g, d) accumulates v. A warp per
// query row takes its max and sum.
#pragma once

#include "../runtime/task_context.cuh"
#include "async_copy.cuh"
#include "dtype.cuh"

namespace mpk {

struct DecodeAttentionTask {
  static constexpr TaskKind kKind = kTaskDecodeAttention;
  static constexpr const char* kName = "decode_attention";
  static constexpr int kProblemWords = 28;  // then the rope words: kDescWords in all, staged
  static constexpr int kDescWords = 40;
  static constexpr int kWarps = kWorkerThreads / 32;
  static constexpr int kMaxHeadDim = 256;  // jax_mpk.passes.decode_attention.MAX_HEAD_DIM
  static constexpr int kMaxRows = 64;      // query rows a task holds (G)
  static constexpr int kRowsPerPass = 4;   // query rows a thread's pass over a key row serves
  static constexpr int kLoads = 4;         // 16-byte loads a thread issues before it uses them
  static constexpr int kReduceFloats = kWarps * kRowsPerPass * kMaxHeadDim;
  static constexpr int kRopeOperands = 5;  // new_k, new_v, cos, sin, pos
  static constexpr int kNormOperands = 2;  // q_scale, k_scale
  enum Mode : int32_t { kWhole = 0, kPartial = 1, kMerge = 2 };
  // The rope words after kProblemWords (jax_mpk/tiling.py): pos's wrap, q's rotated dtype, the
  // dtypes of new_k, new_v and the tables, the tables' stride, new_k's and new_v's strides
  // of (b // B1, b % B1, d). Read where used: a struct of them live across the task's
  // loops took its registers from 173 to 251 and made the workers that call it spill.
  enum RopeWord : int {
    kRopeWrap, kRopeQDtype, kRopeKDtype, kRopeVDtype, kRopeTableDtype, kRopeTableStride, kRopeKStrides,
    kRopeVStrides = kRopeKStrides + 3, kRopeWords = kRopeVStrides + 3
  };
  // The norm words after kDescWords: the normed dtype, the scales' dtype, n, eps and c
  // (float32 bits), the scales' strides along d.
  enum NormWord : int { kNormDtype, kNormScaleDtype, kNormN, kNormEps, kNormC, kNormQScale, kNormKScale, kNormWords };

  struct Problem {
    int B1, G, T, D, Dv, q_dtype, k_dtype, v_dtype, out_dtype, scores_dtype, splits;
    int64_t qs[4], ks[4], vs[4], os[3];
    float scale;
  };

  // The operands after the base ones: none, the rope's, or the rope's and the norms'.
  __host__ __device__ static int rope_operands(const TaskDesc& d) { return d.dims[6]; }

  __host__ __device__ static int base_operands(const TaskDesc& d) { return d.num_operands - rope_operands(d); }

  static const char* check(const TaskDesc& d, const Operand* ops) {
    const int base = base_operands(d);
    if (base < 6 || base > 8)
      return "decode_attention takes operands out, descriptor, q, k, v, extent[, partials[, counters]]"
             "[, new_k, new_v, cos, sin, pos[, q_scale, k_scale]]";
    const int extra = rope_operands(d);
    if (extra != 0 && extra != kRopeOperands && extra != kRopeOperands + kNormOperands)
      return "decode_attention dims[6] (the operands after the others) is not 0, 5 or 7";
    static_assert(kProblemWords + kRopeWords == kDescWords && kDescWords + kNormWords == 47, "the descriptor's words");
    if (ops[1].bytes < 4 * kDescWords) return "decode_attention descriptor is shorter than 40 int32";
    if (extra > kRopeOperands && ops[1].bytes < 4 * (kDescWords + kNormWords))
      return "decode_attention descriptor with the norms' operands is shorter than 47 int32";
    if (d.dims[0] < 0 || d.dims[1] < 0 || d.dims[2] < 0 || d.dims[3] < 0 || d.dims[5] < 0)
      return "decode_attention dims (b and t first and count, split) must be >= 0";
    if (d.dims[4] < kWhole || d.dims[4] > kMerge) return "decode_attention mode is not whole, partial or merge";
    if (d.dims[4] != kWhole && base < 7) return "decode_attention partial and merge need partials";
    if (d.dims[4] == kMerge && base != d.num_operands) return "decode_attention merges take no rope operands";
    if (base == 8 && d.dims[4] != kPartial) return "decode_attention takes task counters in partial mode only";
    if (base == 8 && ops[7].bytes < 8ull * (uint64_t(d.dims[0]) + d.dims[1]))
      return "decode_attention's task counters do not cover its batch indices";
    return nullptr;
  }

  __device__ static Problem problem_of(const TaskContext& ctx) {
    const int32_t* w = ctx.descriptor();
    Problem p;
    p.B1 = max(w[1], 1);
    p.G = w[2];
    p.T = w[3];
    p.D = w[4];
    p.Dv = w[5];
    p.q_dtype = w[6];
    p.k_dtype = w[7];
    p.v_dtype = w[8];
    p.out_dtype = w[9];
    p.scores_dtype = w[10];
    for (int i = 0; i < 4; ++i) {
      p.qs[i] = w[11 + i];
      p.ks[i] = w[15 + i];
      p.vs[i] = w[19 + i];
    }
    for (int i = 0; i < 3; ++i) p.os[i] = w[23 + i];
    p.scale = __int_as_float(w[26]);
    p.splits = w[27];
    return p;
  }

  __device__ static int partner(int d, int D) { return d < D / 2 ? d + D / 2 : d - D / 2; }

  __device__ static float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
    return v;
  }

  __device__ static const int32_t* rope_words(const TaskContext& ctx) {
    return ctx.descriptor() + kProblemWords;
  }

  // Rope operand i: new_k, new_v, cos, sin, pos, then q_scale, k_scale.
  template <typename T>
  __device__ static T* rope_operand(const TaskContext& ctx, int i) {
    return ctx.operand<T>(ctx.desc.num_operands - rope_operands(ctx.desc) + i);
  }

  __device__ static bool normed(const TaskContext& ctx) { return rope_operands(ctx.desc) > kRopeOperands; }

  // Sum over d < D of the squares of elements at + d * stride, in every lane of the warp.
  __device__ static float sum_of_squares(const char* base, int dtype, int64_t at, int64_t stride, int D, int lane) {
    float sum = 0.0f;
    for (int d = lane; d < D; d += 32) {
      const float x = load_f32(base, dtype, at + d * stride);
      sum = fmaf(x, x, sum);
    }
    return warp_sum(sum);
  }

  // Elements d and partner(d) of a head row of q or of k (is_k), whose squares sum to sums,
  // normed as the ops before the rotation norm them, each step but the sum rounded as they
  // round it (no fused multiply-add; 1 / sqrt as INTEGER_POW -1 of SQRT and RSQRT compute it).
  __device__ static float2 normed_pair(const TaskContext& ctx, bool is_k, float sums, int d, int D, float x, float y) {
    const int32_t* nw = ctx.operand<const int32_t>(1) + kDescWords;
    const float mean = __fdiv_rn(sums, __int_as_float(nw[kNormN]));
    const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean, __int_as_float(nw[kNormEps]))));
    const char* scale = rope_operand<const char>(ctx, is_k ? 6 : 5);
    const int64_t stride = nw[is_k ? kNormKScale : kNormQScale];
    const float c = __int_as_float(nw[kNormC]);
    const float gx = __fadd_rn(c, load_f32(scale, nw[kNormScaleDtype], d * stride));
    const float gy = __fadd_rn(c, load_f32(scale, nw[kNormScaleDtype], partner(d, D) * stride));
    return make_float2(round_float(__fmul_rn(__fmul_rn(x, inv), gx), nw[kNormDtype]),
                       round_float(__fmul_rn(__fmul_rn(y, inv), gy), nw[kNormDtype]));
  }

  // Element d of a head rotated with its partner y (d +- D / 2) by the tables at d mod D / 2:
  // the low half x c - y s, the high half x c + y s, each product and sum rounded as the
  // elementwise ops they replace round them (no fused multiply-add).
  __device__ static float rotated(const int32_t* w, const char* cos, const char* sin, int d, int D, float x,
                                 float y) {
    const int half = D / 2, j = d < half ? d : d - half;
    const int64_t at = int64_t(j) * w[kRopeTableStride];
    const float c = load_f32(cos, w[kRopeTableDtype], at);
    const float s = load_f32(sin, w[kRopeTableDtype], at);
    return d < half ? __fsub_rn(__fmul_rn(x, c), __fmul_rn(y, s)) : __fadd_rn(__fmul_rn(x, c), __fmul_rn(y, s));
  }

  // Row pos of b's k (rotated) and v, written by the task whose positions [t0, t1) hold it,
  // or by the leading task where no task's do (pos at or past the extent); the block
  // barrier then lets every thread read it from the cache.
  __device__ static void append_row(const TaskContext& ctx, const Problem& p, int b, int t0, int t1, bool leads,
                                    int extent) {
    const int32_t* w = rope_words(ctx);
    int row = *rope_operand<const int32_t>(ctx, 4);
    if (w[kRopeWrap] && row < 0) row += p.T;  // as the cache append clamps its start
    row = min(max(row, 0), p.T - 1);
    if (!(row >= t0 && row < t1) && !(leads && row >= extent)) return;
    const char* new_k = rope_operand<const char>(ctx, 0);
    const char* new_v = rope_operand<const char>(ctx, 1);
    const char* cos = rope_operand<const char>(ctx, 2);
    const char* sin = rope_operand<const char>(ctx, 3);
    const int32_t* ks = w + kRopeKStrides;
    const int32_t* vs = w + kRopeVStrides;
    const int64_t outer = b / p.B1, inner = b % p.B1;
    const int64_t k_at = outer * ks[0] + inner * ks[1], v_at = outer * vs[0] + inner * vs[1];
    const float k_sums = normed(ctx) ? sum_of_squares(new_k, w[kRopeKDtype], k_at, ks[2], p.D, ctx.thread % 32) : 0.0f;
    for (int d = ctx.thread; d < max(p.D, p.Dv); d += kWorkerThreads) {
      if (d < p.D) {
        float x = load_f32(new_k, w[kRopeKDtype], k_at + int64_t(d) * ks[2]);
        float y = load_f32(new_k, w[kRopeKDtype], k_at + int64_t(partner(d, p.D)) * ks[2]);
        if (normed(ctx)) {
          const float2 n = normed_pair(ctx, true, k_sums, d, p.D, x, y);
          x = n.x;
          y = n.y;
        }
        store_f32(ctx.operand<char>(3), p.k_dtype, outer * p.ks[0] + inner * p.ks[1] + row * p.ks[2] + d * p.ks[3],
                  rotated(w, cos, sin, d, p.D, x, y));
      }
      if (d < p.Dv)
        store_f32(ctx.operand<char>(4), p.v_dtype, outer * p.vs[0] + inner * p.vs[1] + row * p.vs[2] + d * p.vs[3],
                  load_f32(new_v, w[kRopeVDtype], v_at + int64_t(d) * vs[2]));
    }
    __syncthreads();
  }

  __device__ static float warp_max(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
    return v;
  }

  __device__ static float to_float(float v) { return v; }
  __device__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static float to_float(__half v) { return __half2float(v); }

  // Lanes per row when rows of `length` elements of T at `row` (stride `stride`, unit
  // element stride) can be read 16 bytes a lane by a power-of-two group of lanes; else 0.
  template <typename T>
  __device__ static int vector_lanes(const T* row, int length, int64_t stride, int64_t unit) {
    constexpr int V = 16 / sizeof(T);
    const int lanes = length / V;
    if (unit != 1 || length % V || stride % V || reinterpret_cast<uintptr_t>(row) % 16) return 0;
    return lanes >= 1 && lanes <= 32 && (lanes & (lanes - 1)) == 0 ? lanes : 0;
  }

  // s[g][t] = round(q[g] . k[t0 + t]) * scale; false when k's rows are not vector rows.
  template <typename T>
  __device__ static bool scores_by_vectors(const TaskContext& ctx, const Problem& p, const char* kp, int64_t k_b,
                                           int t0, int n, const float* q, float* s) {
    constexpr int V = 16 / sizeof(T);
    const T* k = reinterpret_cast<const T*>(kp) + k_b + int64_t(t0) * p.ks[2];
    const int C = vector_lanes(k, p.D, p.ks[2], p.ks[3]);
    if (C == 0) return false;
    const int c = ctx.thread % C, slot = ctx.thread / C, slots = kWorkerThreads / C;
    for (int base = 0; base < n; base += kLoads * slots) {  // uniform bounds: every lane shuffles
      uint4 raw[kLoads];
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        const int t = base + u * slots + slot;
        if (t < n) raw[u] = *reinterpret_cast<const uint4*>(k + int64_t(t) * p.ks[2] + c * V);
      }
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        if (base + u * slots >= n) break;  // uniform: no lane has a row left
        const int t = base + u * slots + slot;
        const T* e = reinterpret_cast<const T*>(&raw[u]);
        for (int g = 0; g < p.G; ++g) {
          const float* qg = q + g * p.D + c * V;
          float dot = 0.0f;
#pragma unroll
          for (int v = 0; v < V; v += 4) {
            const float4 q4 = load_shared_f32x4(qg + v);
            dot = fmaf(q4.x, to_float(e[v]), dot);
            dot = fmaf(q4.y, to_float(e[v + 1]), dot);
            dot = fmaf(q4.z, to_float(e[v + 2]), dot);
            dot = fmaf(q4.w, to_float(e[v + 3]), dot);
          }
          for (int offset = C / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xFFFFFFFFu, dot, offset);
          if (c == 0 && t < n) s[g * n + t] = round_float(dot, p.scores_dtype) * p.scale;
        }
      }
    }
    return true;
  }

  __device__ static void scores_by_scalars(const TaskContext& ctx, const Problem& p, const char* kp, int64_t k_b,
                                           int t0, int n, const float* q, float* s) {
    for (int t = ctx.thread; t < n; t += kWorkerThreads) {
      const int64_t k_t = k_b + int64_t(t0 + t) * p.ks[2];
      for (int g0 = 0; g0 < p.G; g0 += kRowsPerPass) {
        float dot[kRowsPerPass] = {};
#pragma unroll 4
        for (int d = 0; d < p.D; ++d) {
          const float k = load_f32(kp, p.k_dtype, k_t + d * p.ks[3]);
#pragma unroll
          for (int j = 0; j < kRowsPerPass; ++j)
            if (g0 + j < p.G) dot[j] = fmaf(q[(g0 + j) * p.D + d], k, dot[j]);  // q: a broadcast
        }
#pragma unroll
        for (int j = 0; j < kRowsPerPass; ++j)
          if (g0 + j < p.G) s[(g0 + j) * n + t] = round_float(dot[j], p.scores_dtype) * p.scale;
      }
    }
  }

  // acc[g][d] = sum over t of e[g][t] v[t0 + t][d]; false when v's rows are not vector rows.
  template <typename T>
  __device__ static bool values_by_vectors(const TaskContext& ctx, const Problem& p, const char* vp, int64_t v_b,
                                           int t0, int n, const float* e, float* acc_out) {
    constexpr int V = 16 / sizeof(T);
    const T* v = reinterpret_cast<const T*>(vp) + v_b + int64_t(t0) * p.vs[2];
    const int C = vector_lanes(v, p.Dv, p.vs[2], p.vs[3]);
    if (C == 0) return false;
    float* sums = reinterpret_cast<float*>(ctx.shared + kTaskSharedBytes) - kReduceFloats;  // [warp][j][Dv]
    const int c = ctx.thread % C, slot = ctx.thread / C, slots = kWorkerThreads / C;
    const int lane = ctx.thread % 32, warp = ctx.thread / 32;
    for (int g0 = 0; g0 < p.G; g0 += kRowsPerPass) {
      const int rows = min(kRowsPerPass, p.G - g0);
      float acc[kRowsPerPass][V] = {};
      for (int base = slot; base < n; base += kLoads * slots) {
        uint4 raw[kLoads];
#pragma unroll
        for (int u = 0; u < kLoads; ++u) {
          const int t = base + u * slots;
          if (t < n) raw[u] = *reinterpret_cast<const uint4*>(v + int64_t(t) * p.vs[2] + c * V);
        }
#pragma unroll
        for (int u = 0; u < kLoads; ++u) {
          const int t = base + u * slots;
          if (t >= n) break;
          const T* x = reinterpret_cast<const T*>(&raw[u]);
#pragma unroll
          for (int j = 0; j < kRowsPerPass; ++j) {
            if (j >= rows) break;
            const float w = load_shared_f32(e + (g0 + j) * n + t);
#pragma unroll
            for (int i = 0; i < V; ++i) acc[j][i] = fmaf(w, to_float(x[i]), acc[j][i]);
          }
        }
      }
      // Lanes lane ^ C, lane ^ 2C, ... hold the same columns: sum them, then the warps.
#pragma unroll
      for (int j = 0; j < kRowsPerPass; ++j)
#pragma unroll
        for (int i = 0; i < V; ++i)
          for (int offset = C; offset < 32; offset *= 2) acc[j][i] += __shfl_xor_sync(0xFFFFFFFFu, acc[j][i], offset);
      if (lane < C)
#pragma unroll
        for (int j = 0; j < kRowsPerPass; ++j)
#pragma unroll
          for (int i = 0; i < V; ++i) sums[(warp * kRowsPerPass + j) * p.Dv + c * V + i] = acc[j][i];
      __syncthreads();
      for (int i = ctx.thread; i < rows * p.Dv; i += kWorkerThreads) {
        float total = 0.0f;
        for (int w = 0; w < kWarps; ++w) total += sums[w * kRowsPerPass * p.Dv + i];
        acc_out[g0 * p.Dv + i] = total;
      }
      __syncthreads();
    }
    return true;
  }

  __device__ static void values_by_scalars(const TaskContext& ctx, const Problem& p, const char* vp, int64_t v_b,
                                           int t0, int n, const float* s, float* acc_out) {
    for (int i = ctx.thread; i < p.G * p.Dv; i += kWorkerThreads) {
      const int g = i / p.Dv, d = i % p.Dv;
      const float* e = s + g * n;
      const int64_t v_d = v_b + d * p.vs[3];
      float acc = 0.0f;
#pragma unroll 4
      for (int t = 0; t < n; ++t) acc = fmaf(e[t], load_f32(vp, p.v_dtype, v_d + int64_t(t0 + t) * p.vs[2]), acc);
      acc_out[i] = acc;
    }
  }

  // Positions [t0, t1) of batch index b: m[g], l[g] and acc[g][d] (the last kept per thread:
  // thread i owns (g, d) = (i / Dv, i % Dv), i += kWorkerThreads).
  __device__ static void attend(const TaskContext& ctx, const Problem& p, bool rotates, int b, int t0, int t1,
                                float* m_out, float* l_out, float* acc_out) {
    float* q = reinterpret_cast<float*>(ctx.shared);  // [G][D]
    float* s = q + p.G * p.D;                         // [G][t1 - t0]
    __shared__ float row_max[kMaxRows], row_sum[kMaxRows];
    const int n = t1 - t0, lane = ctx.thread % 32, warp = ctx.thread / 32;
    const char* qp = ctx.operand<const char>(2);
    const char* kp = ctx.operand<const char>(3);
    const char* vp = ctx.operand<const char>(4);
    const int64_t outer = b / p.B1, inner = b % p.B1;
    const int64_t q_b = outer * p.qs[0] + inner * p.qs[1], k_b = outer * p.ks[0] + inner * p.ks[1];
    const int64_t v_b = outer * p.vs[0] + inner * p.vs[1];
    const int32_t* w = rotates ? rope_words(ctx) : nullptr;
    const char* cos = rotates ? rope_operand<const char>(ctx, 2) : nullptr;
    const char* sin = rotates ? rope_operand<const char>(ctx, 3) : nullptr;
    if (rotates && normed(ctx)) {  // each q row's sum of squares (row_sum: free until the softmax)
      for (int g = warp; g < p.G; g += kWarps) {
        const float sums = sum_of_squares(qp, p.q_dtype, q_b + g * p.qs[2], p.qs[3], p.D, lane);
        if (lane == 0) row_sum[g] = sums;
      }
      __syncthreads();
    }
    for (int i = ctx.thread; i < p.G * p.D; i += kWorkerThreads) {
      const int64_t row = q_b + (i / p.D) * p.qs[2];
      const int d = i % p.D;
      float x = load_f32(qp, p.q_dtype, row + d * p.qs[3]);
      if (!rotates) {
        q[i] = x;
      } else {
        float y = load_f32(qp, p.q_dtype, row + partner(d, p.D) * p.qs[3]);
        if (normed(ctx)) {
          const float2 n = normed_pair(ctx, false, row_sum[i / p.D], d, p.D, x, y);
          x = n.x;
          y = n.y;
        }
        q[i] = round_float(rotated(w, cos, sin, d, p.D, x, y), w[kRopeQDtype]);
      }
    }
    __syncthreads();
    ctx.mark(0);
    const bool k_vectors = p.k_dtype == kBF16 ? scores_by_vectors<__nv_bfloat16>(ctx, p, kp, k_b, t0, n, q, s)
                           : p.k_dtype == kF16 ? scores_by_vectors<__half>(ctx, p, kp, k_b, t0, n, q, s)
                           : p.k_dtype == kF32 && scores_by_vectors<float>(ctx, p, kp, k_b, t0, n, q, s);
    if (!k_vectors) scores_by_scalars(ctx, p, kp, k_b, t0, n, q, s);
    __syncthreads();
    ctx.mark(1);
    for (int g = warp; g < p.G; g += kWarps) {
      float m = -INFINITY;
      for (int t = lane; t < n; t += 32) m = fmaxf(m, s[g * n + t]);
      m = warp_max(m);
      float l = 0.0f;
      for (int t = lane; t < n; t += 32) {
        const float e = expf(s[g * n + t] - m);
        s[g * n + t] = e;
        l += e;
      }
      l = warp_sum(l);
      if (lane == 0) {
        row_max[g] = m;
        row_sum[g] = l;
      }
    }
    __syncthreads();
    ctx.mark(2);
    const bool v_vectors = p.v_dtype == kBF16 ? values_by_vectors<__nv_bfloat16>(ctx, p, vp, v_b, t0, n, s, acc_out)
                           : p.v_dtype == kF16 ? values_by_vectors<__half>(ctx, p, vp, v_b, t0, n, s, acc_out)
                           : p.v_dtype == kF32 && values_by_vectors<float>(ctx, p, vp, v_b, t0, n, s, acc_out);
    if (!v_vectors) values_by_scalars(ctx, p, vp, v_b, t0, n, s, acc_out);
    ctx.mark(3);
    for (int g = ctx.thread; g < p.G; g += kWorkerThreads) {
      m_out[g] = row_max[g];
      l_out[g] = row_sum[g];
    }
  }

  __device__ static void store(const TaskContext& ctx, const Problem& p, int b, int i, float value) {
    const int g = i / p.Dv, d = i % p.Dv;
    store_f32(ctx.operand<char>(0), p.out_dtype, b * p.os[0] + g * p.os[1] + d * p.os[2], value);
  }

  // out[b] from the splits' records at `first`. They may come from other workers that just
  // arrived (last_to_arrive): read from L2, past this SM's L1.
  __device__ static void merge(const TaskContext& ctx, const Problem& p, int b, const float* first, int record) {
    for (int i = ctx.thread; i < p.G * p.Dv; i += kWorkerThreads) {
      const int g = i / p.Dv;
      float top = -INFINITY;
      for (int j = 0; j < p.splits; ++j) top = fmaxf(top, __ldcg(first + j * record + g));
      float total = 0.0f, acc = 0.0f;
      for (int j = 0; j < p.splits; ++j) {
        const float* r = first + j * record;
        const float m = __ldcg(r + g);
        const float weight = m == -INFINITY ? 0.0f : expf(m - top);
        total = fmaf(__ldcg(r + p.G + g), weight, total);
        acc = fmaf(__ldcg(r + 2 * p.G + i), weight, acc);
      }
      store(ctx, p, b, i, acc / total);
    }
  }

  // Counts this split's arrival once its record is written (every thread calls it): whether
  // it is the iteration's last of the `splits`. The acquire-release add publishes the record,
  // which the block barrier ordered before it, and the last one sees every other record.
  __device__ static bool last_to_arrive(const TaskContext& ctx, const Problem& p, uint64_t* counter) {
    __shared__ int last;
    __syncthreads();
    if (ctx.thread == 0)
      last = atom_add_acq_rel(counter, 1) + 1 == uint64_t(p.splits) * (ctx.iteration + 1);
    __syncthreads();
    return last;
  }

  // Out of line: inlined into the workers, its 16-byte paths made them spill.
  __device__ __noinline__ static void run(const TaskContext& ctx) {
    const Problem p = problem_of(ctx);
    if (p.G > kMaxRows || p.D > kMaxHeadDim || p.Dv > kMaxHeadDim) {
      if (ctx.thread == 0) report_error(ctx.error(), kBadTaskKind, ctx.task, 0xFFFFFFFFu, ctx.iteration, kKind, p.G);
      return;
    }
    const int mode = ctx.desc.dims[4];
    const int extent = min(max(*ctx.operand<const int32_t>(5), 0), p.T);
    const bool rotates = rope_operands(ctx.desc) > 0;
    const int record = p.G * (2 + p.Dv);
    float* partials = mode == kWhole ? nullptr : ctx.operand<float>(6);
    for (int b = ctx.desc.dims[0]; b < ctx.desc.dims[0] + ctx.desc.dims[1]; ++b) {
      if (mode == kMerge) {
        merge(ctx, p, b, partials + int64_t(b) * p.splits * record, record);
        continue;
      }
      if (mode == kPartial) {
        // The live positions, shared evenly: a split's static share of T would leave the splits
        // past the extent idle and the others with all of it.
        const int per = (extent + p.splits - 1) / p.splits;
        const int t0 = min(ctx.desc.dims[5] * per, extent), t1 = min(t0 + per, extent);
        float* r = partials + (int64_t(b) * p.splits + ctx.desc.dims[5]) * record;
        if (rotates) append_row(ctx, p, b, t0, t1, ctx.desc.dims[5] == 0, extent);
        attend(ctx, p, rotates, b, t0, t1, r, r + p.G, r + 2 * p.G);
        if (base_operands(ctx.desc) == 8 &&
            last_to_arrive(ctx, p, ctx.operand<uint64_t>(7) + b))
          merge(ctx, p, b, partials + int64_t(b) * p.splits * record, record);
      } else {
        const int t0 = ctx.desc.dims[2], t1 = max(t0, min(t0 + ctx.desc.dims[3], extent));
        float* acc = reinterpret_cast<float*>(ctx.shared) + p.G * (p.D + (t1 - t0));  // [G][Dv]
        __shared__ float m_whole[kMaxRows], l_whole[kMaxRows];
        if (rotates) append_row(ctx, p, b, t0, t1, t0 == 0, extent);
        attend(ctx, p, rotates, b, t0, t1, m_whole, l_whole, acc);
        __syncthreads();
        for (int i = ctx.thread; i < p.G * p.Dv; i += kWorkerThreads) store(ctx, p, b, i, acc[i] / l_whole[i / p.Dv]);
      }
      __syncthreads();  // the next b reuses the arena
    }
  }
};

}  // namespace mpk
