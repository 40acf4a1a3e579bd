// The tensors of one (param group, device, dtype) of an optimizer, bound once and stepped many
// times: each step reads the current gradients, checks them all, and updates every tensor in
// one parallel region, with no per-tensor work left in Python.
#pragma once

#include <torch/extension.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "optim_kernels.h"

namespace fused_optim {

class MultiTensorPlan {
 public:
  // params: the group's parameters of one device and real dtype (complex ones are stepped on
  // their real view). n_state: state tensors per parameter. steps: float32 CPU tensor holding
  // each parameter's step count, or None for optimizers without one.
  MultiTensorPlan(std::vector<at::Tensor> params, int64_t n_state, std::optional<at::Tensor> steps,
                  std::string optimizer);

  // Checks every gradient and collects the parameters to step. Changes nothing. Returns
  // (stale, need_state): stale when a parameter's dtype or device no longer matches the plan
  // (the caller rebuilds it); need_state lists parameters with a gradient and no state yet.
  std::pair<bool, std::vector<int64_t>> scan();

  // Binds the state tensors of parameter `index` (the same tensors as in optimizer.state).
  // fresh: the tensors hold nothing yet (SGD's first momentum step writes instead of reading).
  void bind(int64_t index, const std::vector<at::Tensor>& state, bool fresh);

  // sum |g|^p over the scanned gradients (max |g| for p = inf), deterministic: see grad_norm.h.
  double grad_norm_power_sum(double p) const;

  // Steps the scanned parameters. Each gradient is first multiplied by grad_factor (unscaling and
  // clipping); with skip (a step with inf/NaN gradients under AMP) nothing changes, not even steps.
  void adam(double lr, double beta1, double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
            bool decoupled_weight_decay, double grad_factor, bool skip);
  void sgd(double lr, double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
           double grad_factor, bool skip);

  // For kernels launched elsewhere (Triton): one int64 row per scanned parameter,
  //   [param, grad, state0, state1, state2, numel, counter, 0]
  // with data addresses (0 for absent state), numel in real elements, and counter the address
  // counters_address + 4 * index of the parameter's float32 counter (its step count or first-step
  // flag). Tensors with odd layouts are given as contiguous copies; finish_launch() writes them
  // back, after the launch is enqueued, and forgets the scan.
  at::Tensor launch_rows(int64_t counters_address);
  void finish_launch();

  int64_t size() const { return static_cast<int64_t>(params_.size()); }

 private:
  struct Work {
    void* param;
    const void* grad;
    void* state[3];
    int64_t index;
  };

  void check_scanned() const;
  // Fills work_ and prefix_ for the scanned parameters; odd layouts are stepped on contiguous
  // copies that finish() writes back.
  void gather_work();
  void finish();
  void write_back();
  void forget_scan();

  std::vector<at::Tensor> params_;
  std::vector<char> is_complex_;
  std::vector<std::vector<at::Tensor>> state_;  // [param][k], real views
  std::vector<char> bound_;
  std::vector<char> fresh_;
  int64_t n_state_;
  at::Tensor steps_;
  std::string optimizer_;
  c10::ScalarType dtype_;
  c10::Device device_;

  bool scanned_ = false;
  std::vector<int64_t> active_;
  std::vector<const at::Tensor*> grads_;  // the active parameters' gradients (real views for complex)
  std::vector<at::Tensor> complex_grads_;  // reserved up front, so pointers into it stay valid
  std::vector<Work> work_;
  std::vector<int64_t> prefix_;
  std::vector<AdamTensorConstants> per_tensor_adam_;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back_;  // (destination, contiguous copy)
  std::vector<at::Tensor> keep_alive_;
};

}  // namespace fused_optim
