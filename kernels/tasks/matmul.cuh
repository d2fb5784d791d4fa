// MATMUL: out[b, m, n] = sum_k x[b, m, k] w[b, k, n] (+ residual[b, m, n]) (+ bias[n]) over
// the task's (b, n, k) ranges and every m, accumulated in float32. With the norm flag, x's
// rows are RMS-normalized first (passes/norm_linear.py): x[m, k] / sqrt(sum_k x[m, k]^2 / K
// + eps) * (offset + scale[k]), rounded to the norm's dtype, where stages_whole() holds. With
// the gate flag, x is the gate g and each staged element is x[m, k] * logistic(x[m, k]) *
// up[m, k] in float32, rounded to x's dtype (passes/gating_linear.py: silu(g) * up).
// operands: out, descriptor, x, w[, residual][, bias][, scale | up][, extent]; dims: b_first, b_count,
// n_first, n_count, k_first, k_count; descriptor: see jax_mpk/task_kinds.py (batch index b
// is (b / B1, b % B1) for the x and w strides). Its extent axis (1 M, 2 N, 3 K) is bounded by
// the int32 last operand: rows or columns past it get a zero sum (and the epilogue) without
// reading x or w there; k stops there.
//
// The task stages its rows of x as float32 in shared memory, a chunk of k at a time.
// Weights contiguous along n: each thread owns V adjacent columns (one 16-byte load per k)
// and a slice of k; the slices are summed through shared memory, and a thread stores one
// column of the sums (the compiler's tiles have at most kWorkerThreads columns:
// jax_mpk.tiling.MAX_TILE_COLUMNS). Weights contiguous along
// k: a group of lanes per column, 16 bytes of k per lane and load, summed by shuffles.
// Otherwise one column per thread, scalar loads. With the tensor core flag (16-bit x and w,
// DeviceSpec.matmul_tensor_core_rows), tiles of 16 to 128 columns (by_columns_mma) and
// weights contiguous along k (by_k_mma) go through mma.sync instead, x staged as 16-bit pairs.
#pragma once

#include <type_traits>

#include "../runtime/task_context.cuh"
#include "async_copy.cuh"
#include "dtype.cuh"
#include "tensor_core.cuh"

namespace mpk {

struct MatmulTask {
  static constexpr TaskKind kKind = kTaskMatmul;
  static constexpr const char* kName = "matmul";
  static constexpr int kDescWords = 26;
  static constexpr int kResidual = 1, kBias = 2, kNorm = 4, kGate = 8, kTensorCores = 16;  // flags
  static constexpr int kRoundBF16 = 32, kRoundF16 = 64;
  static constexpr int kStagedRows = 4;  // rows run() stages whole (jax_mpk.passes.norm_linear)
  static constexpr int kRows = 8;    // output rows a thread accumulates per pass over k ...
  static constexpr int kAccumulators = 32;  // ... unless that makes more accumulators than this
  static constexpr int kUnroll = 4;  // weight loads in flight per thread, without the ring
  static constexpr int kWarps = kWorkerThreads / 32;
  static constexpr int kPartials = 2048;  // floats: k-slice partial sums of one output row
  static constexpr int kStagedX = 16384;  // floats of x staged at a time
  static constexpr int kMmaRows = 64;     // rows of x a tensor core pass takes (8 n8 tiles)
  // 16-byte weight loads in flight per thread, through a ring in shared memory.
  static constexpr int kStages = 16;
  static_assert((kPartials + kStagedX) * 4 + kStages * kWorkerThreads * 16 <= kTaskSharedBytes,
                "matmul's shared memory exceeds the task arena");
  // by_k_buffered: loads a lane takes a column, columns in the ring, and the floats of x
  // below it (k = kColumnLoads * 32 * V <= kBufferedX).
  static constexpr int kColumnLoads = 8, kBufferedColumns = 3, kBufferedX = 2048;
  static_assert((kPartials + kBufferedX) * 4 + kBufferedColumns * kColumnLoads * kWorkerThreads * 16 <=
                    kTaskSharedBytes,
                "by_k_buffered's ring exceeds the task arena");

  // The task arena (ctx.shared): partial sums, staged x, then the weight ring.
  struct Shared {
    float* partials;
    float* staged;
    uint4* ring;  // slot j of thread t: ring[(j % kStages) * kWorkerThreads + t]
    __device__ explicit Shared(char* arena)
        : partials(reinterpret_cast<float*>(arena)),
          staged(reinterpret_cast<float*>(arena) + kPartials),
          ring(reinterpret_cast<uint4*>(arena + (kPartials + kStagedX) * 4)) {}
  };

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
    int extent_axis;
  };

  static const char* check(const TaskDesc& d, const Operand* ops) {
    if (d.num_operands < 4 || d.num_operands > 7)
      return "matmul takes operands out, descriptor, x, w[, residual][, bias][, scale | up][, extent]";
    if (ops[1].bytes < 4 * kDescWords) return "matmul descriptor operand is shorter than 26 int32";
    for (int i = 0; i < 6; ++i)
      if (d.dims[i] < 0) return "matmul dims (b, n, k first and count) must be >= 0";
    return nullptr;
  }

  // The output element (b, m, n), its residual and bias added, stored in out's dtype (first
  // rounded to bf16 or f16 where a widening cast of the result was folded in).
  __device__ static void store(const Problem& p, int b, int m, int n, float acc) {
    const int64_t at = b * p.os[0] + int64_t(m) * p.os[1] + int64_t(n) * p.os[2];
    if (p.residual) acc += load_f32(p.residual, p.out_dtype, at);
    if (p.bias) acc += load_f32(p.bias, p.out_dtype, n);
    if (p.flags & (kRoundBF16 | kRoundF16)) acc = round_float(acc, p.flags & kRoundBF16 ? kBF16 : kF16);
    store_f32(p.out, p.out_dtype, at, acc);
  }

