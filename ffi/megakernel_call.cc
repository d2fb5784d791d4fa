#include "megakernel_call.h"

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "kernels/runtime/megakernel.h"
#include "program_registry.h"

namespace ffi = xla::ffi;

namespace jax_mpk {
namespace {

// One per call site: the program, uploaded on its first execution.
struct CallSite {
  static ffi::TypeId id;
  std::unique_ptr<mpk::Megakernel> kernel;  // its run() takes one launch at a time
};
ffi::TypeId CallSite::id = {};
const XLA_FFI_TypeInfo kCallSiteInfo = ffi::MakeTypeInfo<CallSite>();

ffi::ErrorOr<std::unique_ptr<CallSite>> Instantiate(uint64_t program) {
  ProgramBlob blob = find_program(program);
  if (!blob)
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "jax_mpk program " + std::to_string(program) +
        " is not registered in this process; keep the jax_mpk function that built it alive"));
  auto site = std::make_unique<CallSite>();
  std::string why = mpk::Megakernel::create(*blob, &site->kernel);
  if (!why.empty()) return ffi::Unexpected(ffi::Error::InvalidArgument("invalid program: " + why));
  return site;
}

ffi::Error Execute(cudaStream_t stream, CallSite* site, ffi::RemainingArgs args, ffi::RemainingRets rets) {
  if (rets.size() == 0) return ffi::Error::InvalidArgument("the megakernel call needs a workspace result");
  std::vector<mpk::Buffer> in, out;
  for (size_t i = 0; i < args.size(); ++i) {
    auto buffer = args.get<ffi::AnyBuffer>(i);
    if (!buffer) return ffi::Error::InvalidArgument("operand " + std::to_string(i) + " is not a buffer");
    in.push_back({buffer->untyped_data(), buffer->size_bytes()});
  }
  for (size_t i = 0; i < rets.size(); ++i) {
    auto buffer = rets.get<ffi::AnyBuffer>(i);
    if (!buffer) return ffi::Error::InvalidArgument("result " + std::to_string(i) + " is not a buffer");
    out.push_back({(*buffer)->untyped_data(), (*buffer)->size_bytes()});
  }
  const mpk::Buffer workspace = out.back();
  out.pop_back();
  std::string why = site->kernel->run(stream, in, out, workspace);
  if (!why.empty()) return ffi::Error::Internal("jax_mpk megakernel: " + why);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_TypeId* call_site_type_id() { return &CallSite::id; }
const XLA_FFI_TypeInfo* call_site_type_info() { return &kCallSiteInfo; }

}  // namespace jax_mpk

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxMpkInstantiate, jax_mpk::Instantiate,
                              ffi::Ffi::BindInstantiate().Attr<uint64_t>("program"));  // registry key

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxMpkExecute, jax_mpk::Execute,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()   // XLA's stream
                                  .Ctx<ffi::State<jax_mpk::CallSite>>()       // from instantiate
                                  .RemainingArgs()                            // params, inputs, state
                                  .RemainingRets());                          // outputs, then workspace
