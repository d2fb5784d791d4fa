#include "nvshmem_bootstrap.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <map>
#include <mutex>

#include "kernels/runtime/message.h"
#include "kernels/runtime/symmetric.h"

#ifdef JAX_MPK_NVSHMEM
#include <nvshmem.h>
#include <nvshmemx.h>
#endif

namespace jax_mpk {

using mpk::Message;

#ifndef JAX_MPK_NVSHMEM

namespace {
const char kNotBuilt[] =
    "jax_mpk was built without NVSHMEM: pip install nvidia-nvshmem-cu13, then reinstall jax_mpk "
    "(the build prints whether it found NVSHMEM)";
}  // namespace

bool nvshmem_built() { return false; }
std::string nvshmem_unique_id(std::string*) { return kNotBuilt; }
std::string nvshmem_initialize(int, const std::string&, uint32_t, uint32_t, uint64_t, NvshmemInfo*) { return kNotBuilt; }
std::string symmetric_allocate(uint64_t, uint32_t*, uint64_t*) { return kNotBuilt; }
std::string symmetric_free(uint32_t) { return kNotBuilt; }
std::string symmetric_zero(uint32_t) { return kNotBuilt; }
std::string symmetric_copy(uint32_t, uint64_t, void*, uint64_t, bool) { return kNotBuilt; }
std::string nvshmem_finalize() { return ""; }

#else

namespace {

constexpr uint64_t kAnchorBytes = 256;  // a symmetric object to measure the peers' heap deltas with
constexpr uint64_t kAlign = 256;

struct Allocation {
  void* data;
  uint64_t bytes;
  uint64_t charged;  // counted against the heap budget
};

struct State {
  std::mutex mutex;
  bool initialized = false;
  int device = -1;
  mpk::SymmetricView view{};
  uint64_t used = 0;
  void* anchor = nullptr;
  uint32_t next_id = 0;
  std::map<uint32_t, Allocation> buffers;
};

State& state() {
  static auto* s = new State();
  return *s;
}

std::string cuda_error(const char* what, cudaError_t e) { return std::string(what) + " failed: " + cudaGetErrorString(e); }

// The bytes NVSHMEM reads from NVSHMEM_SYMMETRIC_SIZE, in its own notation.
std::string heap_env(uint64_t bytes) { return std::to_string(bytes); }

}  // namespace

bool nvshmem_built() { return true; }

std::string nvshmem_unique_id(std::string* out) {
  nvshmemx_uniqueid_t id = NVSHMEMX_UNIQUEID_INITIALIZER;
  if (int status = nvshmemx_get_uniqueid(&id))
    return "nvshmemx_get_uniqueid failed with status " + std::to_string(status) +
           " (set NVSHMEM_DEBUG=WARN for NVSHMEM's reason)";
  out->assign(reinterpret_cast<const char*>(&id), sizeof(id));
  return "";
}

std::string nvshmem_initialize(int device, const std::string& unique_id, uint32_t pe, uint32_t num_pes,
                               uint64_t heap_bytes, NvshmemInfo* out) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  Message msg;
  if (s.initialized) {
    if (s.view.pe == pe && s.view.num_pes == num_pes && s.device == device) {
      *out = NvshmemInfo{pe, num_pes, s.view.heap_bytes, nvshmemx_init_status()};
      return "";  // already done by an earlier call with the same arguments
    }
    msg << "NVSHMEM is already initialized here as PE " << s.view.pe << " of " << s.view.num_pes << " on device "
        << s.device << "; asked for PE " << pe << " of " << num_pes << " on device " << device;
    return msg.str();
  }
  if (nvshmemx_init_status() != NVSHMEM_STATUS_NOT_INITIALIZED)
    return "NVSHMEM was initialized in this process by another library; jax_mpk initializes it itself "
           "(jax_mpk.distributed.init) so that it knows the heap and the device";
  if (unique_id.size() != sizeof(nvshmemx_uniqueid_t)) {
    msg << "the NVSHMEM unique id has " << unique_id.size() << " bytes; this NVSHMEM's has "
        << sizeof(nvshmemx_uniqueid_t) << " (do all processes use the same NVSHMEM version?)";
    return msg.str();
  }
  if (num_pes == 0 || num_pes > mpk::kMaxPes || pe >= num_pes) {
    msg << "PE " << pe << " of " << num_pes << ": jax_mpk addresses 1 to " << mpk::kMaxPes << " PEs (one node)";
    return msg.str();
  }
  // XLA already created the device's primary context; make it current here
  // so that NVSHMEM, which takes the current context, joins it.
  if (cudaError_t e = cudaSetDevice(device)) return cuda_error("cudaSetDevice", e);
  if (cudaError_t e = cudaFree(nullptr)) return cuda_error("cudaFree(0) (context creation)", e);
  setenv("NVSHMEM_SYMMETRIC_SIZE", heap_env(heap_bytes).c_str(), 1);
  // Peers are reached by load/store only (NVLink or the same GPU): no network transport.
  setenv("NVSHMEM_REMOTE_TRANSPORT", "none", 0);

