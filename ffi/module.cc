// The Python extension: FFI registrations, the program registry, program
// validation and parsing (for the round-trip test), and device queries.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "kernels/runtime/host_run.h"
#include "kernels/runtime/megakernel.h"
#include "megakernel_call.h"
#include "nvshmem_bootstrap.h"
#include "program_registry.h"

namespace nb = nanobind;

namespace {

template <typename T>
nb::capsule capsule(T* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}

void check(const std::string& why) {
  if (!why.empty()) throw std::runtime_error(why);
}

std::pair<const uint8_t*, size_t> view(const nb::bytes& blob) {
  return {reinterpret_cast<const uint8_t*>(blob.c_str()), blob.size()};
}

// Reads a program back through the C++ structs, so a test can compare every
// field with what Python wrote.
nb::dict parse_program(const nb::bytes& blob) {
  auto [data, size] = view(blob);
  std::string why = mpk::validate_program(data, size);
  if (!why.empty()) throw nb::value_error(why.c_str());
  const auto& h = *reinterpret_cast<const mpk::ProgramHeader*>(data);
  const mpk::BlobLayout at(h);
  nb::dict header;
  header["magic"] = h.magic;
  header["version"] = h.version;
  header["num_tasks"] = h.num_tasks;
  header["num_events"] = h.num_events;
  header["num_triggers"] = h.num_triggers;
  header["num_operands"] = h.num_operands;
  header["num_slots"] = h.num_slots;
  header["num_args"] = h.num_args;
  header["num_rets"] = h.num_rets;
  header["num_workers"] = h.num_workers;
  header["num_schedulers"] = h.num_schedulers;
  header["worker_queue_capacity"] = h.worker_queue_capacity;
  header["sched_queue_capacity"] = h.sched_queue_capacity;
  header["num_iterations"] = h.num_iterations;
  header["start_event"] = h.start_event;
  header["end_event"] = h.end_event;
  header["watchdog_ns"] = h.watchdog_ns;
  header["control_bytes"] = h.control_bytes;
  header["workspace_bytes"] = h.workspace_bytes;
  header["constant_bytes"] = h.constant_bytes;
  header["schedule"] = h.schedule;
  header["num_worker_tasks"] = h.num_worker_tasks;
  header["profile_capacity"] = h.profile_capacity;
  header["num_pes"] = h.num_pes;
  header["pe"] = h.pe;
  header["signal_slot"] = h.signal_slot;
  header["num_signals"] = h.num_signals;
  header["flags"] = h.flags;
  header["num_task_counters"] = h.num_task_counters;

  nb::list tasks, events, triggers, operands, slots;
  for (uint32_t i = 0; i < h.num_tasks; ++i) {
    const auto& t = reinterpret_cast<const mpk::TaskDesc*>(data + at.tasks)[i];
    nb::list dims;
    for (int32_t d : t.dims) dims.append(d);
    tasks.append(nb::make_tuple(t.kind, t.num_operands, t.first_operand, t.first_trigger, t.num_triggers,
                                t.flags, dims));
  }
  for (uint32_t i = 0; i < h.num_events; ++i) {
    const auto& e = reinterpret_cast<const mpk::EventDesc*>(data + at.events)[i];
    events.append(nb::make_tuple(e.threshold, e.first_task, e.last_task, e.kind, e.scheduler));
  }
  for (uint32_t i = 0; i < h.num_triggers; ++i)
    triggers.append(reinterpret_cast<const uint32_t*>(data + at.triggers)[i]);
  for (uint32_t i = 0; i < h.num_operands; ++i) {
    const auto& o = reinterpret_cast<const mpk::Operand*>(data + at.operands)[i];
    operands.append(nb::make_tuple(o.slot, o.flags, o.offset, o.iteration_stride, o.bytes));
  }
  for (uint32_t i = 0; i < h.num_slots; ++i) {
    const auto& s = reinterpret_cast<const mpk::SlotDesc*>(data + at.slots)[i];
    slots.append(nb::make_tuple(s.source, s.index, s.offset, s.bytes));
  }
  nb::list worker_task_begin, worker_tasks;
  for (uint32_t i = 0; i <= h.num_workers; ++i)
    worker_task_begin.append(reinterpret_cast<const uint32_t*>(data + at.worker_task_begin)[i]);
  for (uint32_t i = 0; i < h.num_worker_tasks; ++i) {
    const auto& w = reinterpret_cast<const mpk::WorkerTask*>(data + at.worker_tasks)[i];
    worker_tasks.append(nb::make_tuple(w.task, w.wait_event));
  }
  const mpk::ControlLayout c(h);
  nb::dict control;
  control["error"] = c.error;
  control["task_counters"] = c.task_counters;
  control["event_counters"] = c.event_counters;
  control["sched_tail"] = c.sched_tail;
  control["sched_head"] = c.sched_head;
  control["sched_queues"] = c.sched_queues;
  control["worker_consumed"] = c.worker_consumed;
  control["worker_queues"] = c.worker_queues;
  control["profile_counts"] = c.profile_counts;
  control["profile"] = c.profile;
  control["total"] = c.total;

  nb::dict out;
  out["header"] = header;
  out["tasks"] = tasks;
  out["events"] = events;
  out["triggers"] = triggers;
  out["operands"] = operands;
  out["slots"] = slots;
  out["worker_task_begin"] = worker_task_begin;
  out["worker_tasks"] = worker_tasks;
  out["constants"] = nb::bytes(reinterpret_cast<const char*>(data + at.constants), h.constant_bytes);
  out["control"] = control;
  return out;
}

}  // namespace

