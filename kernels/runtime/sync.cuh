// Memory-ordering primitives and the watchdog every spin-wait goes through.
#pragma once

#include <stdint.h>

#include "program_format.h"

namespace mpk {

__device__ __forceinline__ uint64_t ld_acquire(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ uint64_t ld_relaxed(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ uint32_t ld_relaxed(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void st_release(uint64_t* p, uint64_t v) {
  asm volatile("st.release.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ void st_relaxed(uint64_t* p, uint64_t v) {
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ void st_relaxed(uint32_t* p, uint32_t v) {
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// acq_rel: the trigger that completes an event must also see every earlier
// trigger's data before it hands the event on.
__device__ __forceinline__ uint64_t atom_add_acq_rel(uint64_t* p, uint64_t v) {
  uint64_t old;
  asm volatile("atom.add.acq_rel.gpu.global.u64 %0, [%1], %2;" : "=l"(old) : "l"(p), "l"(v) : "memory");
  return old;
}

__device__ __forceinline__ uint64_t atom_add_relaxed(uint64_t* p, uint64_t v) {
  uint64_t old;
  asm volatile("atom.add.relaxed.gpu.global.u64 %0, [%1], %2;" : "=l"(old) : "l"(p), "l"(v) : "memory");
  return old;
}

// Fire-and-forget: the producer does not wait for the counter's old value.
__device__ __forceinline__ void red_add_release(uint64_t* p, uint64_t v) {
  asm volatile("red.release.gpu.global.add.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ void red_add_relaxed(uint64_t* p, uint64_t v) {
  asm volatile("red.relaxed.gpu.global.add.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ void fence_acq_rel_gpu() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }

// System scope: another process's kernel (an NVSHMEM peer, over NVLink or on
// the same GPU) writes or reads these words.
__device__ __forceinline__ uint64_t ld_acquire_sys(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void red_add_release_sys(uint64_t* p, uint64_t v) {
  asm volatile("red.release.sys.global.add.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ void fence_acq_rel_sys() { asm volatile("fence.acq_rel.sys;" ::: "memory"); }

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Records the first failure; later ones only see `abort` already set.
__device__ __forceinline__ void report_error(ErrorRecord* err, uint32_t code, uint32_t task,
                                             uint32_t event, uint32_t iteration, uint64_t observed,
                                             uint64_t expected) {
  if (atomicCAS(&err->code, 0u, code) == 0u) {
    err->block = blockIdx.x;
    err->task = task;
    err->event = event;
    err->iteration = iteration;
    err->observed = observed;
    err->expected = expected;
  }
  __threadfence();
  st_relaxed(&err->abort, 1u);
}

// A spin-wait's budget. `poll` is cheap: the clock and the abort flag are read
// once every 64 spins.
class Watchdog {
 public:
  __device__ Watchdog(const ErrorRecord* err, uint64_t budget_ns)
      : err_(err), budget_ns_(budget_ns), start_(global_timer_ns()) {}

  enum Verdict { kWait, kAborted, kExpired };

  __device__ __forceinline__ Verdict poll() {
    if ((++spins_ & 63u) != 0) return kWait;
    if (ld_relaxed(&err_->abort) != 0) return kAborted;
    if (global_timer_ns() - start_ > budget_ns_) return kExpired;
    return kWait;
  }

 private:
  const ErrorRecord* err_;
  uint64_t budget_ns_;
  uint64_t start_;
  uint32_t spins_ = 0;
};

}  // namespace mpk
