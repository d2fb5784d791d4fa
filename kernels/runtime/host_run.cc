#include "host_run.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <memory>

#include "cuda_check.h"
#include "megakernel.h"

namespace mpk {
namespace {

// What run_once took from CUDA, given back however it returns.
struct Held {
  std::vector<void*> buffers;
  cudaStream_t stream = nullptr;

  ~Held() {
    if (stream) cudaStreamSynchronize(stream);
    for (void* p : buffers) cudaFree(p);
    if (stream) cudaStreamDestroy(stream);
  }

  std::string allocate(size_t bytes, Buffer* out) {
    void* p = nullptr;
    MPK_CUDA(cudaMalloc(&p, std::max<size_t>(bytes, 1)));
    buffers.push_back(p);
    *out = {p, bytes};
    return "";
  }
};

}  // namespace

std::string run_once(std::vector<uint8_t> blob, const std::vector<std::string>& args,
                     const std::vector<size_t>& result_bytes, const std::vector<int>& result_aliases,
                     std::vector<std::string>* results) {
  if (result_aliases.size() != result_bytes.size()) return "run_once needs one alias entry per result";
  for (size_t i = 0; i < result_bytes.size(); ++i) {
    const int a = result_aliases[i];
    if (a >= 0 && (size_t(a) >= args.size() || args[a].size() != result_bytes[i]))
      return "result " + std::to_string(i) + " aliases argument " + std::to_string(a) +
             ", which does not exist or differs in size";
  }
  std::unique_ptr<Megakernel> kernel;  // declared before `held`: its destructor runs last
  std::string why = Megakernel::create(std::move(blob), &kernel);
  if (!why.empty()) return why;
  Held held;
  MPK_CUDA(cudaStreamCreateWithFlags(&held.stream, cudaStreamNonBlocking));
  std::vector<Buffer> in(args.size()), out(result_bytes.size());
  for (size_t i = 0; i < args.size(); ++i) {
    if (!(why = held.allocate(args[i].size(), &in[i])).empty()) return why;
    MPK_CUDA(cudaMemcpyAsync(in[i].data, args[i].data(), args[i].size(), cudaMemcpyHostToDevice, held.stream));
  }
  for (size_t i = 0; i < result_bytes.size(); ++i) {
    if (result_aliases[i] >= 0)
      out[i] = in[result_aliases[i]];
    else if (!(why = held.allocate(result_bytes[i], &out[i])).empty())
      return why;
  }
  Buffer workspace;
  if (!(why = held.allocate(kernel->header().workspace_bytes, &workspace)).empty()) return why;
  why = kernel->run(held.stream, in, out, workspace);
  if (why.empty()) why = kernel->collect_launches();  // a deferred launch's outcome
  if (!why.empty()) return why;
  results->assign(out.size(), std::string());
  for (size_t i = 0; i < out.size(); ++i) {
    (*results)[i].resize(out[i].bytes);
    MPK_CUDA(cudaMemcpyAsync((*results)[i].data(), out[i].data, out[i].bytes, cudaMemcpyDeviceToHost, held.stream));
  }
  MPK_CUDA(cudaStreamSynchronize(held.stream));
  return "";
}

}  // namespace mpk
