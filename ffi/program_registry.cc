#include "program_registry.h"

#include <mutex>
#include <stdexcept>
#include <unordered_map>

#include "kernels/runtime/megakernel.h"

namespace jax_mpk {
namespace {

struct Entry {
  ProgramBlob blob;
  int references = 0;
};

std::mutex registry_mutex;
std::unordered_map<uint64_t, Entry>& registry() {
  static auto* map = new std::unordered_map<uint64_t, Entry>();
  return *map;
}

uint64_t fnv1a(const uint8_t* data, size_t size) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 0x100000001b3ull;
  return h;
}

}  // namespace

uint64_t register_program(const uint8_t* data, size_t size) {
  std::string why = mpk::validate_program(data, size);
  if (!why.empty()) throw std::invalid_argument("invalid program: " + why);
  // 63 bits: the key travels as an HLO attribute that some builds read as signed.
  const uint64_t key = fnv1a(data, size) >> 1;
  std::lock_guard<std::mutex> lock(registry_mutex);
  Entry& entry = registry()[key];
  if (!entry.blob) entry.blob = std::make_shared<const std::vector<uint8_t>>(data, data + size);
  ++entry.references;
  return key;
}

void release_program(uint64_t key) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = registry().find(key);
  if (it != registry().end() && --it->second.references == 0) registry().erase(it);
}

ProgramBlob find_program(uint64_t key) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = registry().find(key);
  return it == registry().end() ? nullptr : it->second.blob;
}

}  // namespace jax_mpk
