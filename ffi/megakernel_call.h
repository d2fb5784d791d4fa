// The XLA FFI target that runs a registered program as one persistent kernel.
#pragma once

#include "xla/ffi/api/ffi.h"

XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxMpkInstantiate);
XLA_FFI_DECLARE_HANDLER_SYMBOL(JaxMpkExecute);

namespace jax_mpk {
XLA_FFI_TypeId* call_site_type_id();
const XLA_FFI_TypeInfo* call_site_type_info();
}  // namespace jax_mpk
