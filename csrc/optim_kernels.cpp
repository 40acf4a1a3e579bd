// Adam/AdamW and SGD element loops. Each reads and writes every stream once: Adam moves
// p, g, m, v in and p, m, v out (28 bytes per fp32 element); the math follows torch.optim's
// single-tensor path operation by operation, in fp32 (fp64 for double parameters).
#include "optim_kernels.h"

#include <c10/util/Exception.h>

#include <cmath>

#include "dtypes.h"
#include "simd.h"

namespace fused_optim {
namespace {

template <typename T>
using compute_t = typename ComputeType<T>::type;
// State of 16-bit parameters is kept in float32; float and double parameters keep their own dtype.
template <typename T>
using state_t = compute_t<T>;

template <typename C>
struct AdamScalars {
  C beta1, one_minus_beta1, beta2, one_minus_beta2, eps, l2, decay, sign, grad_factor, neg_step_size,
      bias_correction2_sqrt;
  bool lerp_from_start;  // torch's lerp: start + w * (end - start) for |w| < 0.5, else end - (end - start) * (1 - w)

  AdamScalars(const AdamConstants& c, const AdamTensorConstants& t)
      : beta1(C(c.beta1)),
        one_minus_beta1(C(1.0 - c.beta1)),
        beta2(C(c.beta2)),
        one_minus_beta2(C(1.0 - c.beta2)),
        eps(C(c.eps)),
        l2(C(c.l2_weight_decay)),
        decay(C(c.decay)),
        sign(C(c.grad_sign)),
        grad_factor(C(c.grad_factor)),
        neg_step_size(C(t.neg_step_size)),
        bias_correction2_sqrt(C(t.bias_correction2_sqrt)),
        lerp_from_start(std::abs(1.0 - c.beta1) < 0.5) {}
};

template <typename T, bool AMSGRAD, bool L2>
FUSED_OPTIM_INLINE void adam_loop(T* __restrict p, const T* __restrict g, state_t<T>* __restrict m,
                                  state_t<T>* __restrict v, state_t<T>* __restrict vmax, int64_t n,
                                  const AdamScalars<compute_t<T>>& s) {
  using C = compute_t<T>;
  const C one_minus_weight = C(1) - s.one_minus_beta1;
  for (int64_t i = 0; i < n; ++i) {
    C param = load(p[i]);
    C grad = s.sign * (load(g[i]) * s.grad_factor);
    if (L2) {
      grad = grad + s.l2 * param;
    }
    param = param * s.decay;
    const C m_old = m[i];
    const C m_new = s.lerp_from_start ? m_old + s.one_minus_beta1 * (grad - m_old)
                                      : grad - (grad - m_old) * one_minus_weight;
    C v_new = v[i] * s.beta2;
    v_new = v_new + (s.one_minus_beta2 * grad) * grad;
    C v_used = v_new;
    if (AMSGRAD) {
      const C v_max = vmax[i];
      v_used = (v_new > v_max || v_new != v_new) ? v_new : v_max;  // torch.maximum propagates NaN
      vmax[i] = v_used;
    }
    const C denom = std::sqrt(v_used) / s.bias_correction2_sqrt + s.eps;
    m[i] = m_new;
    v[i] = v_new;
    p[i] = store_as<T>(param + (s.neg_step_size * m_new) / denom);
  }
}

template <typename T, bool MOMENTUM, bool FIRST>
FUSED_OPTIM_INLINE void sgd_loop(T* __restrict p, const T* __restrict g, state_t<T>* __restrict buf, int64_t n,
                                 compute_t<T> neg_lr, compute_t<T> momentum, compute_t<T> one_minus_dampening,
                                 compute_t<T> weight_decay, compute_t<T> sign, compute_t<T> grad_factor, bool l2,
                                 bool nesterov) {
  using C = compute_t<T>;
  for (int64_t i = 0; i < n; ++i) {
    const C param = load(p[i]);
    C grad = sign * (load(g[i]) * grad_factor);
    if (l2) {
      grad = grad + weight_decay * param;
    }
    if (MOMENTUM) {
      C b;
      if (FIRST) {
        b = grad;
      } else {
        b = buf[i] * momentum;
        b = b + one_minus_dampening * grad;
      }
      buf[i] = b;
      grad = nesterov ? grad + momentum * b : b;
    }
    p[i] = store_as<T>(param + neg_lr * grad);
  }
}

// One SIMD-cloned entry point per (dtype, variant): the loop body is inlined into each clone.
#define FUSED_OPTIM_ADAM_VARIANT(NAME, T, AMSGRAD, L2)                                                        \
  FUSED_OPTIM_SIMD_CLONES void NAME(T* p, const T* g, state_t<T>* m, state_t<T>* v, state_t<T>* vmax, int64_t n, \
                                    const AdamScalars<compute_t<T>>& s) {                                       \
    adam_loop<T, AMSGRAD, L2>(p, g, m, v, vmax, n, s);                                                          \
  }

#define FUSED_OPTIM_ADAM_DTYPE(SUFFIX, T)                        \
  FUSED_OPTIM_ADAM_VARIANT(adam_##SUFFIX, T, false, false)       \
  FUSED_OPTIM_ADAM_VARIANT(adam_l2_##SUFFIX, T, false, true)     \
  FUSED_OPTIM_ADAM_VARIANT(adam_ams_##SUFFIX, T, true, false)    \
  FUSED_OPTIM_ADAM_VARIANT(adam_ams_l2_##SUFFIX, T, true, true)  \
  void adam_dispatch(T* p, const T* g, state_t<T>* m, state_t<T>* v, state_t<T>* vmax, int64_t n, \
                     const AdamScalars<compute_t<T>>& s, bool amsgrad, bool l2) {                  \
    if (amsgrad) {                                                                                  \
      l2 ? adam_ams_l2_##SUFFIX(p, g, m, v, vmax, n, s) : adam_ams_##SUFFIX(p, g, m, v, vmax, n, s); \
    } else {                                                                                        \
      l2 ? adam_l2_##SUFFIX(p, g, m, v, vmax, n, s) : adam_##SUFFIX(p, g, m, v, vmax, n, s);        \
    }                                                                                               \
  }

FUSED_OPTIM_ADAM_DTYPE(f32, float)
FUSED_OPTIM_ADAM_DTYPE(f64, double)
FUSED_OPTIM_ADAM_DTYPE(bf16, bf16_bits)
FUSED_OPTIM_ADAM_DTYPE(f16, half_t)

#define FUSED_OPTIM_SGD_VARIANT(NAME, T, MOMENTUM, FIRST)                                                   \
  FUSED_OPTIM_SIMD_CLONES void NAME(T* p, const T* g, state_t<T>* buf, int64_t n, compute_t<T> neg_lr,     \
                                    compute_t<T> momentum, compute_t<T> one_minus_dampening,               \
                                    compute_t<T> weight_decay, compute_t<T> sign, compute_t<T> grad_factor,     \
                                    bool l2, bool nesterov) {                                                   \
    sgd_loop<T, MOMENTUM, FIRST>(p, g, buf, n, neg_lr, momentum, one_minus_dampening, weight_decay, sign,     \
                                 grad_factor, l2, nesterov);                                                 \
  }

#define FUSED_OPTIM_SGD_DTYPE(SUFFIX, T)                                                                     \
  FUSED_OPTIM_SGD_VARIANT(sgd_##SUFFIX, T, false, false)                                                     \
  FUSED_OPTIM_SGD_VARIANT(sgd_momentum_##SUFFIX, T, true, false)                                             \
  FUSED_OPTIM_SGD_VARIANT(sgd_momentum_first_##SUFFIX, T, true, true)                                        \
  void sgd_dispatch(T* p, const T* g, state_t<T>* buf, int64_t n, const SgdConstants& c, bool first) {      \
    using C = compute_t<T>;                                                                                  \
    const C neg_lr = C(-c.lr), momentum = C(c.momentum), one_minus_dampening = C(1.0 - c.dampening);        \
    const C weight_decay = C(c.weight_decay), sign = C(c.grad_sign), factor = C(c.grad_factor);             \
    const bool l2 = c.weight_decay != 0;                                                                     \
    if (buf == nullptr) {                                                                                    \
      sgd_##SUFFIX(p, g, buf, n, neg_lr, momentum, one_minus_dampening, weight_decay, sign, factor, l2,     \
                   c.nesterov);                                                                              \
    } else if (first) {                                                                                      \
      sgd_momentum_first_##SUFFIX(p, g, buf, n, neg_lr, momentum, one_minus_dampening, weight_decay, sign,   \
                                  factor, l2, c.nesterov);                                                   \
    } else {                                                                                                 \
      sgd_momentum_##SUFFIX(p, g, buf, n, neg_lr, momentum, one_minus_dampening, weight_decay, sign, factor, \
                            l2, c.nesterov);                                                                 \
    }                                                                                                        \
  }

FUSED_OPTIM_SGD_DTYPE(f32, float)
FUSED_OPTIM_SGD_DTYPE(f64, double)
FUSED_OPTIM_SGD_DTYPE(bf16, bf16_bits)
FUSED_OPTIM_SGD_DTYPE(f16, half_t)

}  // namespace

void adam_update(c10::ScalarType param_type, void* p, const void* g, void* m, void* v, void* vmax, int64_t n,
                 const AdamConstants& constants, const AdamTensorConstants& tensor) {
  const bool l2 = constants.l2_weight_decay != 0;
  dispatch_storage(param_type, "adam", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using S = state_t<T>;
    const AdamScalars<compute_t<T>> scalars(constants, tensor);
    adam_dispatch(static_cast<T*>(p), static_cast<const T*>(g), static_cast<S*>(m), static_cast<S*>(v),
                  static_cast<S*>(vmax), n, scalars, constants.amsgrad, l2);
  });
}

void sgd_update(c10::ScalarType param_type, void* p, const void* g, void* buf, int64_t n, const SgdConstants& constants,
                bool first) {
  dispatch_storage(param_type, "sgd", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    sgd_dispatch(static_cast<T*>(p), static_cast<const T*>(g), static_cast<state_t<T>*>(buf), n, constants, first);
  });
}

}  // namespace fused_optim
