// Warp-level tensor core operations (sm_80+ mma.sync, ldmatrix) on 16-bit floats with
// float32 accumulation. Fragment layouts follow the PTX ISA's m16n8k16 figures: with
// group = lane / 4 and pair = lane % 4,
//   A (16 x 16, row-major): a[0] = A[group][2 pair, +1], a[1] = A[group + 8][...],
//                           a[2] = A[group][2 pair + 8, +1], a[3] = A[group + 8][... + 8]
//   B (16 x 8, by columns): b[0] = B[2 pair, +1][group], b[1] = B[2 pair + 8, +1][group]
//   C (16 x 8, row-major):  c[0..1] = C[group][2 pair, +1], c[2..3] = C[group + 8][...]
// where a register holds two elements, the lower index in its low half.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

namespace mpk {

// Four 8x8 matrices of 16-bit elements from shared memory, transposed: lanes 8i..8i+7 give
// the addresses of matrix i's rows (16 bytes each); register i of a lane gets elements
// (2 pair, group) and (2 pair + 1, group) of matrix i.
__device__ __forceinline__ void load_matrices_transposed(uint32_t (&r)[4], const void* row) {
  const uint32_t at = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(at)
               : "memory");
}

// Four 8x8 matrices of 16-bit elements from shared memory: lanes 8i..8i+7 give the
// addresses of matrix i's rows (16 bytes each); register i of a lane gets elements
// (group, 2 pair) and (group, 2 pair + 1) of matrix i.
__device__ __forceinline__ void load_matrices(uint32_t (&r)[4], const void* row) {
  const uint32_t at = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(at)
               : "memory");
}

// Two floats as the 16-bit pair of a fragment register, `low` in the low half.
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float low, float high) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(low, high);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(low, high);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

// c += A B for one m16n8k16 tile.
template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

}  // namespace mpk