  // 16 bytes of consecutive weights, kept raw until used.
  template <typename T>
  struct VectorWeights {
    using Elem = T;
    static constexpr int kWidth = 16 / sizeof(T);
    using Raw = uint4;
    static constexpr bool kAsync = true;  // loads can go through cp.async
    __device__ static const uint4* address(const char* w, int64_t at) {
      return reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(w) + at);
    }
    __device__ static Raw load(const char* w, int32_t, int64_t at) { return __ldg(address(w, at)); }
    // Element v of the 16 bytes, unpacked by shifts from the register that holds it.
    __device__ static float get(const Raw& raw, int v) {
      const uint32_t word = v * int(sizeof(T)) / 4 == 0   ? raw.x
                            : v * int(sizeof(T)) / 4 == 1 ? raw.y
                            : v * int(sizeof(T)) / 4 == 2 ? raw.z
                                                          : raw.w;
      if constexpr (sizeof(T) == 4) {
        return __uint_as_float(word);
      } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
        return __uint_as_float(v % 2 ? word & 0xFFFF0000u : word << 16);
      } else {
        return __half2float(__ushort_as_half(static_cast<unsigned short>(v % 2 ? word >> 16 : word)));
      }
    }
  };

  struct ScalarWeights {
    static constexpr int kWidth = 1;
    static constexpr bool kAsync = false;
    using Raw = float;
    __device__ static Raw load(const char* w, int32_t dtype, int64_t at) { return load_f32(w, dtype, at); }
    __device__ static float get(const Raw& raw, int) { return raw; }
  };

  __device__ static float to_float(float v) { return v; }
  __device__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static float to_float(__half v) { return __half2float(v); }

  // The operand after the epilogue's: the norm's scale (kNorm) or the gate's up (kGate).
  __device__ static int after_epilogue(const Problem& p) {
    return 4 + (p.flags & kResidual ? 1 : 0) + (p.flags & kBias ? 1 : 0);
  }

  // The gate's other factor (kGate), laid out as x; else null. Read where x is staged, not
  // kept in Problem: a pointer held through the loops made ptxas spill.
  __device__ static const char* up_of(const TaskContext& ctx, const Problem& p) {
    return p.flags & kGate ? ctx.operand<const char>(after_epilogue(p)) : nullptr;
  }

  // silu(g) * up as the elementwise program computes it: float32, left to right, rounded once.
  __device__ static float gated(float g, float up, int32_t dtype) {
    return round_float(g * logistic(g) * up, dtype);
  }

  // Rows [m0, m0 + rows) of x over k in [k0, k0 + kc), as float32: staged[r * stride + (k - k0)],
  // stride = padded(kc) keeps rows 16-byte aligned. Every thread calls it.
  __device__ static int padded(int kc) { return (kc + 3) & ~3; }

  __device__ static void stage_x(const TaskContext& ctx, const Problem& p, int64_t x_b, int m0, int rows, int k0,
                                 int kc, float* staged) {
    if (!p.x) return;  // run() staged all of x already (stages_whole)
    __syncthreads();  // the previous chunk is consumed
    const int stride = padded(kc);
    const char* up = up_of(ctx, p);
    for (int i = ctx.thread; i < rows * kc; i += kWorkerThreads) {
      const int r = i / kc, k = i % kc;
      const int64_t at = x_b + int64_t(m0 + r) * p.xs[2] + int64_t(k0 + k) * p.xs[3];
      const float x = load_f32(p.x, p.x_dtype, at);
      staged[r * stride + k] = up ? gated(x, load_f32(up, p.x_dtype, at), p.x_dtype) : x;
    }
    __syncthreads();
  }

  // The tensor core paths stage x as 16-bit pairs in the arena below the ring (within the
  // partials' and staged floats' room): row r of a chunk at pairs[r * pair_stride + k / 2],
  // zero from the chunk's k to its padded end. The stride is 4 mod 8 words, so that the eight
  // rows of a B fragment's load fall in distinct banks. 40 KiB, the room they were tuned and
  // tested with before kStagedX grew (session 29).
  static constexpr int kPairWords = 10240;
  static_assert(kPairWords <= kPartials + kStagedX, "the tensor core paths' x overlaps the ring");
  __device__ static int pair_stride(int kc_pad) { return kc_pad / 2 + 4; }

  // The tensor core paths' norm: each row's sum of squares, then 1 / sqrt(mean square + eps).
  __device__ static float* mma_norm_rows() {
    __shared__ float rows[kMmaRows];
    return rows;
  }

  // Whether a tensor core task can normalize x as it stages it: all of K (no split) in one
  // chunk of whole aligned 16-byte vectors of 16-bit x, its rows in one pass, rounded to
  // the weights' dtype (passes/norm_linear.py folds only such norms).
  __device__ static bool mma_norm_fits(const TaskContext& ctx, const Problem& p, int kc_max) {
    const int32_t* desc = ctx.descriptor();
    return p.k0 == 0 && p.kn == desc[4] && kc_max >= p.kn && p.M <= kMmaRows && p.xs[3] == 1 && p.kn % 8 == 0 &&
           (p.M == 1 || p.xs[2] % 8 == 0) && desc[23] == p.w_dtype;
  }

  // Adds the squares of one staged vector of row r (none past `rows`: r is uniform-checked
  // per lane) to sums[r]: a warp whose lanes share a row adds once (shared float atomics
  // are compare-and-swap loops: session 8).
  template <typename T>
  __device__ static void add_squares(const TaskContext& ctx, const uint4& v, int r, int rows, float* sums) {
    float squares = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float f = VectorWeights<T>::get(v, e);
      squares += __fmul_rn(f, f);  // each rounds to float32, as the unfused op's squares do
    }
    const bool live = r < rows;
    const int first = __shfl_sync(0xFFFFFFFFu, r, 0);
    if (__all_sync(0xFFFFFFFFu, !live || r == first)) {
      for (int offset = 16; offset > 0; offset /= 2) squares += __shfl_xor_sync(0xFFFFFFFFu, squares, offset);
      if (ctx.thread % 32 == 0 && first < rows) atomicAdd(sums + first, squares);
    } else if (live) {
      atomicAdd(sums + r, squares);
    }
  }

  // One staged vector at `at` (8 values of one row) times that row's inv_rms and the gains,
  // rounded to the norm's dtype, in place.
  template <typename T>
  __device__ __forceinline__ static void normalize_vector(uint4* at, float inv, const float (&gain)[8], int norm_dtype) {
    using W = VectorWeights<T>;
    const uint4 raw = *at;
    uint4 out;
    uint32_t* to = reinterpret_cast<uint32_t*>(&out);
#pragma unroll
    for (int w = 0; w < 4; ++w)
      to[w] = pack_pair<T>(round_float(W::get(raw, 2 * w) * inv * gain[2 * w], norm_dtype),
                           round_float(W::get(raw, 2 * w + 1) * inv * gain[2 * w + 1], norm_dtype));
    *at = out;
  }

  // x[m][k] * inv_rms[m] * (offset + scale[k]), rounded to the norm's dtype, for the vectors
  // this thread staged (stage_pairs' order), in place; then a barrier. Where the scale is x's
  // dtype and aligned, a thread loads the gains of kBatch vectors, 16 bytes each, before it
  // uses any: the loads are on the critical path, and a round trip a vector cost a normed
  // linear at batch 8 about 6 of its 30 µs (session 21's timeline). Other scales go a
  // vector at a time: unrolled like the packed loop, their 8 scalar loads a vector made each
  // tensor core function 43 KB longer.
  template <typename T>
  __device__ static void normalize_pairs(const TaskContext& ctx, const Problem& p, int rows, int k0, int kc, int kc_pad,
                                         uint32_t* pairs, float* sums) {
    using W = VectorWeights<T>;
    constexpr int kBatch = 4;
    const int32_t* desc = ctx.descriptor();
    const float K = float(desc[4]), eps = __int_as_float(desc[21]), offset = __int_as_float(desc[22]);
    const int norm_dtype = desc[23], scale_dtype = desc[24];
    const char* scale = ctx.operand<const char>(after_epilogue(p));
    const int stride = pair_stride(kc_pad), per_row = kc_pad / 8, vectors = rows * per_row;
    __syncthreads();
    for (int r = ctx.thread; r < rows; r += kWorkerThreads) sums[r] = 1.0f / sqrtf(sums[r] / K + eps);
    __syncthreads();
    auto at = [&](int i) { return reinterpret_cast<uint4*>(pairs + i / per_row * stride + i % per_row * 4); };
    if (scale_dtype == p.x_dtype && (reinterpret_cast<uintptr_t>(scale) + int64_t(k0) * 2) % 16 == 0) {
      for (int i0 = 0; i0 < vectors; i0 += kBatch * kWorkerThreads) {
        uint4 gains[kBatch];
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          const int i = i0 + b * kWorkerThreads + ctx.thread, k = i % per_row * 8;
          gains[b] = i < vectors && k < kc ? W::load(scale, scale_dtype, k0 + k) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          const int i = i0 + b * kWorkerThreads + ctx.thread;
          if (i >= vectors) break;
          if (i % per_row * 8 >= kc) continue;  // zero padding
          float gain[8];
#pragma unroll
          for (int e = 0; e < 8; ++e) gain[e] = offset + W::get(gains[b], e);
          normalize_vector<T>(at(i), sums[i / per_row], gain, norm_dtype);
        }
      }
    } else {
      for (int i = ctx.thread; i < vectors; i += kWorkerThreads) {
        const int k = i % per_row * 8;
        if (k >= kc) continue;  // zero padding
        float gain[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) gain[e] = offset + load_f32(scale, scale_dtype, k0 + k + e);
        normalize_vector<T>(at(i), sums[i / per_row], gain, norm_dtype);
      }
    }
    __syncthreads();
  }

  // Rows [m0, m0 + rows) of x over k in [k0, k0 + kc) as pairs of T (silu(g) * up with the
  // gate; RMS-normalized with the norm, which needs all of K in the chunk and whole aligned
  // vectors: mma_norm_fits), zero over [kc, kc_pad) (kc_pad a multiple of 16). Every load of
  // x is on the critical path, so a thread issues kBatch 16-byte loads (of x and of up)
  // before it stores any; rows that are not whole aligned vectors go element by element.
  // Ends with a barrier when it normalizes, without one otherwise.
  template <typename T>
  __device__ static void stage_pairs(const TaskContext& ctx, const Problem& p, int64_t x_b, int m0, int rows, int k0,
                                     int kc, int kc_pad, uint32_t* pairs) {
    constexpr int kBatch = 4;
    const char* up = up_of(ctx, p);
    const int stride = pair_stride(kc_pad), per_row = kc_pad / 8;  // 16-byte vectors of a row
    const int64_t first = x_b + int64_t(m0) * p.xs[2] + k0;
    const bool vectors = p.xs[3] == 1 && kc % 8 == 0 && (rows == 1 || p.xs[2] % 8 == 0) &&
                         (reinterpret_cast<uintptr_t>(p.x) + first * 2) % 16 == 0 &&
                         (!up || (reinterpret_cast<uintptr_t>(up) + first * 2) % 16 == 0);
    const bool norm = p.flags & kNorm;
    if (norm && !vectors) report_unstaged_norm(ctx, p.M);  // mma_norm_fits but misaligned: none folded
    float* sums = mma_norm_rows();
    if (norm) {
      for (int r = ctx.thread; r < rows; r += kWorkerThreads) sums[r] = 0.0f;
      __syncthreads();
    }
    if (vectors) {
      for (int i0 = 0; i0 < rows * per_row; i0 += kBatch * kWorkerThreads) {
        uint4 x[kBatch], u[kBatch];
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          const int i = i0 + b * kWorkerThreads + ctx.thread, r = i / per_row, k = i % per_row * 8;
          x[b] = u[b] = make_uint4(0, 0, 0, 0);
          if (i < rows * per_row && k < kc) {
            const int64_t at = (first + int64_t(r) * p.xs[2] + k) * 2;
            x[b] = *reinterpret_cast<const uint4*>(p.x + at);
            if (up) u[b] = *reinterpret_cast<const uint4*>(up + at);
          }
        }
        if (norm) {
#pragma unroll
          for (int b = 0; b < kBatch; ++b)
            add_squares<T>(ctx, x[b], (i0 + b * kWorkerThreads + ctx.thread) / per_row, rows, sums);
        }
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          const int i = i0 + b * kWorkerThreads + ctx.thread;
          if (i >= rows * per_row) break;
          if (up) {
            using W = VectorWeights<T>;
            const uint4 g = x[b];
            uint32_t* to = reinterpret_cast<uint32_t*>(&x[b]);
#pragma unroll
            for (int w = 0; w < 4; ++w)
              to[w] = pack_pair<T>(gated(W::get(g, 2 * w), W::get(u[b], 2 * w), p.x_dtype),
                                   gated(W::get(g, 2 * w + 1), W::get(u[b], 2 * w + 1), p.x_dtype));
          }
          *reinterpret_cast<uint4*>(pairs + i / per_row * stride + i % per_row * 4) = x[b];
        }
      }
      if (norm) normalize_pairs<T>(ctx, p, rows, k0, kc, kc_pad, pairs, sums);
      return;
    }
    for (int i = ctx.thread; i < rows * kc_pad / 2; i += kWorkerThreads) {
      const int r = i / (kc_pad / 2), k = 2 * (i % (kc_pad / 2));
      const int64_t at = first + int64_t(r) * p.xs[2] + int64_t(k) * p.xs[3];
      float low = k < kc ? load_f32(p.x, p.x_dtype, at) : 0.0f;
      float high = k + 1 < kc ? load_f32(p.x, p.x_dtype, at + p.xs[3]) : 0.0f;
      if (up) {
        low = k < kc ? gated(low, load_f32(up, p.x_dtype, at), p.x_dtype) : 0.0f;
        high = k + 1 < kc ? gated(high, load_f32(up, p.x_dtype, at + p.xs[3]), p.x_dtype) : 0.0f;
      }
      pairs[r * stride + k / 2] = pack_pair<T>(low, high);
    }
  }

  // Whether run() stages all of x (stage_whole) before by_columns runs (or by_k, for
  // weights along k at one row: a tied LM head), which then stages nothing (run() clears
  // p.x): batch index 0 alone, at most kStagedRows rows (one pass of by_columns), all of k in
  // one chunk, x contiguous along k in 16-byte aligned rows; with the norm flag, all of K
  // (no split-K).
  __device__ static bool stages_whole(const TaskContext& ctx, const Problem& p) {
    const int V = 16 / dtype_size(p.x_dtype);
    const bool along_n = p.ws[3] == 1 && p.ws[2] != 1, along_k_one_row = p.ws[2] == 1 && p.M == 1;
    return (along_n || along_k_one_row) && p.extent_axis == 0 && ctx.desc.dims[0] == 0 && ctx.desc.dims[1] == 1 &&
           p.M <= kStagedRows && p.M * padded(p.kn) <= kStagedX && p.xs[3] == 1 && p.kn % V == 0 &&
           (p.M == 1 || p.xs[2] % V == 0) && reinterpret_cast<uintptr_t>(p.x + p.k0 * dtype_size(p.x_dtype)) % 16 == 0 &&
           (!(p.flags & kGate) || reinterpret_cast<uintptr_t>(up_of(ctx, p) + p.k0 * dtype_size(p.x_dtype)) % 16 == 0) &&
           (p.x_dtype == kBF16 || p.x_dtype == kF16 || p.x_dtype == kF32) &&
           (!(p.flags & kNorm) || (p.k0 == 0 && p.kn == ctx.descriptor()[4]));  // rows whole
  }

  // Every load of x is on the critical path (its writer just finished), so a thread issues
  // its 16-byte loads of x before it waits for any. Rows [0, M) over k in [k0, k0 + kn); with
  // the norm flag, each thread also sums the squares of what it loaded into its row's total,
  // then normalizes what it staged (the same elements: no barrier between).
  __device__ static void stage_whole(const TaskContext& ctx, const Problem& p, float* staged) {
    const bool norm = p.flags & kNorm;
    float* sums = norm_rows();
    if (norm) {
      for (int m = ctx.thread; m < p.M; m += kWorkerThreads) sums[m] = 0.0f;
      __syncthreads();
    }
    if (p.x_dtype == kBF16) stage_vectors<__nv_bfloat16>(ctx, p, staged, norm ? sums : nullptr);
    else if (p.x_dtype == kF16) stage_vectors<__half>(ctx, p, staged, norm ? sums : nullptr);
    else stage_vectors<float>(ctx, p, staged, norm ? sums : nullptr);
    if (norm) {
      __syncthreads();
      const float K = float(ctx.descriptor()[4]), eps = __int_as_float(ctx.descriptor()[21]);
      for (int m = ctx.thread; m < p.M; m += kWorkerThreads) sums[m] = 1.0f / sqrtf(sums[m] / K + eps);
      __syncthreads();
      normalize_staged(ctx, p, staged, sums);
    }
    __syncthreads();
  }

  // stages_whole() checked that x is contiguous along k and its rows 16-byte aligned.
  template <typename T>
  __device__ static void stage_vectors(const TaskContext& ctx, const Problem& p, float* staged, float* sums) {
    constexpr int V = 16 / sizeof(T);
    const T* x = reinterpret_cast<const T*>(p.x) + p.k0;
    const int per_row = p.kn / V, stride = padded(p.kn);
    const char* up = up_of(ctx, p);
    float row_squares[kStagedRows] = {};
    for (int i = ctx.thread; i < p.M * per_row; i += kWorkerThreads) {
      const int64_t at = int64_t(i / per_row) * p.xs[2] + (i % per_row) * V;
      const uint4 raw = *reinterpret_cast<const uint4*>(x + at);
      uint4 up_raw;
      if (up) up_raw = *reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(up) + p.k0 + at);
      const T* e = reinterpret_cast<const T*>(&raw);
      const T* u = reinterpret_cast<const T*>(&up_raw);
      float4* to = reinterpret_cast<float4*>(staged + (i / per_row) * stride + (i % per_row) * V);
      float squares = 0.0f;
#pragma unroll
      for (int q = 0; q < V / 4; ++q) {
        float4 f = make_float4(to_float(e[4 * q]), to_float(e[4 * q + 1]), to_float(e[4 * q + 2]),
                               to_float(e[4 * q + 3]));
        if (up)
          f = make_float4(gated(f.x, to_float(u[4 * q]), p.x_dtype), gated(f.y, to_float(u[4 * q + 1]), p.x_dtype),
                          gated(f.z, to_float(u[4 * q + 2]), p.x_dtype), gated(f.w, to_float(u[4 * q + 3]), p.x_dtype));
        to[q] = f;
        // Each square rounds to float32, as the unfused op's do.
        squares += __fmul_rn(f.x, f.x) + __fmul_rn(f.y, f.y) + __fmul_rn(f.z, f.z) + __fmul_rn(f.w, f.w);
      }
#pragma unroll
      for (int r = 0; r < kStagedRows; ++r)
        if (r == i / per_row) row_squares[r] += squares;
    }
    if (!sums) return;
    // Summed within each warp first: a float atomicAdd on shared memory is a compare-and-swap
    // loop, and 256 threads on one word took 7% of the step's samples (session 8's profile).
