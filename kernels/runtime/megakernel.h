// Host API of the persistent kernel: validate a program blob, upload it once,
// and run it on a stream against one call's buffers. No framework headers.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "launch_params.h"
#include "program_format.h"

namespace mpk {

struct Buffer {
  void* data;
  size_t bytes;
};

// The kinds the task library implements, as (kind, name).
std::vector<std::pair<int, std::string>> task_kinds();

// An empty string when the blob is a well-formed program, else the reason.
std::string validate_program(const uint8_t* blob, size_t size);

// What went wrong in a launch, from its error record and, when they could be
// read back, its event counters (else null).
std::string describe_failure(const uint8_t* blob, const ErrorRecord& err, const uint64_t* counters);

struct DeviceInfo {
  int device;
  int sm_count;
  size_t shared_memory_per_block;
  std::string name;
};
std::string query_device(int device, DeviceInfo* out);

// The device-to-device copy rate on the current device, counting bytes read
// plus bytes written: the HBM ceiling benchmarks report against.
std::string measure_copy_rate(size_t bytes, int repeats, double* bytes_per_second);

// Where the last launch in this process spent its time, for benchmarks: the kernel alone
// (CUDA events around it on the stream) and the whole run() on the host, which adds the
// slot binding, the control-region memset, the launch and the wait for the error record.
struct LaunchTiming {
  double kernel_us = 0, run_us = 0;
};
LaunchTiming last_launch_timing();

class Megakernel {
 public:
  // Validates the blob; the upload waits for the first run, on that run's device.
  static std::string create(std::vector<uint8_t> blob, std::unique_ptr<Megakernel>* out);
  ~Megakernel();

  // Runs the program to termination (not thread-safe: one run at a time) on `stream` and waits for it. A watchdog
  // expiry or any device-side failure comes back as a message naming the
  // task and event involved.
  std::string run(cudaStream_t stream, const std::vector<Buffer>& args,
                  const std::vector<Buffer>& rets, Buffer workspace);

  const ProgramHeader& header() const { return header_; }

 private:
  explicit Megakernel(std::vector<uint8_t> blob);
  std::string bind_and_launch(cudaStream_t stream, const std::vector<Buffer>& args,
                              const std::vector<Buffer>& rets, Buffer workspace);
  std::string upload(cudaStream_t stream);
  std::string launch(cudaStream_t stream, Buffer workspace);  // with params_ bound
  // kProgramPoisonResults: NaN bytes in the results that are not donated, and in the intermediates.
  std::string poison(cudaStream_t stream, const std::vector<Buffer>& args, const std::vector<Buffer>& rets,
                     Buffer workspace);
  std::string diagnose(const ErrorRecord& err, const uint8_t* workspace, cudaStream_t stream) const;

  std::vector<uint8_t> blob_;
  ProgramHeader header_;
  BlobLayout layout_;
  std::unique_ptr<LaunchParams> params_;  // 8 KB of slot pointers, reused per run
  uint8_t* device_blob_ = nullptr;
  ErrorRecord* host_error_ = nullptr;  // pinned
  cudaEvent_t kernel_start_ = nullptr, kernel_end_ = nullptr;
  int device_ = -1;
};

}  // namespace mpk
