// Host API of the persistent kernel: validate a program blob, upload it once,
// and run it on a stream against one call's buffers. No framework headers.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "launch_outcome.h"
#include "launch_params.h"
#include "program_format.h"

namespace mpk {

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
// slot binding, the control-region memset, the launch and the wait for the error record
// (none with kProgramDeferErrors: the kernel time is then that of the newest launch read).
struct LaunchTiming {
  double kernel_us = 0, run_us = 0;
};
LaunchTiming last_launch_timing();

// Waits for every launch of every program in this process and returns the first failure
// not reported yet (kProgramDeferErrors launches return before their outcome is known).
std::string check_launches();

class Megakernel {
 public:
  // Validates the blob; the upload waits for the first run, on that run's device.
  static std::string create(std::vector<uint8_t> blob, std::unique_ptr<Megakernel>* out);
  ~Megakernel();

  // Runs the program to termination on `stream` and waits for it. A watchdog expiry or any
  // device-side failure comes back as a message naming the task and event involved. With
  // kProgramDeferErrors (and no NVSHMEM signals) it returns once the launch is queued; a
  // failure then fills the launch's results with NaN and comes back from a later run() or
  // check_launches(), and a run() that finds one does not launch.
  std::string run(cudaStream_t stream, const std::vector<Buffer>& args,
                  const std::vector<Buffer>& rets, Buffer workspace);
  // Waits for this program's launches; the first failure not reported yet.
  std::string collect_launches();

  const ProgramHeader& header() const { return header_; }

 private:
  explicit Megakernel(std::vector<uint8_t> blob);
  std::string bind_and_launch(cudaStream_t stream, const std::vector<Buffer>& args,
                              const std::vector<Buffer>& rets, Buffer workspace);
  std::string upload(cudaStream_t stream);
  std::string launch(cudaStream_t stream, Buffer workspace, const std::vector<Buffer>& rets);  // params_ bound
  bool defers_errors() const;
  // kProgramPoisonResults: NaN bytes in the results that are not donated, and in the intermediates.
  std::string poison(cudaStream_t stream, const std::vector<Buffer>& args, const std::vector<Buffer>& rets,
                     Buffer workspace);

  std::vector<uint8_t> blob_;
  ProgramHeader header_;
  BlobLayout layout_;
  std::unique_ptr<LaunchParams> params_;  // 8 KB of slot pointers, reused per run
  uint8_t* device_blob_ = nullptr;
  LaunchOutcomes outcomes_;
  std::mutex mutex_;  // one run() at a time: params_ and outcomes_ are shared
  int device_ = -1;
};

}  // namespace mpk
