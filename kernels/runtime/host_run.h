// Running a program once with no framework in the process's CUDA context: for tools that
// watch every CUDA call (compute-sanitizer), which a framework's own use of the GPU gets in
// the way of.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpk {

// Copies each argument to the current device, launches the program once on a stream of its
// own, waits, and copies the results back. Result i is written in place into argument
// result_aliases[i] when that is >= 0 (a donated buffer), else into a buffer of its own.
// Empty on success, else why it failed; all device memory is freed either way.
std::string run_once(std::vector<uint8_t> blob, const std::vector<std::string>& args,
                     const std::vector<size_t>& result_bytes, const std::vector<int>& result_aliases,
                     std::vector<std::string>* results);

}  // namespace mpk
