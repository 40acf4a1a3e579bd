// Whether a kernel may read a tensor's memory: decided before any data pointer is taken.
#pragma once

#include <ATen/ATen.h>

namespace fused_optim {

// A dense-strided CPU tensor with real storage: not a Python tensor subclass (DTensor,
// FakeTensor, FunctionalTensor...), not a functorch or legacy batched wrapper, not a
// functionalization wrapper, not meta.
inline bool is_plain_cpu_tensor(const at::Tensor& t) {
  const c10::DispatchKeySet keys = t.key_set();
  return t.layout() == c10::kStrided && t.device().is_cpu() && t.has_storage() &&
         !keys.has(c10::DispatchKey::Python) && !keys.has(c10::DispatchKey::FuncTorchBatched) &&
         !keys.has(c10::DispatchKey::Batched) && !keys.has(c10::DispatchKey::FuncTorchGradWrapper) &&
         !keys.has(c10::DispatchKey::Functionalize);
}

}  // namespace fused_optim
