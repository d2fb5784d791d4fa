// CUDA runtime errors as the runtime's messages: functions that return std::string (empty on
// success) wrap each runtime call in MPK_CUDA, which returns "call failed: reason".
#pragma once

#include <cuda_runtime.h>

#include <string>

namespace mpk {

inline std::string cuda_error(const char* what, cudaError_t e) {
  return std::string(what) + " failed: " + cudaGetErrorString(e);
}

}  // namespace mpk

#define MPK_CUDA(call)                                        \
  do {                                                        \
    cudaError_t e_ = (call);                                  \
    if (e_ != cudaSuccess) return ::mpk::cuda_error(#call, e_); \
  } while (0)
