// What an optimizer contributes to the C++ backend: its element loop and the per-tensor scalars it
// needs, registered by name from its own source file (see adam.cpp). The multi-tensor skeleton
// (multi_tensor_plan.cpp: gather, checks, parallel split, prefetch, counters, finish) is shared.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace fused_optim {

// Limits shared with the Python side (fused_optim/_layout.py, LaunchRow and KERNEL_SCALARS).
constexpr int kMaxState = 4;           // state tensors per parameter
constexpr int kMaxScalars = 8;         // a group's kernel scalars (float64)
constexpr int kMaxFlags = 8;           // a group's compile-time flags
constexpr int kMaxTensorScalars = 4;   // per-tensor scalars from prepare()

// The launch-row layout of MultiTensorPlan::launch_rows, one int64 row per tensor.
namespace launch_row {
constexpr int64_t kWords = 9;
constexpr int64_t kParam = 0;
constexpr int64_t kGrad = 1;
constexpr int64_t kState = 2;  // kState + k for state tensor k < kMaxState
constexpr int64_t kNumel = 6;
constexpr int64_t kCounter = 7;
constexpr int64_t kKey = 8;  // the tensor's rounding id (its index in the optimizer)
}  // namespace launch_row

// One tensor's slice, each pointer already at the slice's first element. The state tensors are the
// optimizer's own, then the master-weight tensor (master_param or kahan_comp) when there is one.
struct Streams {
  void* param;
  const void* grad;
  void* state[kMaxState];
};

struct UpdateArgs {
  const double* scalars;  // the group's kernel scalars, as the optimizer's spec folds them
  const int64_t* flags;   // the group's compile-time flags, same order as the spec's
  const double* tensor;   // this tensor's scalars, from prepare()
  double grad_factor;     // every gradient is multiplied by it first (unscale and clip; 1 for neither)
  bool first;             // the state holds nothing yet (the first step of SGD's momentum buffer)
  int64_t offset;         // the index in its tensor of the slice's first element (stochastic rounding's key)
  uint32_t tensor_key;    // the tensor's rounding id (its index in the optimizer)
};

struct OptimizerKernel {
  // The number of state tensors the element loop reads for these flags.
  int (*n_state)(const int64_t* flags);
  // This tensor's scalars from the group's and its step count (after this step's increment; 0 for
  // optimizers without one). Called once per distinct step, before the parallel region.
  void (*prepare)(const double* scalars, const int64_t* flags, double step, double* tensor);
  // Updates elements [0, n) of one tensor of real dtype `dtype`; runs on many threads at once.
  void (*update)(c10::ScalarType dtype, const Streams& streams, int64_t n, const UpdateArgs& args);
};

// The registered kernel named `name`, or null.
const OptimizerKernel* find_optimizer_kernel(const std::string& name);

struct RegisterOptimizerKernel {
  RegisterOptimizerKernel(const char* name, OptimizerKernel kernel);
};

}  // namespace fused_optim
