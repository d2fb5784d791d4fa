#include "launch_outcome.h"

#include "cuda_check.h"
#include "megakernel.h"
#include "message.h"

namespace mpk {

namespace {

constexpr int kReportBlocks = 64, kReportThreads = 256;

// Queued behind a launch: copies its error record out, and when it failed, its event
// counters, and fills each poison buffer with 0xFF bytes.
__global__ void report_outcome(const ErrorRecord* error, const uint64_t* counters, uint32_t num_events,
                               ErrorRecord* record, uint64_t* counters_out, const Buffer* poison,
                               uint32_t num_poison) {
  const bool failed = error->code != kOk;
  if (blockIdx.x == 0 && threadIdx.x == 0) *record = *error;
  if (!failed) return;
  if (blockIdx.x == 0)
    for (uint32_t i = threadIdx.x; i < num_events; i += blockDim.x) counters_out[i] = counters[i];
  const size_t thread = size_t(blockIdx.x) * blockDim.x + threadIdx.x, threads = size_t(gridDim.x) * blockDim.x;
  for (uint32_t b = 0; b < num_poison; ++b) {
    const Buffer to = poison[b];
    if ((reinterpret_cast<uintptr_t>(to.data) | to.bytes) % 16 == 0) {
      for (size_t i = thread; i < to.bytes / 16; i += threads)
        static_cast<uint4*>(to.data)[i] = make_uint4(~0u, ~0u, ~0u, ~0u);
    } else {
      for (size_t i = thread; i < to.bytes; i += threads) static_cast<uint8_t*>(to.data)[i] = 0xFF;
    }
  }
}

template <typename T>
std::string allocate_pinned(T** out, size_t count) {
  MPK_CUDA(cudaHostAlloc(reinterpret_cast<void**>(out), sizeof(T) * (count ? count : 1), cudaHostAllocMapped));
  return "";
}

template <typename T>
std::string device_view(T* host, T** out) {
  MPK_CUDA(cudaHostGetDevicePointer(reinterpret_cast<void**>(out), host, 0));
  return "";
}

}  // namespace

std::string LaunchOutcomes::allocate(uint32_t num_events, uint32_t num_results) {
  num_events_ = num_events;
  num_results_ = num_results;
  for (Slot& s : slots_) {
    std::string why = allocate_pinned(&s.record, 1);
    if (why.empty()) why = allocate_pinned(&s.counters, num_events);
    if (why.empty()) why = allocate_pinned(&s.poison, num_results);
    if (!why.empty()) return why;
    MPK_CUDA(cudaEventCreate(&s.start));
    MPK_CUDA(cudaEventCreate(&s.end));
    MPK_CUDA(cudaEventCreateWithFlags(&s.reported, cudaEventDisableTiming));
  }
  return "";
}

LaunchOutcomes::~LaunchOutcomes() {
  for (; in_flight_ > 0; --in_flight_, oldest_ = (oldest_ + 1) % kMaxInFlight)
    cudaEventSynchronize(slots_[oldest_].reported);  // the report kernel writes the slot's memory
  for (Slot& s : slots_) {
    if (s.record) cudaFreeHost(s.record);
    if (s.counters) cudaFreeHost(s.counters);
    if (s.poison) cudaFreeHost(s.poison);
    if (s.start) cudaEventDestroy(s.start);
    if (s.end) cudaEventDestroy(s.end);
    if (s.reported) cudaEventDestroy(s.reported);
  }
}

std::string LaunchOutcomes::make_room(const uint8_t* blob) {
  if (in_flight_ < kMaxInFlight) return "";
  return read_oldest(blob, true, true, nullptr);
}

std::string LaunchOutcomes::before_kernel(cudaStream_t stream) {
  MPK_CUDA(cudaEventRecord(slots_[(oldest_ + in_flight_) % kMaxInFlight].start, stream));
  return "";
}

std::string LaunchOutcomes::after_kernel(cudaStream_t stream, const uint8_t* workspace, const ControlLayout& control,
                                         const std::vector<Buffer>& poison) {
  Slot& s = slots_[(oldest_ + in_flight_) % kMaxInFlight];
  if (poison.size() > num_results_) return "more buffers to poison than the program has results";
  MPK_CUDA(cudaEventRecord(s.end, stream));
  for (size_t i = 0; i < poison.size(); ++i) s.poison[i] = poison[i];
  ErrorRecord* record = nullptr;
  uint64_t* counters = nullptr;
  Buffer* list = nullptr;
  std::string why = device_view(s.record, &record);
  if (why.empty()) why = device_view(s.counters, &counters);
  if (why.empty()) why = device_view(s.poison, &list);
  if (!why.empty()) return why;
  report_outcome<<<kReportBlocks, kReportThreads, 0, stream>>>(
      reinterpret_cast<const ErrorRecord*>(workspace + control.error),
      reinterpret_cast<const uint64_t*>(workspace + control.event_counters), num_events_, record, counters, list,
      uint32_t(poison.size()));
  MPK_CUDA(cudaGetLastError());
  MPK_CUDA(cudaEventRecord(s.reported, stream));
  s.launch = ++launches_;
  ++in_flight_;
  return "";
}

std::string LaunchOutcomes::collect(const uint8_t* blob, bool wait, bool deferred) {
  while (in_flight_ > 0) {
    bool ended = true;
    std::string why = read_oldest(blob, wait, deferred, &ended);
    if (!ended) break;
    if (!why.empty()) return why;
  }
  return "";
}

std::string LaunchOutcomes::read_oldest(const uint8_t* blob, bool wait, bool deferred, bool* ended) {
  Slot& s = slots_[oldest_];
  const cudaError_t status = wait ? cudaEventSynchronize(s.reported) : cudaEventQuery(s.reported);
  if (status == cudaErrorNotReady) {
    *ended = false;
    return "";
  }
  oldest_ = (oldest_ + 1) % kMaxInFlight;
  --in_flight_;
  Message msg;
  if (deferred) msg << "launch " << s.launch << " of this program failed, and its results were filled with NaN: ";
  if (status != cudaSuccess) return msg.str() + cuda_error("the launch", status);
  float kernel_ms = 0;
  if (cudaEventElapsedTime(&kernel_ms, s.start, s.end) == cudaSuccess) last_kernel_us_ = 1e3 * kernel_ms;
  const ErrorRecord error = *s.record;
  if (error.code == kOk) return "";
  return msg.str() + describe_failure(blob, error, s.counters);
}

}  // namespace mpk
