// Programs registered from Python, keyed by a hash of their bytes. The HLO
// carries only the key, so a cached executable can never name another program.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace jax_mpk {

using ProgramBlob = std::shared_ptr<const std::vector<uint8_t>>;

// Validates and registers; returns the key, or throws std::invalid_argument.
uint64_t register_program(const uint8_t* data, size_t size);
void release_program(uint64_t key);
ProgramBlob find_program(uint64_t key);

}  // namespace jax_mpk
