// Norms of many tensors at once, and the in-place scale and clamp that clipping applies.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace fused_optim {

// sum |x|^p over every element of every tensor, or max |x| for p = inf, in float64. The tensors
// are cut into fixed chunks whose partial results are combined in a fixed order, so the result is
// bitwise the same on every call and for any number of threads. NaN propagates.
double norm_power_sum(const std::vector<const at::Tensor*>& tensors, double p);

// The p-norm from norm_power_sum's result.
double norm_from_power_sum(double sum, double p);

// x *= factor (computed in float32, float64 for float64 tensors), in place.
void scale_tensors(const std::vector<const at::Tensor*>& tensors, double factor);

// x = clamp(x, low, high), in place; NaN stays NaN.
void clamp_tensors(const std::vector<const at::Tensor*>& tensors, double low, double high);

}  // namespace fused_optim
