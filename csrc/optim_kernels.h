// Element loops of the optimizer updates: one call updates elements [0, n) of one tensor.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace fused_optim {

// Hyperparameters already folded into the numbers the loop uses, in double; the loop casts them
// to its compute type once, as torch does with Python scalars.
struct AdamConstants {
  double beta1;
  double beta2;
  double eps;
  double l2_weight_decay;  // Adam's weight_decay (added to the gradient); 0 for AdamW
  double decay;            // AdamW's 1 - lr * weight_decay; 1 for Adam
  double grad_sign;        // -1 under maximize
  double grad_factor;      // unscale and clip: the gradient is multiplied by it first (1 for neither)
  bool amsgrad;
};

struct AdamTensorConstants {
  double neg_step_size;  // -lr / (1 - beta1^step)
  double bias_correction2_sqrt;
};

// p, g in the parameter's dtype; m, v, vmax in the state dtype (float32 for 16-bit parameters).
void adam_update(c10::ScalarType param_type, void* p, const void* g, void* m, void* v, void* vmax, int64_t n,
                 const AdamConstants& constants, const AdamTensorConstants& tensor);

struct SgdConstants {
  double lr;
  double momentum;
  double dampening;
  double weight_decay;
  double grad_sign;
  double grad_factor;
  bool nesterov;
};

// buf is null without momentum; `first` means buf holds nothing yet and is set to the gradient.
void sgd_update(c10::ScalarType param_type, void* p, const void* g, void* buf, int64_t n, const SgdConstants& constants,
                bool first);

}  // namespace fused_optim
