// Asynchronous 16-byte copies from global to shared memory (cp.async, sm_80+): a thread
// keeps many loads in flight without holding registers for them. Each thread waits only
// for its own copies, so a thread that reads back just what it copied needs no barrier.
#pragma once

#include <stdint.h>

namespace mpk {

// An L2 cache policy: the lines a copy brings in are the first to leave L2. Not volatile: the
// compiler builds it once, outside the loops, in uniform registers.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// The bytes are marked first to leave L2: a weight is read once a step, and a step streams
// many times L2's size of them, which would otherwise evict what the next small task needs
// from L2 (its code, its inputs, the KV cache).
__device__ __forceinline__ void copy16_async(void* shared, const void* global) {
  const uint32_t to = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(to), "l"(global),
               "l"(evict_first_policy())
               : "memory");
}

// Asks this SM's L1 to fetch the line holding `global` (a hint: no registers, no wait), for
// plain loads that follow soon.
__device__ __forceinline__ void prefetch_l1(const void* global) {
  asm volatile("prefetch.global.L1 [%0];\n" ::"l"(global));
}

// A slot of a ring filled by copy16_async, as registers: one 16-byte shared load. Reading
// the slot through a reference lets the compiler load it element by element instead (8
// two-byte loads for bf16, each with a 4-way bank conflict: the session-8 profile).
__device__ __forceinline__ uint4 load_shared16(const void* shared) {
  uint4 v;
  const uint32_t from = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(from)
               : "memory");
  return v;
}

// Floats a task staged in its arena (the matmul's x, the attention's q and softmax
// weights), read as shared loads (LDS). Read through a generic pointer, they compile to
// generic loads, which wait on the long scoreboard as global ones do (5% of the matmul's
// samples in session 15's ncu); promising the compiler the pointer is shared
// (__builtin_assume of __isShared) made it drop live code instead (exp15/arena). Volatile:
// the compiler must not move them above the barrier or copy wait that makes them ready.
__device__ __forceinline__ float load_shared_f32(const float* shared) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(shared))));
  return v;
}

__device__ __forceinline__ float4 load_shared_f32x4(const float* shared) {
  float4 v;
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(shared))));
  return v;
}

// Closes the group of this thread's copies issued since the last commit (maybe none).
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most `pending` of this thread's committed groups are still in flight.
template <int pending>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
}

}  // namespace mpk
