// The process's view of NVSHMEM symmetric memory, as the megakernel binds it:
// which PE this is, how to reach each peer's copy of a symmetric address, and
// the symmetric buffers allocated beside the JAX arrays. Plain C++: the NVSHMEM
// bootstrap (ffi/nvshmem_bootstrap.cc) fills it in; nothing here calls NVSHMEM.
#pragma once

#include <stdint.h>

#include <string>

#include "program_format.h"

namespace mpk {

struct SymmetricView {
  int device;                     // the CUDA device NVSHMEM was initialized on
  uint32_t pe;
  uint32_t num_pes;
  int64_t peer_delta[kMaxPes];    // peer copy = local symmetric address + peer_delta[pe]
  uint64_t heap_bytes;            // the symmetric heap NVSHMEM reserved per PE
};

struct SymmetricBuffer {
  uint8_t* data;
  uint64_t bytes;
  uint64_t signal_epoch;  // iterations already signalled through it (as a signal buffer)
  bool poisoned;          // a launch using it for signals failed: its counts are unknown
};

// Null clears the view (after NVSHMEM is finalized).
void set_symmetric_view(const SymmetricView* view);
bool get_symmetric_view(SymmetricView* out);

void add_symmetric_buffer(uint32_t id, uint8_t* data, uint64_t bytes);
void remove_symmetric_buffer(uint32_t id);
bool find_symmetric_buffer(uint32_t id, SymmetricBuffer* out);
// After a launch that used buffer `id` for its signal words.
void finish_signal_launch(uint32_t id, bool ok, uint64_t iterations);
// The buffer's words were zeroed on every PE: signals count from zero again.
void reset_signal_epoch(uint32_t id);

}  // namespace mpk
