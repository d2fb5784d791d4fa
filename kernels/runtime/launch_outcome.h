// What the host learns of a megakernel launch once it has ended, with no copy or wait of
// its own. A small kernel queued behind each launch writes the launch's error record into
// pinned host memory (and, when the launch failed, its event counters), and fills the
// results it is given with 0xFF bytes (NaN in every float dtype), so that nothing computed
// from a failed launch passes for a number. The host reads the record once an event says
// the launch is over: at once, or (kProgramDeferErrors) at a later launch, which lets it
// prepare the next launch while this one runs.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "program_format.h"

namespace mpk {

struct Buffer {
  void* data;
  size_t bytes;
};

// The launches of one program whose outcome the host has not read yet, oldest first.
class LaunchOutcomes {
 public:
  static constexpr unsigned kMaxInFlight = 8;

  LaunchOutcomes() = default;
  LaunchOutcomes(const LaunchOutcomes&) = delete;
  LaunchOutcomes& operator=(const LaunchOutcomes&) = delete;
  ~LaunchOutcomes();  // waits for the launches still running (their outcomes unread)

  // Pinned memory for each slot: an error record, num_events counters, num_results buffers.
  std::string allocate(uint32_t num_events, uint32_t num_results);

  // Before a launch: frees a slot, waiting for the oldest launch when every slot is in flight.
  std::string make_room(const uint8_t* blob);
  // Around the kernel on `stream`: an event before it, then one after it, the report of its
  // record (poisoning `poison` if it failed) and an event after that.
  std::string before_kernel(cudaStream_t stream);
  std::string after_kernel(cudaStream_t stream, const uint8_t* workspace, const ControlLayout& control,
                           const std::vector<Buffer>& poison);

  // Reads the launches that have ended, oldest first; `wait`: all of them, waiting for any
  // still running. The message of the first failure read, else empty. `deferred` says the
  // failure is reported after its launch returned (the message says which launch it was).
  std::string collect(const uint8_t* blob, bool wait, bool deferred);

  // The kernel time of the newest launch read, in µs (CUDA events around it).
  double last_kernel_us() const { return last_kernel_us_; }

 private:
  struct Slot {
    ErrorRecord* record = nullptr;  // pinned, written by the report kernel
    uint64_t* counters = nullptr;   // pinned: the event counters of a failed launch
    Buffer* poison = nullptr;       // pinned: what the report kernel fills if the launch failed
    cudaEvent_t start = nullptr, end = nullptr, reported = nullptr;
    uint64_t launch = 0;  // 1-based number of the launch in this slot
  };
  // The oldest launch's outcome: "" (ended well), or its failure; `wait` for it to end,
  // else *ended says whether it had (and nothing is read if not).
  std::string read_oldest(const uint8_t* blob, bool wait, bool deferred, bool* ended);

  Slot slots_[kMaxInFlight];
  unsigned oldest_ = 0, in_flight_ = 0;
  uint32_t num_events_ = 0, num_results_ = 0;
  uint64_t launches_ = 0;
  double last_kernel_us_ = 0;
};

}  // namespace mpk
