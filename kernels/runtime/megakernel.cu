#include "megakernel.h"

#include "cuda_check.h"
#include "message.h"
#include "symmetric.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <set>

#include "scheduler.cuh"
#include "worker.cuh"

namespace mpk {

__global__ void __launch_bounds__(kWorkerThreads, 1) megakernel(const __grid_constant__ LaunchParams p) {
  if (p.schedule == kScheduleStatic) {
    run_static_worker(p, blockIdx.x);
    return;
  }
  if (blockIdx.x < p.num_workers) {
    run_dynamic_worker(p, blockIdx.x);
    return;
  }
  const uint32_t warp = threadIdx.x / 32;
  const uint32_t id = (blockIdx.x - p.num_workers) * kSchedulersPerBlock + warp;
  if (warp < kSchedulersPerBlock && id < p.num_schedulers && threadIdx.x % 32 == 0) {
    Scheduler(p, id).run();
  }
}

namespace {

uint32_t scheduler_blocks(const ProgramHeader& h) {
  if (h.schedule == kScheduleStatic) return 0;
  return (h.num_schedulers + kSchedulersPerBlock - 1) / kSchedulersPerBlock;
}

}  // namespace

std::string query_device(int device, DeviceInfo* out) {
  cudaDeviceProp prop;
  MPK_CUDA(cudaGetDeviceProperties(&prop, device));
  *out = DeviceInfo{device, prop.multiProcessorCount, prop.sharedMemPerBlockOptin, prop.name};
  return "";
}

std::string measure_copy_rate(size_t bytes, int repeats, double* bytes_per_second) {
  void *src = nullptr, *dst = nullptr;
  cudaEvent_t start, stop;
  MPK_CUDA(cudaMalloc(&src, bytes));
  MPK_CUDA(cudaMalloc(&dst, bytes));
  MPK_CUDA(cudaMemset(src, 0x5A, bytes));
  MPK_CUDA(cudaEventCreate(&start));
  MPK_CUDA(cudaEventCreate(&stop));
  MPK_CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));  // warm-up
  MPK_CUDA(cudaEventRecord(start));
  for (int i = 0; i < repeats; ++i) MPK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice));
  MPK_CUDA(cudaEventRecord(stop));
  MPK_CUDA(cudaEventSynchronize(stop));
  float ms = 0;
  MPK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  *bytes_per_second = 2.0 * bytes * repeats / (ms * 1e-3);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(src);
  cudaFree(dst);
  return "";
}

namespace {
LaunchTiming last_timing;  // written after each launch's wait; read between launches

// Every Megakernel alive in the process, for check_launches().
std::mutex live_mutex;
std::set<Megakernel*> live;
}  // namespace

Megakernel::Megakernel(std::vector<uint8_t> blob)
    : blob_(std::move(blob)),
      header_(*reinterpret_cast<const ProgramHeader*>(blob_.data())),
      layout_(header_),
      params_(new LaunchParams()) {}

std::string Megakernel::create(std::vector<uint8_t> blob, std::unique_ptr<Megakernel>* out) {
  std::string why = validate_program(blob.data(), blob.size());
  if (!why.empty()) return why;
  out->reset(new Megakernel(std::move(blob)));
  std::lock_guard<std::mutex> lock(live_mutex);
  live.insert(out->get());
  return "";
}

LaunchTiming last_launch_timing() { return last_timing; }

std::string check_launches() {
  std::lock_guard<std::mutex> lock(live_mutex);
  for (Megakernel* kernel : live) {
    std::string why = kernel->collect_launches();
    if (!why.empty()) return why;
  }
  return "";
}

Megakernel::~Megakernel() {
  {
    std::lock_guard<std::mutex> lock(live_mutex);
    live.erase(this);
  }
  // Nothing can raise from here: a failure nobody asked about is still said.
  for (std::string why = collect_launches(); !why.empty(); why = collect_launches())
    std::fprintf(stderr, "jax_mpk: %s\n", why.c_str());
  if (device_blob_) cudaFree(device_blob_);
}

std::string Megakernel::collect_launches() {
  std::lock_guard<std::mutex> lock(mutex_);
  return outcomes_.collect(blob_.data(), true, defers_errors());
}

bool Megakernel::defers_errors() const {
  return (header_.flags & kProgramDeferErrors) && header_.num_signals == 0;
}

