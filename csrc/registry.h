// Each source file registers its Python bindings here, so adding a kernel file never means
// editing a central list.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace fused_optim {

using Registration = void (*)(pybind11::module_&);

std::vector<Registration>& registrations();

struct RegisterBindings {
  explicit RegisterBindings(Registration registration) { registrations().push_back(registration); }
};

}  // namespace fused_optim
