// Element types of the LLM task kinds (codes of jax_mpk.task_kinds.DType) and the
// conversions every kind shares. Values travel as "held" 32-bit words: float dtypes
// as float32 bits, signed integers sign-extended, unsigned ones and bool zero-extended.
#pragma once

#include "../runtime/task_context.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace mpk {

enum DType : int32_t {
  kF32 = 0,
  kBF16 = 1,
  kF16 = 2,
  kI32 = 3,
  kU32 = 4,
  kBool = 5,  // one byte, 0 or 1
  kI8 = 6,
  kU8 = 7,
  kNumDTypes
};

MPK_HOST_DEVICE inline bool dtype_valid(int32_t d) { return d >= 0 && d < kNumDTypes; }
MPK_HOST_DEVICE inline int dtype_size(int32_t d) { return d == kF32 || d == kI32 || d == kU32 ? 4 : d <= kF16 ? 2 : 1; }
MPK_HOST_DEVICE inline bool dtype_is_float(int32_t d) { return d <= kF16; }
MPK_HOST_DEVICE inline bool dtype_is_signed(int32_t d) { return d == kI32 || d == kI8; }

__device__ __forceinline__ float bits_f(uint32_t b) { return __uint_as_float(b); }
__device__ __forceinline__ uint32_t f_bits(float f) { return __float_as_uint(f); }

// float32 rounded to nearest even in a narrower float dtype, and back.
__device__ __forceinline__ float round_float(float f, int32_t d) {
  if (d == kBF16) return __bfloat162float(__float2bfloat16_rn(f));
  if (d == kF16) return __half2float(__float2half_rn(f));
  return f;
}

// The one logistic of the kinds (ELEMENTWISE's LOGISTIC, MATMUL's gate): a folded gating
// must round as the elementwise op it replaces.
__device__ __forceinline__ float logistic(float x) { return 1.0f / (1.0f + expf(-x)); }

// An integer held value wrapped into integer dtype d, as numpy's astype does.
__device__ __forceinline__ uint32_t wrap_int(uint32_t v, int32_t d) {
  switch (d) {
    case kBool: return v != 0;
    case kI8: return uint32_t(int32_t(int8_t(v & 0xFF)));
    case kU8: return v & 0xFF;
    default: return v;
  }
}

// Held value of dtype `from` as dtype `to`; rounds to a narrow float dtype only when asked
// (a CONVERT or a store does, a LOAD into a float register does not).
__device__ __forceinline__ uint32_t convert_held(uint32_t v, int32_t from, int32_t to, bool round) {
  if (dtype_is_float(from)) {
    const float f = bits_f(v);
    if (dtype_is_float(to)) return f_bits(round ? round_float(f, to) : f);
    if (to == kBool) return f != 0.0f;
    if (to == kU32) return uint32_t(static_cast<long long>(f));
    return wrap_int(uint32_t(static_cast<int>(f)), to);
  }
  if (dtype_is_float(to)) {
    const float f = dtype_is_signed(from) ? float(int32_t(v)) : float(v);
    return f_bits(round ? round_float(f, to) : f);
  }
  return wrap_int(v, to);
}

// Element i of an array of dtype d, as a held value.
__device__ __forceinline__ uint32_t load_held(const void* base, int32_t d, int64_t i) {
  switch (d) {
    case kF32: return static_cast<const uint32_t*>(base)[i];
    case kBF16: return f_bits(__bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]));
    case kF16: return f_bits(__half2float(static_cast<const __half*>(base)[i]));
    case kI32:
    case kU32: return static_cast<const uint32_t*>(base)[i];
    case kBool: return static_cast<const uint8_t*>(base)[i] != 0;
    case kI8: return uint32_t(int32_t(static_cast<const int8_t*>(base)[i]));
    default: return static_cast<const uint8_t*>(base)[i];
  }
}

// Stores held value v (already of dtype d) as element i of an array of dtype d.
__device__ __forceinline__ void store_held(void* base, int32_t d, int64_t i, uint32_t v) {
  switch (d) {
    case kF32:
    case kI32:
    case kU32: static_cast<uint32_t*>(base)[i] = v; break;
    case kBF16: static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(bits_f(v)); break;
    case kF16: static_cast<__half*>(base)[i] = __float2half_rn(bits_f(v)); break;
    default: static_cast<uint8_t*>(base)[i] = uint8_t(v); break;
  }
}

// Float-valued loads and stores for the arithmetic kinds (matmul, reduce).
__device__ __forceinline__ float load_f32(const void* base, int32_t d, int64_t i) {
  return bits_f(convert_held(load_held(base, d, i), d, kF32, false));
}

__device__ __forceinline__ void store_f32(void* base, int32_t d, int64_t i, float f) {
  store_held(base, d, i, convert_held(f_bits(f), kF32, d, true));
}

}  // namespace mpk