std::string Megakernel::upload(cudaStream_t stream) {
  MPK_CUDA(cudaGetDevice(&device_));
  DeviceInfo info;
  std::string why = query_device(device_, &info);
  if (!why.empty()) return why;
  int per_sm = 0;
  MPK_CUDA(cudaFuncSetAttribute(megakernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kTaskSharedBytes));
  MPK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, megakernel, kWorkerThreads, kTaskSharedBytes));
  const uint64_t grid = uint64_t(header_.num_workers) + scheduler_blocks(header_);
  if (grid > uint64_t(per_sm) * info.sm_count) {
    Message msg;
    msg << "the program asks for " << header_.num_workers << " worker blocks and "
        << scheduler_blocks(header_) << " scheduler blocks, but only " << per_sm * info.sm_count
        << " blocks of the megakernel fit co-resident on " << info.name << " (" << info.sm_count
        << " SMs); compile it with fewer workers";
    return msg.str();
  }
  MPK_CUDA(cudaMalloc(&device_blob_, blob_.size()));
  MPK_CUDA(cudaMemcpyAsync(device_blob_, blob_.data(), blob_.size(), cudaMemcpyHostToDevice, stream));
  return outcomes_.allocate(header_.num_events, header_.num_rets);
}

std::string Megakernel::run(cudaStream_t stream, const std::vector<Buffer>& args,
                            const std::vector<Buffer>& rets, Buffer workspace) {
  const auto started = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mutex_);
  std::string why = bind_and_launch(stream, args, rets, workspace);
  const std::chrono::duration<double, std::micro> run_time = std::chrono::steady_clock::now() - started;
  last_timing.run_us = run_time.count();
  return why;
}

std::string Megakernel::bind_and_launch(cudaStream_t stream, const std::vector<Buffer>& args,
                                        const std::vector<Buffer>& rets, Buffer workspace) {
  const ProgramHeader& h = header_;
  if (args.size() != h.num_args || rets.size() != h.num_rets) {
    Message msg;
    msg << "the program takes " << h.num_args << " operands and " << h.num_rets
        << " results besides the workspace; the call passed " << args.size() << " and " << rets.size();
    return msg.str();
  }
  if (workspace.bytes < h.workspace_bytes) {
    return "the workspace buffer holds " + std::to_string(workspace.bytes) + " bytes; the program needs " +
           std::to_string(h.workspace_bytes);
  }
  if (!device_blob_) {
    std::string why = upload(stream);
    if (!why.empty()) return why;
  }
  SymmetricView view{};
  if (h.num_pes != 0) {
    Message msg;
    if (!get_symmetric_view(&view)) {
      msg << "the program runs on NVSHMEM PE " << h.pe << " of " << h.num_pes
          << ", but NVSHMEM is not initialized in this process: call jax_mpk.distributed.init() first";
      return msg.str();
    }
    if (view.pe != h.pe || view.num_pes != h.num_pes) {
      msg << "the program was compiled for NVSHMEM PE " << h.pe << " of " << h.num_pes << "; this process is PE "
          << view.pe << " of " << view.num_pes;
      return msg.str();
    }
    if (view.device != device_) {
      msg << "NVSHMEM was initialized on CUDA device " << view.device << ", but this launch runs on device "
          << device_ << ": initialize it on the device of the arrays the program runs on";
      return msg.str();
    }
  }

  LaunchParams& params = *params_;
  params.control = ControlLayout(h);
  const auto* slots = reinterpret_cast<const SlotDesc*>(blob_.data() + layout_.slots);
  for (uint32_t i = 0; i < h.num_slots; ++i) {
    const SlotDesc& s = slots[i];
    uint8_t* base = nullptr;
    size_t available = 0;
    switch (s.source) {
      case kSlotArg: base = static_cast<uint8_t*>(args[s.index].data); available = args[s.index].bytes; break;
      case kSlotRet: base = static_cast<uint8_t*>(rets[s.index].data); available = rets[s.index].bytes; break;
      case kSlotWorkspace: base = static_cast<uint8_t*>(workspace.data); available = workspace.bytes; break;
      case kSlotConstant: base = device_blob_ + layout_.constants; available = h.constant_bytes; break;
      case kSlotTaskCounters:
        base = static_cast<uint8_t*>(workspace.data) + params.control.task_counters;
        available = 8ull * h.num_task_counters;
        break;
      case kSlotSymmetric: {
        SymmetricBuffer b;
        if (!find_symmetric_buffer(s.index, &b)) {
          Message msg;
          msg << "slot " << i << " names symmetric buffer " << s.index
              << ", which is not allocated in this process (jax_mpk.distributed.allocate)";
          return msg.str();
        }
        base = b.data;
        available = b.bytes;
        break;
      }
    }
    const uint64_t need = s.source == kSlotArg || s.source == kSlotRet ? s.bytes : s.offset + s.bytes;
    if (need > available) {
      Message msg;
      msg << "slot " << i << " needs " << need << " bytes but its buffer ("
          << (s.source == kSlotArg ? "operand " : s.source == kSlotRet ? "result " : "")
          << (s.source <= kSlotRet ? std::to_string(s.index)
              : s.source == kSlotSymmetric ? "symmetric buffer " + std::to_string(s.index)
                                           : std::string("workspace/constants"))
          << ") holds " << available;
      return msg.str();
    }
    params.slots[i] = base + (s.source == kSlotArg || s.source == kSlotRet ? 0 : s.offset);
  }
  params.tasks = reinterpret_cast<const TaskDesc*>(device_blob_ + layout_.tasks);
  params.events = reinterpret_cast<const EventDesc*>(device_blob_ + layout_.events);
  params.triggers = reinterpret_cast<const uint32_t*>(device_blob_ + layout_.triggers);
  params.operands = reinterpret_cast<const Operand*>(device_blob_ + layout_.operands);
  params.worker_task_begin = reinterpret_cast<const uint32_t*>(device_blob_ + layout_.worker_task_begin);
  params.worker_tasks = reinterpret_cast<const WorkerTask*>(device_blob_ + layout_.worker_tasks);
  params.schedule = h.schedule;
  params.profile_capacity = h.profile_capacity;
  params.workspace = static_cast<uint8_t*>(workspace.data);
  params.watchdog_ns = h.watchdog_ns;
  params.num_workers = h.num_workers;
  params.num_schedulers = h.num_schedulers;
  params.worker_queue_capacity = h.worker_queue_capacity;
  params.sched_queue_capacity = h.sched_queue_capacity;
  params.num_iterations = h.num_iterations;
  params.start_event = h.start_event;
  params.end_event = h.end_event;
  params.num_slots = h.num_slots;
  for (uint32_t pe = 0; pe < kMaxPes; ++pe) params.peer_delta[pe] = pe < view.num_pes ? view.peer_delta[pe] : 0;
  params.signals = nullptr;
  params.signal_base = 0;
  if (h.flags & kProgramPoisonResults) {
    std::string why = poison(stream, args, rets, workspace);
    if (!why.empty()) return why;
  }
  if (h.num_signals == 0) return launch(stream, workspace, rets);
  const uint32_t signal_buffer = slots[h.signal_slot].index;
  SymmetricBuffer signals;
  find_symmetric_buffer(signal_buffer, &signals);  // bound above
  if (signals.poisoned) {
    return "symmetric buffer " + std::to_string(signal_buffer) +
           " holds the signal words of a launch that failed, so its counts are unknown: reset it on every PE "
           "(SymmetricBuffer.reset_signals()) before launching again";
  }
  params.signals = params.slots[h.signal_slot];
  params.signal_base = signals.signal_epoch;
  std::string why = launch(stream, workspace, rets);
  finish_signal_launch(signal_buffer, why.empty(), h.num_iterations);
  return why;
}