#pragma unroll
    for (int r = 0; r < kStagedRows; ++r) {
      if (r >= p.M) break;  // uniform
      float sum = row_squares[r];
      for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
      if (ctx.thread % 32 == 0) atomicAdd(sums + r, sum);
    }
  }

  // Out of line, as it is never called on a valid program: its arguments would otherwise
  // hold registers through the matmul loops.
  __device__ __noinline__ static void report_unstaged_norm(const TaskContext& ctx, int M) {
    if (ctx.thread == 0) report_error(ctx.error(), kBadTaskKind, ctx.task, 0xFFFFFFFFu, ctx.iteration, kKind, M);
  }

  // The norm's row sums of squares, then 1 / sqrt(mean square + eps) of each row of x.
  __device__ static float* norm_rows() {
    __shared__ float rows[kStagedRows];
    return rows;
  }

  // staged[m][k] = round(staged[m][k] * inv_rms[m] * (offset + scale[k0 + k])) for the
  // vectors this thread staged.
  __device__ static void normalize_staged(const TaskContext& ctx, const Problem& p, float* staged,
                                          const float* inv_rms) {
    const int32_t* desc = ctx.descriptor();
    const float offset = __int_as_float(desc[22]);
    const int norm_dtype = desc[23], scale_dtype = desc[24];
    const char* scale = ctx.operand<const char>(after_epilogue(p));
    const int V = 16 / dtype_size(p.x_dtype), per_row = p.kn / V, stride = padded(p.kn);
    for (int i = ctx.thread; i < p.M * per_row; i += kWorkerThreads) {
      const int m = i / per_row, k = (i % per_row) * V;
      // Every gain is loaded before the first store, so the loads are in flight together.
      float gain[8];
#pragma unroll
      for (int v = 0; v < 8; ++v)
        if (v < V) gain[v] = offset + load_f32(scale, scale_dtype, p.k0 + k + v);
      float* at = staged + m * stride + k;
#pragma unroll
      for (int v = 0; v < 8; ++v)
        if (v < V) at[v] = round_float(at[v] * inv_rms[m] * gain[v], norm_dtype);
    }
  }

  // k values per staged chunk (a multiple of 4 and of `multiple`) for `rows` rows of x at a
  // time (fewer when M is smaller): all of them when they fit.
  __device__ static int chunk_of(const Problem& p, int rows, int multiple) {
    rows = max(1, min(rows, p.M));
    const int fit = max(multiple, kStagedX / rows / multiple * multiple);
    return min(p.kn, fit);
  }

  // Output rows a by_columns pass accumulates: all of M = 1 (decode), else as many as fit.
  template <int V>
  static constexpr int kColumnRows = kRows * V <= kAccumulators ? kRows : kAccumulators / V;

  // The rows per pass by_columns runs M rows with: dispatch and prefetch must agree on it.
  template <int V>
  __device__ static int column_rows(int M) { return M == 1 ? 1 : kColumnRows<V>; }

  // A thread's share of a by_columns round: the V columns of group g and the k values s,
  // s + slices, ... of each staged chunk.
  struct ColumnShare {
    int groups, round_groups, slices, g, s;
    __device__ ColumnShare(int nn, int V, int thread) : groups(nn / V), round_groups(nn / V) {
      if (groups <= 32) {
        round_groups = 1;
        while (round_groups < groups) round_groups *= 2;
      } else if (round_groups > kWorkerThreads) {
        round_groups = kWorkerThreads;
      }
      slices = kWorkerThreads / round_groups;
      g = thread % round_groups;
      s = thread / round_groups;
    }
  };

  // This thread's weight loads in a staged chunk: `steps` loads of 16 bytes, `step` bytes
  // apart, issued in order; `next` is the address of the next one to issue.
  struct WeightStream {
    const char* next;
    int64_t step;
    unsigned steps;
    __device__ void skip(unsigned loads) { next += int64_t(loads) * step; }
  };

  template <typename Weights>
  __device__ static WeightStream stream_of(const Problem& p, int64_t w_col, int kc0, int kc, const ColumnShare& share) {
    using T = typename Weights::Elem;
    return {reinterpret_cast<const char*>(Weights::address(p.w, w_col + int64_t(kc0 + share.s) * p.ws[2])),
            int64_t(share.slices) * p.ws[2] * int64_t(sizeof(T)),
            kc > share.s ? unsigned(kc - share.s + share.slices - 1) / unsigned(share.slices) : 0u};
  }

  // Issues load j of the stream, the next in order, into this thread's ring slot (maybe
  // none: past the last) as one group.
  __device__ static void issue(uint4* mine, WeightStream& stream, unsigned j) {
    if (j < stream.steps) {
      copy16_async(mine + (j % kStages) * kWorkerThreads, stream.next);
      stream.next += stream.step;
    }
    commit_copies();
  }

  // Loads [first, kStages - 1) of those kept in flight ahead of the first use.
  __device__ static void prologue(uint4* mine, WeightStream& stream, unsigned first, unsigned end = kStages - 1) {
    for (unsigned j = first; j < end; ++j) issue(mine, stream, j);
  }

  // How many of the prologue's loads prefetch() issues before the task's wait (the
  // descriptor's count, at most the prologue's): the rest wait for the task's start, so that
  // x's loads after the wait do not queue behind them all.
  __device__ static unsigned prefetch_loads(const TaskContext& ctx) {
    return unsigned(min(max(ctx.descriptor()[25], 0), kStages - 1));
  }

  template <typename Weights, int rows>
  __device__ static void by_columns(const TaskContext& ctx, const Problem& p, int b, const Shared& sh,
                                    bool prefetched) {
    float* partials = sh.partials;
    float* staged = sh.staged;
    constexpr int V = Weights::kWidth;
    const ColumnShare share(p.nn, V, ctx.thread);
    const int groups = share.groups, round_groups = share.round_groups, slices = share.slices;
    const int g = share.g, s = share.s;
    const bool shuffled = round_groups <= 32;  // lanes of one group share a warp
    const int lane = ctx.thread % 32, warp = ctx.thread / 32;
    const int64_t x_b = b / p.B1 * p.xs[0] + b % p.B1 * p.xs[1], w_b = b / p.B1 * p.ws[0] + b % p.B1 * p.ws[1];
    const int kc_max = chunk_of(p, rows, 4);
    for (int m0 = 0; m0 < p.M; m0 += rows) {
      const int live_rows = min(rows, max(0, p.live_rows - m0));
      for (int round = 0; round < groups; round += round_groups) {
        const int n = p.n0 + (round + g) * V;  // first column of this thread
        const bool active = s < slices && round + g < groups && n < p.live_end;
        // Columns past the live extent read as 0 (the loaded bytes may be stale).
        const int live = min(V, p.live_end - n);
        float acc[rows][V] = {};
        for (int kc0 = p.k0; kc0 < p.k0 + p.kn; kc0 += kc_max) {
          const int kc = min(kc_max, p.k0 + p.kn - kc0);
          stage_x(ctx, p, x_b, m0, live_rows, kc0, kc, staged);
          const bool in_flight = prefetched;  // only the first chunk of the first round
          prefetched = false;
          if (!active || live_rows == 0) continue;
          const char* w = p.w;
          const int64_t w_col = w_b + int64_t(n) * p.ws[3];
          if constexpr (Weights::kAsync) {
            // This thread's loads k = s + j * slices, kStages - 1 ahead of their use.
            WeightStream stream = stream_of<Weights>(p, w_col, kc0, kc, share);
            uint4* mine = sh.ring + ctx.thread;
            const unsigned issued = in_flight ? prefetch_loads(ctx) : 0;  // by MatmulTask::prefetch
            stream.skip(issued);
            prologue(mine, stream, issued);
            const int stride = padded(kc);
            if (live == V && live_rows == rows) {
#pragma unroll 2
              for (unsigned j = 0; j < stream.steps; ++j) {
                issue(mine, stream, j + kStages - 1);
                wait_copies<kStages - 1>();
                accumulate_all<rows, Weights>(acc, load_shared16(mine + (j % kStages) * kWorkerThreads), staged + s + j * slices, stride);
              }
            } else {
              for (unsigned j = 0; j < stream.steps; ++j) {
                issue(mine, stream, j + kStages - 1);
                wait_copies<kStages - 1>();
                accumulate<rows, Weights>(acc, load_shared16(mine + (j % kStages) * kWorkerThreads), live, live_rows,
                                          staged + s + j * slices, stride);
              }
            }
            continue;
          }
          int k = s;
          for (; k + (kUnroll - 1) * slices < kc; k += kUnroll * slices) {
            typename Weights::Raw raw[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) raw[u] = Weights::load(w, p.w_dtype, w_col + int64_t(kc0 + k + u * slices) * p.ws[2]);
#pragma unroll
            for (int u = 0; u < kUnroll; ++u)
              accumulate<rows, Weights>(acc, raw[u], live, live_rows, staged + k + u * slices, padded(kc));
          }
          for (; k < kc; k += slices)
            accumulate<rows, Weights>(acc, Weights::load(w, p.w_dtype, w_col + int64_t(kc0 + k) * p.ws[2]), live, live_rows,
                                      staged + k, padded(kc));
        }
        ctx.mark(1);
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
          ctx.mark(2);
        }
      }
    }
  }

  // Whether by_columns' tiles go through tensor cores (kTensorCores, jax_mpk's
  // DeviceSpec.matmul_tensor_core_rows): 16-bit x and w of one dtype (with a norm, where
  // mma_norm_fits), and a ring stage a whole number of 16 x 16 blocks (2 to 16 column
  // groups: 16 to 128 columns a tile).
  template <typename T>
  __device__ static bool on_tensor_cores(const Problem& p) {
    if constexpr (sizeof(T) != 2) {
      return false;
    } else {
      const int round_groups = ColumnShare(p.nn, 8, 0).round_groups;
      return (p.flags & kTensorCores) && p.x_dtype == p.w_dtype && p.extent_axis == 0 && round_groups >= 2 &&
             round_groups <= 16;
    }
  }

  // A tensor core tile's ring slot of thread (s, g): its 16 bytes of k row s, column group g,
  // swizzled so that ldmatrix's eight rows of one column group (k rows s..s+7, 16 bytes
  // each, round_groups * 16 bytes apart) fall in distinct banks: the group is XORed with
  // s % 8 scaled to the groups a 128-byte line holds.
  __device__ static int mma_slot(int s, int g, int round_groups) {
    const int per_line = min(round_groups, 8);
    return s * round_groups + (g ^ ((s & 7) * per_line / 8));
  }

  // k values per tensor core chunk: a multiple of the stage's k rows (slices) such that
  // rows of x (up to kMmaRows, whole n8 tiles) fit the pairs area; all of k when it fits.
  __device__ static int mma_chunk(const Problem& p, int slices) {
    const int rows = (min(p.M, kMmaRows) + 7) / 8 * 8;
    const int fit = max(slices, (kPairWords / rows - 4) * 2 / slices * slices);
    return min(p.kn, fit);
  }

  // by_columns_mma's stages of one chunk, for up to kTiles n8 tiles of x's rows: a tile
  // past `rows` is skipped by a uniform branch, but its predicated loads and mma still take
  // issue slots, so the loop is instantiated per tile count (at 8 rows the loop for 8 tiles
  // was 96 instructions a stage, most of them predicated off, 8 warps issuing them between
  // two barriers for each 4 KiB stage).
  template <typename T, int kTiles>
  __device__ __forceinline__ static void mma_stages(float (&acc)[kMmaRows / 8][4], uint4* mine, WeightStream& stream,
                                                    const uint4* row, const uint32_t* x, int x_step, int stride,
                                                    unsigned stages, int rows) {
    for (unsigned j = 0; j < stages; ++j, x += x_step) {
      if (j >= stream.steps) mine[(j % kStages) * kWorkerThreads] = make_uint4(0, 0, 0, 0);
      wait_copies<kStages - 2>();  // load j has landed (load j + kStages - 1 is not issued yet)
      __syncthreads();             // every thread's load j and x, and every warp done with stage j - 1
      issue(mine, stream, j + kStages - 1);  // into stage j - 1's slot
      uint32_t a[4];
      load_matrices_transposed(a, row + (j % kStages) * kWorkerThreads);
      // B: rows group (+ 8t) of x at k and k + 8, two pairs each (this lane's 2 pair).
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
        if (kTiles == 1 || t * 8 < rows) {  // uniform
          const float* xt = reinterpret_cast<const float*>(x + t * 8 * stride);
          mma_16x8x16<T>(acc[t], a, __float_as_uint(load_shared_f32(xt)), __float_as_uint(load_shared_f32(xt + 4)));
        }
      }
    }
  }

  // by_columns on tensor cores: out^T = w^T x^T, one m16n8k16 tile per 16 columns, 16 k and
  // 8 rows of x, so that M = 8 wastes nothing. The weights stream through the same ring,
  // whose stage j is rows k0 + j * slices + [0, slices) by the tile's columns, 16 bytes a
  // thread (mma_slot): its (slices / 16) x (columns / 16) blocks are 8, one a warp
  // (ldmatrix.trans reads a block as the A operand), and the warps sharing columns sum at
  // the end. A chunk's weight prologue is issued before its x is staged (stage_pairs), so
  // the two round trips overlap. A thread zeroes its ring slot where it has no load (past k,
  // or past the tile's columns), so that no stale bits enter a sum.
  template <typename T>
  __device__ __noinline__ static void by_columns_mma(const TaskContext& caller_ctx, const Problem& caller_p, int b,
                                                     bool prefetched) {
    const TaskContext ctx = caller_ctx;
    const Problem p = caller_p;
    const Shared sh(ctx.shared);
    constexpr int V = 8;
    const ColumnShare share(p.nn, V, ctx.thread);
    const int rg = share.round_groups, blocks = rg / 2;  // 16-column blocks of a stage
    const int warp = ctx.thread / 32, lane = ctx.thread % 32, group = lane / 4, pair = lane % 4;
    const int block = warp % blocks, kstep = warp / blocks;  // this warp's 16 x 16 block of each stage
    const int ksteps = kWarps / blocks;
    const bool active = share.g < share.groups;
    const int64_t x_b = b / p.B1 * p.xs[0] + b % p.B1 * p.xs[1], w_b = b / p.B1 * p.ws[0] + b % p.B1 * p.ws[1];
    const int64_t w_col = w_b + int64_t(p.n0 + share.g * V) * p.ws[3];
    const int kc_max = mma_chunk(p, share.slices);
    if ((p.flags & kNorm) && !mma_norm_fits(ctx, p, kc_max)) {  // passes/norm_linear.py folds none such
      report_unstaged_norm(ctx, p.M);
      return;
    }
    uint32_t* pairs = reinterpret_cast<uint32_t*>(ctx.shared);
    uint4* mine = sh.ring + mma_slot(share.s, share.g, rg);
    // This lane's ldmatrix row: matrices 0-3 are (k 0-7, n 0-7), (k 0-7, n 8-15),
    // (k 8-15, n 0-7) and (k 8-15, n 8-15) of the warp's block, A's a[0..3].
    const int matrix = lane / 8;
    const int row_k = kstep * 16 + matrix / 2 * 8 + lane % 8, row_group = block * 2 + matrix % 2;
    const uint4* row = sh.ring + mma_slot(row_k, row_group, rg);
    for (int m0 = 0; m0 < p.M; m0 += kMmaRows) {
      const int rows = min(kMmaRows, p.M - m0);
      float acc[kMmaRows / 8][4] = {};
      for (int kc0 = p.k0; kc0 < p.k0 + p.kn; kc0 += kc_max) {
        const int kc = min(kc_max, p.k0 + p.kn - kc0);
        const unsigned stages = unsigned(kc + share.slices - 1) / unsigned(share.slices);
        const int kc_pad = int(stages) * share.slices, stride = pair_stride(kc_pad);
        __syncthreads();  // the previous chunk's x and ring are consumed
        WeightStream stream = stream_of<VectorWeights<T>>(p, w_col, kc0, kc, share);
        if (!active) stream.steps = 0;
        const unsigned issued = prefetched ? prefetch_loads(ctx) : 0;  // by MatmulTask::prefetch
        prefetched = false;
        stream.skip(issued);
        prologue(mine, stream, issued);
        stage_pairs<T>(ctx, p, x_b, m0, rows, kc0, kc, kc_pad, pairs);
        ctx.mark(0);
        const uint32_t* x = pairs + group * stride + kstep * 8 + pair;
        const int x_step = share.slices / 2;  // words of a row per stage
        if (rows <= 8)
          mma_stages<T, 1>(acc, mine, stream, row, x, x_step, stride, stages, rows);
        else if (rows <= 16)
          mma_stages<T, 2>(acc, mine, stream, row, x, x_step, stride, stages, rows);
        else if (rows <= 32)
          mma_stages<T, 4>(acc, mine, stream, row, x, x_step, stride, stages, rows);
        else
          mma_stages<T, 8>(acc, mine, stream, row, x, x_step, stride, stages, rows);
      }
      ctx.mark(1);
      // The warps of each column block sum through the ring, as [kstep][column][row]: the
      // last real load was waited for, and the barrier waits for every warp's last block.
      float* sums = reinterpret_cast<float*>(sh.ring);
      const int width = blocks * 16;
      __syncthreads();
#pragma unroll
      for (int t = 0; t < kMmaRows / 8; ++t) {
        if (t * 8 < rows) {
          float* at = sums + (kstep * width + block * 16 + group) * kMmaRows + t * 8 + 2 * pair;
          at[0] = acc[t][0];
          at[1] = acc[t][1];
          at[8 * kMmaRows] = acc[t][2];
          at[8 * kMmaRows + 1] = acc[t][3];
        }
      }
      __syncthreads();
      for (int i = ctx.thread; i < p.nn * rows; i += kWorkerThreads) {
        const int n = i / rows, r = i % rows;
        float sum = 0.0f;
        for (int s = 0; s < ksteps; ++s) sum += sums[(s * width + n) * kMmaRows + r];
        store(p, b, m0 + r, p.n0 + n, sum);
      }
      __syncthreads();  // the next pass's prologue refills the ring
      ctx.mark(2);
    }
  }

  // by_k on tensor cores: the rows of x (stage_pairs, k padded to 16) fit the pairs area at 8
  // rows or more a pass, and each column's loads are whole 16-byte vectors.
  __device__ static int k_pass_rows(int kn) {
    return min(kMmaRows / 2, kPairWords / pair_stride((kn + 15) / 16 * 16) / 8 * 8);
  }

  template <typename T>
  __device__ static bool on_tensor_cores_by_k(const Problem& p, int b) {
    if constexpr (sizeof(T) != 2) {
      return false;
    } else {
      return (p.flags & kTensorCores) && !(p.flags & kNorm) && p.x_dtype == p.w_dtype && p.extent_axis == 0 &&
             p.kn % 8 == 0 && k_pass_rows(p.kn) >= 8 && vectorizable<T>(p, b, 2);
    }
  }

  // by_k on tensor cores (on_tensor_cores_by_k): out^T = w^T x^T with w^T's rows (columns of
  // out) contiguous along k, so ldmatrix reads a 16 x 16 block of them as the A operand as
  // it lies. Each warp takes blocks of 16 columns in turn and streams each over all of k,
  // one block a stage: lane i loads k [8 (i / 16), +8) of column i % 8 + 8 (i / 8 % 2) of
  // the block into its own slot, the row ldmatrix asks of it. The warp's loads over its
  // blocks form one sequence kStages - 1 ahead; only its lanes read its slots, so it needs no
  // block barrier. Slots with no load (columns past the tile) are zeroed, as x past k is.
  // kTiles: n8 tiles of x's rows a pass takes at most (mma_stages says why it is a constant).
  template <typename T, int kTiles>
  __device__ __noinline__ static void by_k_mma(const TaskContext& caller_ctx, const Problem& caller_p, int b) {
    const TaskContext ctx = caller_ctx;
    const Problem p = caller_p;
    const int warp = ctx.thread / 32, lane = ctx.thread % 32, group = lane / 4, pair = lane % 4;
    const int64_t x_b = b / p.B1 * p.xs[0] + b % p.B1 * p.xs[1], w_b = b / p.B1 * p.ws[0] + b % p.B1 * p.ws[1];
    uint32_t* pairs = reinterpret_cast<uint32_t*>(ctx.shared);
    uint4* mine = Shared(ctx.shared).ring + ctx.thread;
    const int ksteps = (p.kn + 15) / 16, blocks = (p.nn + 15) / 16;
    const int stride = pair_stride(ksteps * 16), pass_rows = k_pass_rows(p.kn);
    const int my_blocks = warp < blocks ? (blocks - warp + kWarps - 1) / kWarps : 0;  // warp-uniform
    const unsigned steps = unsigned(my_blocks * ksteps);
    const int column = lane % 8 + 8 * (lane / 8 % 2), half = lane / 16;  // of this lane's loads
    // From a block's last k step to the warp's next block (session 18 stepped back ksteps
    // times, one too many: every block after a warp's first read 16 k early).
    const int64_t to_next_block = int64_t(16 * kWarps) * p.ws[3] - int64_t(ksteps - 1) * 16;
    for (int m0 = 0; m0 < p.M; m0 += pass_rows) {
      const int rows = min(pass_rows, p.M - m0);
      __syncthreads();  // the previous pass is consumed
      stage_pairs<T>(ctx, p, x_b, m0, rows, p.k0, p.kn, ksteps * 16, pairs);
      __syncthreads();
      const T* ahead =
          reinterpret_cast<const T*>(p.w) + w_b + int64_t(p.n0 + warp * 16 + column) * p.ws[3] + p.k0 + half * 8;
      int ahead_k = 0, ahead_c = warp * 16 + column;
      auto issue = [&](unsigned q) {
        uint4* slot = mine + (q % kStages) * kWorkerThreads;
        if (q < steps) {
          if (ahead_c < p.nn && ahead_k * 16 + half * 8 < p.kn)
            copy16_async(slot, ahead);
          else
            *slot = make_uint4(0, 0, 0, 0);
          if (++ahead_k < ksteps) {
            ahead += 16;
          } else {
            ahead_k = 0;
            ahead += to_next_block;
            ahead_c += 16 * kWarps;
          }
        }
        commit_copies();
      };
      for (unsigned q = 0; q < kStages - 1; ++q) issue(q);
      unsigned q = 0;
      for (int i = 0; i < my_blocks; ++i) {
        float acc[kTiles][4] = {};
        for (int ks = 0; ks < ksteps; ++ks, ++q) {
          wait_copies<kStages - 2>();  // load q has landed (load q + kStages - 1 is not issued yet)
          __syncwarp();                // every lane's load q, and every lane done with stage q - 1
          issue(q + kStages - 1);      // into stage q - 1's slot
          uint32_t a[4];
          load_matrices(a, mine + (q % kStages) * kWorkerThreads);
          const uint32_t* x = pairs + group * stride + ks * 8 + pair;
#pragma unroll
          for (int t = 0; t < kTiles; ++t) {
            if (t * 8 < rows) {  // uniform
              const uint32_t* xt = x + t * 8 * stride;
              mma_16x8x16<T>(acc[t], a, __float_as_uint(load_shared_f32(reinterpret_cast<const float*>(xt))),
                             __float_as_uint(load_shared_f32(reinterpret_cast<const float*>(xt + 4))));
            }
          }
        }
        // acc[t] is out^T's 16 x 8 tile: columns n (+ 8) by rows 2 pair (+ 1) of x's tile t.
        const int n = (warp + i * kWarps) * 16 + group;
#pragma unroll
        for (int t = 0; t < kTiles; ++t) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int m = t * 8 + 2 * pair + e % 2, c = n + e / 2 * 8;
            if (t * 8 < rows && m < rows && c < p.nn) store(p, b, m0 + m, p.n0 + c, acc[t][e]);
          }
        }
      }
      wait_copies<0>();  // the ring's zero-fill and copies past the last step land before the next pass
    }
  }

  // acc[r][v] += x[r, k] * w[k, n + v] for every row and column of a full tile.
  template <int rows, typename Weights>
  __device__ static void accumulate_all(float (&acc)[rows][Weights::kWidth], const typename Weights::Raw& w,
                                        const float* xk, int stride) {
#pragma unroll
    for (int r = 0; r < rows; ++r) {
      const float xv = load_shared_f32(xk + r * stride);
#pragma unroll
      for (int v = 0; v < Weights::kWidth; ++v) acc[r][v] = fmaf(xv, Weights::get(w, v), acc[r][v]);
    }
  }

  // acc[r][v] += x[m0 + r, k] * w[k, n + v] for the live rows and columns; x[r] = xk[r * stride].
  template <int rows, typename Weights>
  __device__ static void accumulate(float (&acc)[rows][Weights::kWidth], const typename Weights::Raw& w, int live,
                                    int live_rows, const float* xk, int stride) {
#pragma unroll
    for (int r = 0; r < rows; ++r) {
      if (r < live_rows) {
        const float xv = load_shared_f32(xk + r * stride);
#pragma unroll
        for (int v = 0; v < Weights::kWidth; ++v)
          if (v < live) acc[r][v] = fmaf(xv, Weights::get(w, v), acc[r][v]);
      }
    }
  }

  // Weights contiguous along k: L lanes per column (fewer when k is short), each lane
  // V consecutive k per load; the lanes' sums meet by shuffles.
  template <typename Weights, int rows>
  __device__ static void by_k(const TaskContext& ctx, const Problem& p, int b, const Shared& sh) {
    float* staged = sh.staged;
    constexpr int V = Weights::kWidth;
    const int lane = ctx.thread % 32, warp = ctx.thread / 32;
    int L = 32;
    while (L > 1 && (L / 2) * V >= p.kn) L /= 2;
    const int per_warp = 32 / L, sub = lane / L, sl = lane % L;
    const int64_t x_b = b / p.B1 * p.xs[0] + b % p.B1 * p.xs[1], w_b = b / p.B1 * p.ws[0] + b % p.B1 * p.ws[1];
    const int kc_max = chunk_of(p, rows, 32 * V);
    if constexpr (Weights::kAsync) {
      if constexpr (rows == 1 && sizeof(typename Weights::Elem) == 2) {
        if (p.kn == kColumnLoads * 32 * V) return by_k_buffered<Weights>(ctx, p, b, sh);
      }
      if (kc_max >= p.kn) return by_k_pipelined<Weights, rows>(ctx, p, b, sh, L);
    }
    for (int m0 = 0; m0 < p.M; m0 += rows) {
      const int live_rows = min(rows, max(0, p.live_rows - m0));
      // Columns in block-uniform steps: every thread meets every barrier, every lane every shuffle.
      for (int cb = 0; cb < p.nn; cb += kWarps * per_warp) {
        const int c = cb + warp * per_warp + sub, n = p.n0 + c;
        const bool active = c < p.nn && n < p.live_end && live_rows > 0;
        float acc[rows] = {};
        for (int kc0 = p.k0; kc0 < p.k0 + p.kn; kc0 += kc_max) {
          const int kc = min(kc_max, p.k0 + p.kn - kc0);
          if (kc_max < p.kn || cb == 0) stage_x(ctx, p, x_b, m0, live_rows, kc0, kc, staged);
          if (!active) continue;
          const int64_t w_col = w_b + int64_t(n) * p.ws[3] + kc0;
          const int vectors = kc / V;
          const int stride = padded(kc);
          int i = sl;
          for (; i + (kUnroll - 1) * L < vectors; i += kUnroll * L) {
            typename Weights::Raw raw[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) raw[u] = Weights::load(p.w, p.w_dtype, w_col + (i + u * L) * V);
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) dot<rows, Weights>(acc, raw[u], live_rows, staged + (i + u * L) * V, stride);
          }
          for (; i < vectors; i += L)
            dot<rows, Weights>(acc, Weights::load(p.w, p.w_dtype, w_col + i * V), live_rows, staged + i * V, stride);
          tail<rows>(p, acc, w_col, vectors * V + sl, kc, L, live_rows, staged, stride);
        }
        store_column<rows>(p, acc, b, m0, n, L, sl == 0 && c < p.nn);
      }
    }
  }

  // acc[r] += x[r, k] * w[w_col + k] for k = first, first + step, ... < end: the k past the
  // last whole 16-byte load.
  template <int rows>
  __device__ static void tail(const Problem& p, float (&acc)[rows], int64_t w_col, int first, int end, int step,
                              int live_rows, const float* staged, int stride) {
    for (int k = first; k < end; k += step) {
      const float wv = load_f32(p.w, p.w_dtype, w_col + k);
#pragma unroll
      for (int r = 0; r < rows; ++r)
        if (r < live_rows) acc[r] = fmaf(load_shared_f32(staged + r * stride + k), wv, acc[r]);
    }
  }

  // Sums acc over the column's L lanes (every lane of the warp joins) and, where `owner`,
  // stores rows m0 + r of column n.
  template <int rows>
  __device__ static void store_column(const Problem& p, const float (&acc)[rows], int b, int m0, int n, int L,
                                      bool owner) {
#pragma unroll
    for (int r = 0; r < rows; ++r) {
      if (m0 + r >= p.M) break;
      float sum = acc[r];
      for (int offset = L / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
      if (owner) store(p, b, m0 + r, n, sum);
    }
  }

  // by_k at one row of x where each lane of a column's 32 takes exactly kColumnLoads loads
  // (k = 2048 at 16-bit weights: a batch-1 tied LM head of a 2048-wide model). A warp's next
  // columns are in flight whole, one copy group a column, kBufferedColumns - 1 ahead of the
  // one it sums, and every address is the column's plus a constant, so that a load costs its
  // sums and little else: by_k_pipelined's load-by-load sequence took about 70 instructions
  // a 16-byte load, and the 1B step's batch-1 LM head streamed at 0.58 of an SM's share of
  // the copy rate, bound by its 8 warps' issue (session 12's ncu; a deeper ring, 23 loads a
  // thread in flight against 15, gained nothing: session 22). This loop: the 1B step 67 µs
  // faster at batch 1 (session 23).
  template <typename Weights>
  __device__ static void by_k_buffered(const TaskContext& ctx, const Problem& p, int b, const Shared& sh) {
    using T = typename Weights::Elem;
    constexpr int V = Weights::kWidth, kAlong = 32 * V;  // a column's k per load, all lanes
    static_assert(kColumnLoads * kAlong <= kBufferedX, "by_k_buffered's x outgrows its room below the ring");
    const int lane = ctx.thread % 32, warp = ctx.thread / 32;
    const int64_t x_b = b / p.B1 * p.xs[0] + b % p.B1 * p.xs[1], w_b = b / p.B1 * p.ws[0] + b % p.B1 * p.ws[1];
    const int columns = warp < p.nn ? (p.nn - warp + kWarps - 1) / kWarps : 0;  // warp-uniform
    const int live_rows = min(1, max(0, p.live_rows));
    stage_x(ctx, p, x_b, 0, live_rows, p.k0, p.kn, sh.staged);
    auto live = [&](int column) {
      const int c = warp + column * kWarps;
      return c < p.nn && p.n0 + c < p.live_end && live_rows > 0;
    };
    const T* w_first = reinterpret_cast<const T*>(p.w) + w_b + int64_t(p.n0 + warp) * p.ws[3] + p.k0 + lane * V;
    const int64_t column_stride = int64_t(kWarps) * p.ws[3];
    uint4* ring = reinterpret_cast<uint4*>(ctx.shared + (kPartials + kBufferedX) * 4) + ctx.thread;
    auto slots = [&](int column) { return ring + column % kBufferedColumns * kColumnLoads * kWorkerThreads; };
    auto issue = [&](int column) {  // the column-th of this warp's columns, as one group
      if (column < columns && live(column)) {
        const T* w = w_first + column * column_stride;
        uint4* slot = slots(column);
#pragma unroll
        for (int j = 0; j < kColumnLoads; ++j) copy16_async(slot + j * kWorkerThreads, w + j * kAlong);
      }
      commit_copies();
    };
#pragma unroll
    for (int column = 0; column < kBufferedColumns - 1; ++column) issue(column);
    const float* xk = sh.staged + lane * V;
    for (int column = 0; column < columns; ++column) {
      issue(column + kBufferedColumns - 1);
      wait_copies<kBufferedColumns - 1>();
      float even[1] = {}, odd[1] = {};  // two chains of sums
      if (live(column)) {
        const uint4* slot = slots(column);
#pragma unroll
        for (int j = 0; j < kColumnLoads; ++j)
          dot<1, Weights>(j % 2 ? odd : even, load_shared16(slot + j * kWorkerThreads), 1, xk + j * kAlong, 0);
      }
      even[0] += odd[0];
      store_column<1>(p, even, b, 0, p.n0 + warp + column * kWarps, 32, lane == 0 && warp + column * kWarps < p.nn);
    }
  }

  // by_k when x fits the stage whole: a lane's loads over all its columns form one
  // sequence, kept kStages - 1 ahead of use through the ring. The next load's address steps
  // along k, or on to the lane's next column, instead of being computed for each load.
  template <typename Weights, int rows>
  __device__ static void by_k_pipelined(const TaskContext& ctx, const Problem& p, int b, const Shared& sh, int L) {
    using T = typename Weights::Elem;
    constexpr int V = Weights::kWidth;
    const int lane = ctx.thread % 32, warp = ctx.thread / 32;
    const int per_warp = 32 / L, sl = lane % L;
    const int64_t x_b = b / p.B1 * p.xs[0] + b % p.B1 * p.xs[1], w_b = b / p.B1 * p.ws[0] + b % p.B1 * p.ws[1];
    const int vectors = p.kn / V, stride = padded(p.kn);
    // Loads per column, the same for every lane: at least one, where the column's scalar tail
    // and store happen (k may be shorter than a vector, or cut to 0). This lane's are fewer
    // where L does not divide the vectors.
    const int per_column = max(1, (vectors + L - 1) / L);
    const int lane_loads = sl < vectors ? (vectors - sl + L - 1) / L : 0;
    const int column_step = kWarps * per_warp, warp_first = warp * per_warp, first = warp_first + lane / L;
    const int columns = warp_first < p.nn ? (p.nn - warp_first + column_step - 1) / column_step : 0;  // warp-uniform
    const unsigned steps = unsigned(columns * per_column);
    const int64_t along = int64_t(L) * V, to_next_column = int64_t(column_step) * p.ws[3] - (per_column - 1) * along;
    uint4* mine = sh.ring + ctx.thread;
    for (int m0 = 0; m0 < p.M; m0 += rows) {
      const int live_rows = min(rows, max(0, p.live_rows - m0));
      stage_x(ctx, p, x_b, m0, live_rows, p.k0, p.kn, sh.staged);
      auto live = [&](int c) { return c < p.nn && p.n0 + c < p.live_end && live_rows > 0; };
      const T* ahead = reinterpret_cast<const T*>(p.w) + w_b + int64_t(p.n0 + first) * p.ws[3] + p.k0 + sl * V;
      int ahead_c = first, ahead_j = 0;
      bool ahead_live = live(first);
      auto issue = [&](unsigned q) {
        if (q < steps && ahead_live && ahead_j < lane_loads) copy16_async(mine + (q % kStages) * kWorkerThreads, ahead);
        commit_copies();
        if (++ahead_j < per_column) {
          ahead += along;
        } else {
          ahead_j = 0;
          ahead += to_next_column;
          ahead_c += column_step;
          ahead_live = live(ahead_c);
        }
      };
      for (unsigned q = 0; q < kStages - 1; ++q) issue(q);
      unsigned q = 0;
      for (int column = 0; column < columns; ++column) {
        const int c = first + column * column_step, n = p.n0 + c;
        const bool active = live(c);
        float acc[rows] = {};
        const float* xk = sh.staged + sl * V;
        for (int j = 0; j < per_column; ++j, ++q, xk += along) {
          issue(q + kStages - 1);
          wait_copies<kStages - 1>();
          if (active && j < lane_loads)
            dot<rows, Weights>(acc, load_shared16(mine + (q % kStages) * kWorkerThreads), live_rows, xk, stride);
        }
        ctx.mark(1);
        if (active)
          tail<rows>(p, acc, w_b + int64_t(n) * p.ws[3] + p.k0, vectors * V + sl, p.kn, L, live_rows, sh.staged, stride);
        store_column<rows>(p, acc, b, m0, n, L, sl == 0 && c < p.nn);
        ctx.mark(2);
      }
    }
  }

  // acc[r] += sum_v x[m0 + r, k + v] * w[k + v]; x[r] = xk[r * stride + v], 16-byte aligned
  // when V is a multiple of 4.
  template <int rows, typename Weights>
  __device__ static void dot(float (&acc)[rows], const typename Weights::Raw& w, int live_rows, const float* xk,
                             int stride) {
    constexpr int V = Weights::kWidth;
#pragma unroll
    for (int r = 0; r < rows; ++r) {
      if (r < live_rows) {
        float x[V];
        if constexpr (V % 4 == 0) {
#pragma unroll
          for (int v = 0; v < V; v += 4) *reinterpret_cast<float4*>(x + v) = load_shared_f32x4(xk + r * stride + v);
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) x[v] = load_shared_f32(xk + r * stride + v);
        }
#pragma unroll
        for (int v = 0; v < V; ++v) acc[r] = fmaf(x[v], Weights::get(w, v), acc[r]);
      }
    }
  }

  // 16-byte weight loads: along n (axis 3) or along k (axis 2) from every column's start.
  template <typename T>
  __device__ static bool vectorizable(const Problem& p, int b, int along) {
    constexpr int V = 16 / sizeof(T);
    const int other = along == 3 ? 2 : 3;
    const int64_t first = b / p.B1 * p.ws[0] + b % p.B1 * p.ws[1] + int64_t(along == 3 ? p.n0 : p.k0);
    const int span = along == 3 ? p.nn : 0;  // along k a scalar tail finishes each column
    return p.ws[along] == 1 && span % V == 0 && (reinterpret_cast<uintptr_t>(p.w) + first * sizeof(T)) % 16 == 0 &&
           (p.ws[other] * sizeof(T)) % 16 == 0;
  }

  template <typename T>
  __device__ static void dispatch(const TaskContext& ctx, const Problem& p, int b, const Shared& sh, bool prefetched) {
    constexpr int V = 16 / sizeof(T);
    if (vectorizable<T>(p, b, 3)) {
      if (column_rows<V>(p.M) == 1)
        by_columns<VectorWeights<T>, 1>(ctx, p, b, sh, prefetched);
      else
        by_columns<VectorWeights<T>, kColumnRows<V>>(ctx, p, b, sh, prefetched);
    } else if (vectorizable<T>(p, b, 2)) {
      if (p.M == 1)
        by_k<VectorWeights<T>, 1>(ctx, p, b, sh);
      else
        by_k<VectorWeights<T>, kRows>(ctx, p, b, sh);
    } else if (p.ws[2] == 1 && p.ws[3] != 1) {
      by_k<ScalarWeights, kRows>(ctx, p, b, sh);
    } else {
      by_columns<ScalarWeights, kRows>(ctx, p, b, sh, false);
    }
  }

  __device__ static Problem problem_of(const TaskContext& ctx) {
    const int32_t* desc = ctx.descriptor();
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
    p.residual = p.flags & kResidual ? ctx.operand<const char>(extra++) : nullptr;
    p.bias = p.flags & kBias ? ctx.operand<const char>(extra) : nullptr;
    p.n0 = ctx.desc.dims[2];
    p.nn = ctx.desc.dims[3];
    p.k0 = ctx.desc.dims[4];
    p.kn = ctx.desc.dims[5];
    p.live_rows = p.M;
    p.live_end = p.n0 + p.nn;
    p.extent_axis = desc[20];
    return p;
  }

  // The first weight loads of by_columns' first chunk, issued before the task's inputs are
  // ready (kTaskPrefetch: the compiler set it for weights no task writes, without an extent).
  // `run` then skips them; prefetchable() is both sides' test of the path. Asking L2 for
  // more of the tile meanwhile (prefetch.global.L2) made the 1B step slower, the more so the
  // more was asked (session 17: 32 loads a thread 83 µs, 64 loads 200 µs).
  template <typename T>
  __device__ static void prefetch_as(const TaskContext& ctx, const Problem& p) {
    const int b = ctx.desc.dims[0];
    constexpr int V = 16 / sizeof(T);
    const ColumnShare share(p.nn, V, ctx.thread);
    const int n = p.n0 + share.g * V;
    if (share.s >= share.slices || share.g >= share.groups || p.M <= 0) return;
    const bool mma = on_tensor_cores<T>(p);
    const int kc = mma ? mma_chunk(p, share.slices) : min(chunk_of(p, column_rows<V>(p.M), 4), p.kn);
    const int64_t w_col = b / p.B1 * p.ws[0] + b % p.B1 * p.ws[1] + int64_t(n) * p.ws[3];
    WeightStream stream = stream_of<VectorWeights<T>>(p, w_col, p.k0, kc, share);
    uint4* mine = Shared(ctx.shared).ring + (mma ? mma_slot(share.s, share.g, share.round_groups) : ctx.thread);
    prologue(mine, stream, 0, prefetch_loads(ctx));
  }

  __device__ static bool prefetchable(const TaskContext& ctx, const Problem& p) {
    if (p.extent_axis != 0 || ctx.desc.dims[1] != 1) return false;
    const int b = ctx.desc.dims[0];
    if (p.w_dtype == kBF16) return vectorizable<__nv_bfloat16>(p, b, 3);
    if (p.w_dtype == kF16) return vectorizable<__half>(p, b, 3);
    return p.w_dtype == kF32 && vectorizable<float>(p, b, 3);
  }

  __device__ static void prefetch(const TaskContext& ctx) {
    const Problem p = problem_of(ctx);
    if (!prefetchable(ctx, p)) return;
    if (p.w_dtype == kBF16)
      prefetch_as<__nv_bfloat16>(ctx, p);
    else if (p.w_dtype == kF16)
      prefetch_as<__half>(ctx, p);
    else
      prefetch_as<float>(ctx, p);
  }

  // The compiler keeps dispatch<float> out of line: it gets a copy of the problem, so that
  // `run`'s own does not have to live in memory (each thread's ~180 bytes stored at every
  // task's start and read back from there by the inlined bf16 and f16 paths).
  __device__ static void dispatch_f32(const TaskContext& ctx, Problem p, int b, const Shared& sh, bool prefetched) {
    dispatch<float>(ctx, p, b, sh, prefetched);
  }

  // A task of one batch index whose tiles go through tensor cores (on_tensor_cores).
  __device__ static bool runs_on_tensor_cores(const TaskContext& ctx, const Problem& p) {
    const int b = ctx.desc.dims[0];
    if (ctx.desc.dims[1] != 1) return false;
    if (p.w_dtype == kBF16)
      return by_columns_on_tensor_cores<__nv_bfloat16>(p, b) || on_tensor_cores_by_k<__nv_bfloat16>(p, b);
    return p.w_dtype == kF16 && (by_columns_on_tensor_cores<__half>(p, b) || on_tensor_cores_by_k<__half>(p, b));
  }

  // run() hands such a task over whole and returns, so that nothing of its own stays live
  // across the call (the workers spilled when the call sat in dispatch). It takes no struct
  // of its caller's but the context, and copies that: the loops would read them from the
  // caller's stack (LDL).
  __device__ __noinline__ static void run_on_tensor_cores(const TaskContext& caller_ctx, bool prefetched) {
    const TaskContext ctx = caller_ctx;
    const Problem p = problem_of(ctx);
    if (p.w_dtype == kBF16)
      run_on_tensor_cores_as<__nv_bfloat16>(ctx, p, prefetched);
    else
      run_on_tensor_cores_as<__half>(ctx, p, prefetched);
  }

  template <typename T>
  __device__ static bool by_columns_on_tensor_cores(const Problem& p, int b) {
    return on_tensor_cores<T>(p) && vectorizable<T>(p, b, 3);
  }

  template <typename T>
  __device__ static void run_on_tensor_cores_as(const TaskContext& ctx, const Problem& p, bool prefetched) {
    const int b = ctx.desc.dims[0];
    if (by_columns_on_tensor_cores<T>(p, b))
      by_columns_mma<T>(ctx, p, b, prefetched);
    else
      if (p.M <= 8)
        by_k_mma<T, 1>(ctx, p, b);
      else
        by_k_mma<T, kMmaRows / 16>(ctx, p, b);
  }

  __device__ static void run(const TaskContext& ctx) {
    Problem p = problem_of(ctx);
    if ((p.flags & kTensorCores) && runs_on_tensor_cores(ctx, p)) {  // stages its own x, as 16-bit pairs
      run_on_tensor_cores(ctx, ctx.prefetched && prefetchable(ctx, p));
      return;
    }
    if (stages_whole(ctx, p)) {
      stage_whole(ctx, p, Shared(ctx.shared).staged);
      p.x = nullptr;  // the loops stage nothing; a flag would hold a register through them
    } else if (p.flags & kNorm) {  // passes/norm_linear.py folds a norm only where it holds
      report_unstaged_norm(ctx, p.M);
      return;
    }
    ctx.mark(0);
    const bool prefetched = ctx.prefetched && prefetchable(ctx, p);
    if (p.extent_axis) {
      const int bound = p.extent_axis == 1 ? p.M : p.extent_axis == 2 ? p.n0 + p.nn : p.k0 + p.kn;
      const int limit = min(max(*ctx.operand<const int32_t>(ctx.desc.num_operands - 1), 0), bound);
      if (p.extent_axis == 1) p.live_rows = limit;
      if (p.extent_axis == 2) p.live_end = min(p.live_end, limit);
      if (p.extent_axis == 3) p.kn = max(0, min(p.k0 + p.kn, limit) - p.k0);
    }
    const Shared sh(ctx.shared);
    const int b_end = ctx.desc.dims[0] + ctx.desc.dims[1];
    for (int b = ctx.desc.dims[0]; b < b_end; ++b) {
      if (p.w_dtype == kBF16)
        dispatch<__nv_bfloat16>(ctx, p, b, sh, prefetched);
      else if (p.w_dtype == kF16)
        dispatch<__half>(ctx, p, b, sh, prefetched);
      else
        dispatch_f32(ctx, p, b, sh, prefetched);
    }
  }
};

}  // namespace mpk