  nvshmemx_uniqueid_t id;
  std::copy(unique_id.begin(), unique_id.end(), reinterpret_cast<char*>(&id));
  nvshmemx_init_attr_t attr = NVSHMEMX_INIT_ATTR_INITIALIZER;
  if (int status = nvshmemx_set_attr_uniqueid_args(int(pe), int(num_pes), &id, &attr))
    return "nvshmemx_set_attr_uniqueid_args failed with status " + std::to_string(status);
  // Host library only: the megakernel reaches peers through nvshmem_ptr
  // addresses, so no NVSHMEM device code (and no -rdc) is linked.
  if (int status = nvshmemx_hostlib_init_attr(NVSHMEMX_INIT_WITH_UNIQUEID, &attr)) {
    msg << "NVSHMEM initialization failed with status " << status << " as PE " << pe << " of " << num_pes
        << " on device " << device << " with a " << heap_bytes
        << "-byte symmetric heap (set NVSHMEM_DEBUG=WARN for NVSHMEM's reason; a heap larger than the memory XLA "
           "left free fails: lower XLA_PYTHON_CLIENT_MEM_FRACTION or the heap)";
    return msg.str();
  }
  if (uint32_t(nvshmem_my_pe()) != pe || uint32_t(nvshmem_n_pes()) != num_pes) {
    msg << "NVSHMEM made this process PE " << nvshmem_my_pe() << " of " << nvshmem_n_pes() << "; asked for " << pe
        << " of " << num_pes;
    nvshmemx_hostlib_finalize();
    return msg.str();
  }
  void* anchor = nvshmem_malloc(kAnchorBytes);
  if (!anchor) {
    nvshmemx_hostlib_finalize();
    return "nvshmem_malloc of " + std::to_string(kAnchorBytes) + " bytes failed right after initialization";
  }
  mpk::SymmetricView view{};
  view.device = device;
  view.pe = pe;
  view.num_pes = num_pes;
  view.heap_bytes = heap_bytes;
  for (uint32_t p = 0; p < num_pes; ++p) {
    void* peer = nvshmem_ptr(anchor, int(p));
    if (!peer) {
      nvshmem_free(anchor);
      nvshmemx_hostlib_finalize();
      msg << "PE " << p << " cannot be reached by load/store from PE " << pe
          << " (nvshmem_ptr returned null): jax_mpk's NVSHMEM tasks need every PE on this node, "
             "connected by NVLink or PCIe peer access, or on the same GPU";
      return msg.str();
    }
    view.peer_delta[p] = static_cast<char*>(peer) - static_cast<char*>(anchor);
  }
  s.initialized = true;
  s.device = device;
  s.view = view;
  s.anchor = anchor;
  s.used = kAnchorBytes;
  mpk::set_symmetric_view(&view);
  *out = NvshmemInfo{pe, num_pes, heap_bytes, nvshmemx_init_status()};
  return "";
}

