#include "registry.h"

// The build passes a digest of the sources as an identifier; the loader compares it with the
// sources it finds, so a stale build is never used.
#ifndef FUSED_OPTIM_SOURCE_HASH
#define FUSED_OPTIM_SOURCE_HASH unknown
#endif
#define FUSED_OPTIM_STRINGIFY_(x) #x
#define FUSED_OPTIM_STRINGIFY(x) FUSED_OPTIM_STRINGIFY_(x)

namespace fused_optim {

std::vector<Registration>& registrations() {
  static std::vector<Registration> all;
  return all;
}

}  // namespace fused_optim

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fused_optim C++ kernels (multi-tensor optimizers, clipping, normalization)";
  m.attr("SOURCE_HASH") = FUSED_OPTIM_STRINGIFY(FUSED_OPTIM_SOURCE_HASH);
  for (auto registration : fused_optim::registrations()) {
    registration(m);
  }
}
