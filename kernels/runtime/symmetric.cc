#include "symmetric.h"

#include <mutex>
#include <unordered_map>

namespace mpk {
namespace {

struct State {
  std::mutex mutex;
  bool has_view = false;
  SymmetricView view;
  std::unordered_map<uint32_t, SymmetricBuffer> buffers;
};

State& state() {
  static auto* s = new State();  // never destroyed: atexit handlers may still look buffers up
  return *s;
}

}  // namespace

void set_symmetric_view(const SymmetricView* view) {
  std::lock_guard<std::mutex> lock(state().mutex);
  state().has_view = view != nullptr;
  if (view) state().view = *view;
  if (!view) state().buffers.clear();
}

bool get_symmetric_view(SymmetricView* out) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (state().has_view) *out = state().view;
  return state().has_view;
}

void add_symmetric_buffer(uint32_t id, uint8_t* data, uint64_t bytes) {
  std::lock_guard<std::mutex> lock(state().mutex);
  state().buffers[id] = SymmetricBuffer{data, bytes, 0, false};
}

void remove_symmetric_buffer(uint32_t id) {
  std::lock_guard<std::mutex> lock(state().mutex);
  state().buffers.erase(id);
}

bool find_symmetric_buffer(uint32_t id, SymmetricBuffer* out) {
  std::lock_guard<std::mutex> lock(state().mutex);
  auto it = state().buffers.find(id);
  if (it == state().buffers.end()) return false;
  *out = it->second;
  return true;
}

void finish_signal_launch(uint32_t id, bool ok, uint64_t iterations) {
  std::lock_guard<std::mutex> lock(state().mutex);
  auto it = state().buffers.find(id);
  if (it == state().buffers.end()) return;
  if (ok)
    it->second.signal_epoch += iterations;
  else
    it->second.poisoned = true;
}

void reset_signal_epoch(uint32_t id) {
  std::lock_guard<std::mutex> lock(state().mutex);
  auto it = state().buffers.find(id);
  if (it == state().buffers.end()) return;
  it->second.signal_epoch = 0;
  it->second.poisoned = false;
}

}  // namespace mpk