std::string Megakernel::poison(cudaStream_t stream, const std::vector<Buffer>& args,
                               const std::vector<Buffer>& rets, Buffer workspace) {
  for (const Buffer& ret : rets) {
    bool donated = false;  // an aliased result is the caller's state: never overwrite it
    for (const Buffer& arg : args) donated |= arg.data == ret.data;
    if (!donated) MPK_CUDA(cudaMemsetAsync(ret.data, 0xFF, ret.bytes, stream));
  }
  const uint64_t control = header_.control_bytes;
  MPK_CUDA(cudaMemsetAsync(static_cast<uint8_t*>(workspace.data) + control, 0xFF,
                           header_.workspace_bytes - control, stream));
  return "";
}

std::string Megakernel::launch(cudaStream_t stream, Buffer workspace, const std::vector<Buffer>& rets) {
  const ProgramHeader& h = header_;
  const LaunchParams& params = *params_;
  const bool deferred = defers_errors();
  // A failure found here was deferred: report it instead of launching on its NaN results.
  std::string why = outcomes_.collect(blob_.data(), false, deferred);
  if (why.empty()) why = outcomes_.make_room(blob_.data());
  if (!why.empty()) return why;

  MPK_CUDA(cudaMemsetAsync(workspace.data, 0, h.control_bytes, stream));
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(h.num_workers + scheduler_blocks(h));
  config.blockDim = dim3(kWorkerThreads);
  config.dynamicSmemBytes = kTaskSharedBytes;
  config.stream = stream;
  cudaLaunchAttribute cooperative;
  cooperative.id = cudaLaunchAttributeCooperative;
  cooperative.val.cooperative = 1;
  config.attrs = &cooperative;
  config.numAttrs = 1;
  why = outcomes_.before_kernel(stream);
  if (!why.empty()) return why;
  MPK_CUDA(cudaLaunchKernelEx(&config, megakernel, params));
  // Deferred, the caller sees this launch's results before its outcome: a failure poisons them.
  why = outcomes_.after_kernel(stream, static_cast<const uint8_t*>(workspace.data), params.control,
                               deferred ? rets : std::vector<Buffer>());
  if (why.empty() && !deferred) why = outcomes_.collect(blob_.data(), true, false);
  last_timing.kernel_us = outcomes_.last_kernel_us();
  return why;
}

}  // namespace mpk
