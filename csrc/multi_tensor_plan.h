// The tensors of one (param group, device, dtype) of an optimizer, bound once and stepped many
// times: each step reads the current gradients, checks them all, and updates every tensor in
// one parallel region, with no per-tensor work left in Python. The element math is the
// registered OptimizerKernel's (optimizer.h); everything else is shared here.
#pragma once

#include <torch/extension.h>

#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "optimizer.h"

namespace fused_optim {

class MultiTensorPlan {
 public:
  // params: the group's parameters of one device and real dtype (complex ones are stepped on
  // their real view). n_state: state tensors per parameter. steps: float32 CPU tensor holding
  // each parameter's step count, or None for optimizers without one. optimizer: the name used in
  // error messages. kernel: the registered element loop that update() runs; empty for a plan that
  // only keeps the books for kernels launched elsewhere (Triton) or the reference math.
  // state_dtypes: the real dtype of each state tensor (fused_optim._layout.state_dtypes; empty:
  // state_dtype_for(param dtype) for all). tensor_ids: each parameter's rounding id, its index in
  // the optimizer (empty: its index in the plan).
  MultiTensorPlan(std::vector<at::Tensor> params, int64_t n_state, std::optional<at::Tensor> steps,
                  std::string optimizer, std::string kernel, std::vector<c10::ScalarType> state_dtypes = {},
                  std::vector<int64_t> tensor_ids = {});

  // Checks every gradient and collects the parameters to step. Changes nothing. Returns
  // (stale, need_state, sparse): stale when a parameter's dtype or device no longer matches the
  // plan (the caller rebuilds it); need_state lists the dense-gradient parameters without state;
  // sparse lists the parameters whose gradient is sparse (only with allow_sparse, else an error):
  // they are not stepped here.
  std::tuple<bool, std::vector<int64_t>, std::vector<int64_t>> scan(bool allow_sparse);

  // Binds the state tensors of parameter `index` (the same tensors as in optimizer.state).
  // fresh: the tensors hold nothing yet (SGD's first momentum step writes instead of reading).
  void bind(int64_t index, const std::vector<at::Tensor>& state, bool fresh);

  // sum |g|^p over the scanned dense gradients (max |g| for p = inf), deterministic (grad_norm.h).
  double grad_norm_power_sum(double p) const;

  // Steps the scanned parameters with the plan's kernel: counters advance (step += 1, first-step
  // flags cleared), then every element is updated. Each gradient is first multiplied by
  // grad_factor; with found_inf non-zero (AMP saw inf/NaN) nothing changes, not even counters.
  void update(const std::vector<double>& scalars, const std::vector<int64_t>& flags,
              std::optional<at::Tensor> grad_factor, std::optional<at::Tensor> found_inf);

  // The scanned dense parameters' indices, for the reference math.
  const std::vector<int64_t>& active() const;
  // The first-step flags of the parameters (1: its state holds nothing yet).
  std::vector<int64_t> fresh() const;
  // Clears the scanned parameters' first-step flags and forgets the scan (after a step run elsewhere).
  void finish_step();

  // For kernels launched elsewhere (Triton): one int64 row per scanned dense parameter, laid out
  // as launch_row (optimizer.h): data addresses of param, grad and state (0 for absent state),
  // numel in real elements, rounding id, and counter = counters_address + 4 * index, the address of the
  // parameter's float32 counter (its step count or first-step flag). Tensors with odd layouts are
  // given as contiguous copies; finish_launch() writes them back, after the launch is enqueued,
  // and forgets the scan.
  at::Tensor launch_rows(int64_t counters_address);
  void finish_launch();

  int64_t size() const { return static_cast<int64_t>(params_.size()); }

 private:
  struct Work {
    void* param;
    const void* grad;
    void* state[kMaxState];
    int64_t index;
  };

  void check_scanned() const;
  // Fills work_ and prefix_ for the scanned parameters; odd layouts are stepped on contiguous
  // copies that write_back() copies back.
  void gather_work();
  void write_back();
  void forget_scan();

  std::vector<at::Tensor> params_;
  std::vector<char> is_complex_;
  std::vector<std::vector<at::Tensor>> state_;  // [param][k], real views
  // What a step needs of the bound state, kept beside the plan so a step reads no state tensor's
  // metadata (in training the step follows a forward and backward pass, and each tensor's
  // metadata would be a cache miss): data addresses, real element count, all contiguous.
  struct BoundState {
    void* data[kMaxState];
    int64_t numel;
    bool contiguous;
  };
  std::vector<BoundState> bound_state_;
  std::vector<char> bound_;
  std::vector<char> fresh_;
  int64_t n_state_;
  std::vector<c10::ScalarType> state_dtypes_;  // [k]
  std::vector<int64_t> tensor_ids_;            // [param]
  at::Tensor steps_;
  std::string optimizer_;
  const OptimizerKernel* kernel_;
  c10::ScalarType dtype_;
  c10::Device device_;

  bool scanned_ = false;
  std::vector<int64_t> active_;
  std::vector<const at::Tensor*> grads_;   // the active parameters' gradients (real views for complex)
  std::vector<at::Tensor> complex_grads_;  // reserved up front, so pointers into it stay valid
  std::vector<Work> work_;
  std::vector<int64_t> prefix_;
  std::vector<double> tensor_scalars_;     // kMaxTensorScalars per work item
  std::vector<char> first_;                // per work item
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back_;  // (destination, contiguous copy)
  std::vector<at::Tensor> keep_alive_;
};

}  // namespace fused_optim