NB_MODULE(_jax_mpk, m) {
  m.def("registrations", []() {
    nb::dict stages;
    stages["instantiate"] = capsule(JaxMpkInstantiate);
    stages["execute"] = capsule(JaxMpkExecute);
    nb::dict targets;
    targets["jax_mpk_megakernel"] = stages;
    return targets;
  });
  m.def("call_site_type", []() {
    nb::dict registration;
    registration["type_id"] = nb::capsule(jax_mpk::call_site_type_id());
    registration["type_info"] = nb::capsule(const_cast<XLA_FFI_TypeInfo*>(jax_mpk::call_site_type_info()));
    return registration;
  });
  m.def("validate_program", [](const nb::bytes& blob) {
    auto [data, size] = view(blob);
    return mpk::validate_program(data, size);
  }, "An empty string for a valid program blob, else the reason it is not.");
  m.def("parse_program", &parse_program);
  m.def("describe_failure", [](const nb::bytes& blob, uint32_t code, uint32_t block, uint32_t task,
                               uint32_t event, uint32_t iteration, uint64_t observed, uint64_t expected,
                               std::vector<uint64_t> counters) {
    mpk::ErrorRecord err{1, code, block, task, event, iteration, observed, expected, {}};
    return mpk::describe_failure(view(blob).first, err, counters.empty() ? nullptr : counters.data());
  }, "The message a failed launch with this error record and these event counters raises.");
  m.def("register_program", [](const nb::bytes& blob) {
    auto [data, size] = view(blob);
    try {
      return jax_mpk::register_program(data, size);
    } catch (const std::invalid_argument& e) {
      throw nb::value_error(e.what());
    }
  });
  m.def("release_program", &jax_mpk::release_program);
  m.def("task_kinds", []() {
    nb::dict kinds;
    for (const auto& [kind, name] : mpk::task_kinds()) kinds[nb::int_(kind)] = name;
    return kinds;
  },
        "The task kinds the CUDA task library implements: {kind id: name}.");
  m.def("device_info", [](int device) {
    mpk::DeviceInfo info;
    std::string why = mpk::query_device(device, &info);
    if (!why.empty()) throw std::runtime_error(why);
    nb::dict out;
    out["device"] = info.device;
    out["sm_count"] = info.sm_count;
    out["shared_memory_per_block"] = info.shared_memory_per_block;
    out["name"] = info.name;
    return out;
  });
  m.def("last_launch_timing", []() {
    const mpk::LaunchTiming t = mpk::last_launch_timing();
    nb::dict out;
    out["kernel_us"] = t.kernel_us;
    out["run_us"] = t.run_us;
    return out;
  }, "The last megakernel launch in this process: kernel µs (CUDA events) and the host's µs for the whole run.");
  m.def("check_launches", &mpk::check_launches,
        "Waits for every launch in the process; the first failure not reported yet, else empty.");
  m.def("run_once", [](const nb::bytes& blob, const std::vector<nb::bytes>& args,
                       const std::vector<size_t>& result_bytes, const std::vector<int>& result_aliases) {
    auto [data, size] = view(blob);
    std::vector<std::string> host_args;
    for (const nb::bytes& a : args) host_args.emplace_back(a.c_str(), a.size());
    std::vector<std::string> results;
    std::string why;
    {
      nb::gil_scoped_release released;
      why = mpk::run_once(std::vector<uint8_t>(data, data + size), host_args, result_bytes, result_aliases,
                          &results);
    }
    check(why);
    std::vector<nb::bytes> out;
    for (const std::string& r : results) out.emplace_back(r.data(), r.size());
    return out;
  }, "Runs a program once on the current device with no framework involved; the results as bytes.");
  m.def("copy_rate", [](size_t bytes, int repeats) {
    double rate = 0;
    std::string why = mpk::measure_copy_rate(bytes, repeats, &rate);
    if (!why.empty()) throw std::runtime_error(why);
    return rate;
  }, "Device-to-device copy rate in bytes/s (read + written) on the current device.");
  m.def("nvshmem_unique_id", []() {
    std::string id;
    check(jax_mpk::nvshmem_unique_id(&id));
    return nb::bytes(id.data(), id.size());
  }, "A fresh NVSHMEM unique id (bytes) for PE 0 to share with the others.");
  m.def("nvshmem_init", [](int device, const nb::bytes& unique_id, uint32_t pe, uint32_t num_pes,
                           uint64_t heap_bytes) {
    jax_mpk::NvshmemInfo info;
    check(jax_mpk::nvshmem_initialize(device, std::string(unique_id.c_str(), unique_id.size()), pe, num_pes,
                                      heap_bytes, &info));
    nb::dict out;
    out["pe"] = info.pe;
    out["num_pes"] = info.num_pes;
    out["heap_bytes"] = info.heap_bytes;
    out["status"] = info.status;
    return out;
  }, "Initializes NVSHMEM on a CUDA device (collective over num_pes processes).");
  m.def("symmetric_allocate", [](uint64_t bytes) {
    uint32_t id = 0;
    uint64_t address = 0;
    check(jax_mpk::symmetric_allocate(bytes, &id, &address));
    return nb::make_tuple(id, address);
  }, "Allocates a zeroed symmetric buffer (collective); returns (id, device address).");
  m.def("symmetric_free", [](uint32_t id) { check(jax_mpk::symmetric_free(id)); });
  m.def("symmetric_zero", [](uint32_t id) { check(jax_mpk::symmetric_zero(id)); });
  m.def("symmetric_read", [](uint32_t id, uint64_t offset, uint64_t bytes) {
    std::string host(bytes, '\0');
    check(jax_mpk::symmetric_copy(id, offset, host.data(), bytes, false));
    return nb::bytes(host.data(), host.size());
  });
  m.def("symmetric_write", [](uint32_t id, uint64_t offset, const nb::bytes& data) {
    std::string host(data.c_str(), data.size());
    check(jax_mpk::symmetric_copy(id, offset, host.data(), host.size(), true));
  });
  m.def("nvshmem_finalize", []() { check(jax_mpk::nvshmem_finalize()); });
  m.def("build_info", []() {
    nb::dict out;
    // Asked of the runtime library, which may be a prebuilt one linked against NVSHMEM.
    out["nvshmem"] = jax_mpk::nvshmem_built();
    out["cuda_version"] = CUDART_VERSION;
    return out;
  });
}
