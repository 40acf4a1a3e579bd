// Shared by the optimizers' element loops (adam.cpp, sgd.cpp, ...): storage and compute types,
// and the macro that compiles one loop variant per SIMD target (simd.h).
#pragma once

#include <cstdint>
#include <type_traits>

#include "dtypes.h"
#include "optimizer.h"
#include "simd.h"

namespace fused_optim {

template <typename T>
using compute_t = typename ComputeType<T>::type;
// State of 16-bit parameters is kept in float32; float and double parameters keep their own dtype.
template <typename T>
using state_t = compute_t<T>;

// Calls fn(T*, state_t<T>*) (null pointers of the parameter's storage type and its state type).
template <typename F>
inline void dispatch_param_type(c10::ScalarType dtype, const char* what, F&& fn) {
  dispatch_storage(dtype, what, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    fn(static_cast<T*>(nullptr), static_cast<state_t<T>*>(nullptr));
  });
}

}  // namespace fused_optim
