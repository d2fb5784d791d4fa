// NVSHMEM beside XLA: initialization from a unique id, symmetric buffers, and
// the view the megakernel binds (kernels/runtime/symmetric.h). Without
// NVSHMEM in the build every call returns an error saying so.
#pragma once

#include <cstdint>
#include <string>

namespace jax_mpk {

struct NvshmemInfo {
  uint32_t pe;
  uint32_t num_pes;
  uint64_t heap_bytes;
  int status;  // nvshmemx_init_status(): 2 initialized, 3/4 several PEs per GPU (limited / with MPS)
};

bool nvshmem_built();
// The bytes of a fresh nvshmemx_uniqueid_t, for rank 0 to share.
std::string nvshmem_unique_id(std::string* out);
// Collective over `num_pes` processes. The JAX backend must exist: NVSHMEM
// joins the primary context of `device`, the one XLA runs on.
std::string nvshmem_initialize(int device, const std::string& unique_id, uint32_t pe, uint32_t num_pes,
                               uint64_t heap_bytes, NvshmemInfo* out);
// Collective: every PE allocates the same sizes in the same order. Zeroed.
std::string symmetric_allocate(uint64_t bytes, uint32_t* id, uint64_t* address);
std::string symmetric_free(uint32_t id);
// Zeroes the buffer on this PE and restarts its signal counts (call on every PE, then barrier).
std::string symmetric_zero(uint32_t id);
std::string symmetric_copy(uint32_t id, uint64_t offset, void* host, uint64_t bytes, bool to_device);
std::string nvshmem_finalize();

}  // namespace jax_mpk