std::string symmetric_allocate(uint64_t bytes, uint32_t* id, uint64_t* address) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.initialized) return "NVSHMEM is not initialized: call jax_mpk.distributed.init() first";
  const uint64_t charged = (bytes + kAlign - 1) / kAlign * kAlign;
  Message msg;
  if (bytes == 0) return "a symmetric buffer needs at least one byte";
  if (s.used + charged > s.view.heap_bytes) {
    msg << "symmetric heap too small: it holds " << s.view.heap_bytes << " bytes, " << s.used
        << " are allocated, and " << bytes << " more were asked for; pass a larger heap_bytes to "
        << "jax_mpk.distributed.init (at least " << s.used + charged << ")";
    return msg.str();
  }
  void* data = nvshmem_malloc(bytes);
  if (!data) {
    msg << "nvshmem_malloc of " << bytes << " bytes failed with " << s.used << " of the " << s.view.heap_bytes
        << "-byte symmetric heap allocated by jax_mpk (NVSHMEM keeps its own structures in the heap too): "
        << "pass a larger heap_bytes to jax_mpk.distributed.init";
    return msg.str();
  }
  // A peer reaches this object at the same delta as the anchor: NVSHMEM maps each peer's heap contiguously.
  for (uint32_t p = 0; p < s.view.num_pes; ++p) {
    char* peer = static_cast<char*>(nvshmem_ptr(data, int(p)));
    if (peer != static_cast<char*>(data) + s.view.peer_delta[p]) {
      nvshmem_free(data);
      msg << "NVSHMEM mapped PE " << p << "'s copy of a new symmetric buffer at another offset than its heap's; "
          << "jax_mpk needs one delta per PE";
      return msg.str();
    }
  }
  if (cudaError_t e = cudaMemset(data, 0, bytes)) {
    nvshmem_free(data);
    return cuda_error("cudaMemset of a symmetric buffer", e);
  }
  if (cudaError_t e = cudaDeviceSynchronize()) return cuda_error("cudaDeviceSynchronize", e);
  *id = s.next_id++;
  *address = reinterpret_cast<uint64_t>(data);
  s.buffers[*id] = Allocation{data, bytes, charged};
  s.used += charged;
  mpk::add_symmetric_buffer(*id, static_cast<uint8_t*>(data), bytes);
  return "";
}

std::string symmetric_free(uint32_t id) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto it = s.buffers.find(id);
  if (!s.initialized || it == s.buffers.end()) return "symmetric buffer " + std::to_string(id) + " is not allocated";
  mpk::remove_symmetric_buffer(id);
  nvshmem_free(it->second.data);
  s.used -= it->second.charged;
  s.buffers.erase(it);
  return "";
}

std::string symmetric_zero(uint32_t id) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto it = s.buffers.find(id);
  if (!s.initialized || it == s.buffers.end()) return "symmetric buffer " + std::to_string(id) + " is not allocated";
  if (cudaError_t e = cudaMemset(it->second.data, 0, it->second.bytes)) return cuda_error("cudaMemset", e);
  if (cudaError_t e = cudaDeviceSynchronize()) return cuda_error("cudaDeviceSynchronize", e);
  mpk::reset_signal_epoch(id);
  return "";
}

std::string symmetric_copy(uint32_t id, uint64_t offset, void* host, uint64_t bytes, bool to_device) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto it = s.buffers.find(id);
  if (!s.initialized || it == s.buffers.end()) return "symmetric buffer " + std::to_string(id) + " is not allocated";
  if (offset + bytes > it->second.bytes) {
    return "bytes [" + std::to_string(offset) + ", " + std::to_string(offset + bytes) + ") lie outside symmetric buffer " +
           std::to_string(id) + " of " + std::to_string(it->second.bytes) + " bytes";
  }
  char* device = static_cast<char*>(it->second.data) + offset;
  cudaError_t e = to_device ? cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice)
                            : cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost);
  return e ? cuda_error("cudaMemcpy of a symmetric buffer", e) : "";
}

std::string nvshmem_finalize() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.initialized) return "";
  mpk::set_symmetric_view(nullptr);
  for (auto& [id, a] : s.buffers) nvshmem_free(a.data);
  s.buffers.clear();
  nvshmem_free(s.anchor);
  nvshmemx_hostlib_finalize();
  s.initialized = false;
  s.device = -1;
  s.view = mpk::SymmetricView{};
  s.used = 0;
  s.anchor = nullptr;  // buffer ids keep counting: a stale id never names a new buffer
  return "";
}

#endif

}  // namespace jax_mpk
