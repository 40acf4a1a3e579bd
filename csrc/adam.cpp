// Adam/AdamW element loop. Each element reads and writes every stream once: p, g, m, v in and
// p, m, v out (28 bytes per fp32 element); the math follows torch.optim's single-tensor path
// operation by operation, in fp32 (fp64 for double parameters). Scalars and flags are folded by
// fused_optim/optim/adam.py (ADAM_SPEC).
#include <cmath>

#include "element_loop.h"

namespace fused_optim {
namespace {

enum Scalar { kLr, kBeta1, kBeta2, kEps, kL2, kDecay, kSign };
enum Flag { kAmsgrad, kL2On, kLerpFromStart };
enum TensorScalar { kNegStepSize, kBiasCorrection2Sqrt };

template <typename C>
struct AdamScalars {
  C one_minus_beta1, beta2, one_minus_beta2, eps, l2, decay, sign, grad_factor, neg_step_size, bias_correction2_sqrt;
  bool lerp_from_start;  // torch's lerp: start + w * (end - start) for |w| < 0.5, else end - (end - start) * (1 - w)

  explicit AdamScalars(const UpdateArgs& a)
      : one_minus_beta1(C(1.0 - a.scalars[kBeta1])),
        beta2(C(a.scalars[kBeta2])),
        one_minus_beta2(C(1.0 - a.scalars[kBeta2])),
        eps(C(a.scalars[kEps])),
        l2(C(a.scalars[kL2])),
        decay(C(a.scalars[kDecay])),
        sign(C(a.scalars[kSign])),
        grad_factor(C(a.grad_factor)),
        neg_step_size(C(a.tensor[kNegStepSize])),
        bias_correction2_sqrt(C(a.tensor[kBiasCorrection2Sqrt])),
        lerp_from_start(a.flags[kLerpFromStart] != 0) {}
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

// One SIMD-cloned entry point per (dtype, variant): the loop body is inlined into each clone.
#define FUSED_OPTIM_ADAM_VARIANT(NAME, T, AMSGRAD, L2)                                                        \
  FUSED_OPTIM_SIMD_CLONES void NAME(T* p, const T* g, state_t<T>* m, state_t<T>* v, state_t<T>* vmax, int64_t n, \
                                    const AdamScalars<compute_t<T>>& s) {                                       \
    adam_loop<T, AMSGRAD, L2>(p, g, m, v, vmax, n, s);                                                          \
  }

#define FUSED_OPTIM_ADAM_DTYPE(SUFFIX, T)                                                           \
  FUSED_OPTIM_ADAM_VARIANT(adam_##SUFFIX, T, false, false)                                          \
  FUSED_OPTIM_ADAM_VARIANT(adam_l2_##SUFFIX, T, false, true)                                        \
  FUSED_OPTIM_ADAM_VARIANT(adam_ams_##SUFFIX, T, true, false)                                       \
  FUSED_OPTIM_ADAM_VARIANT(adam_ams_l2_##SUFFIX, T, true, true)                                     \
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

int n_state(const int64_t* flags) { return flags[kAmsgrad] ? 3 : 2; }

void prepare(const double* s, const int64_t*, double step, double* tensor) {
  tensor[kNegStepSize] = -(s[kLr] / (1.0 - std::pow(s[kBeta1], step)));
  tensor[kBiasCorrection2Sqrt] = std::sqrt(1.0 - std::pow(s[kBeta2], step));
}

void update(c10::ScalarType dtype, const Streams& st, int64_t n, const UpdateArgs& args) {
  dispatch_param_type(dtype, "adam", [&](auto* ptag, auto* stag) {
    using T = std::remove_pointer_t<decltype(ptag)>;
    using S = std::remove_pointer_t<decltype(stag)>;
    const AdamScalars<compute_t<T>> scalars(args);
    adam_dispatch(static_cast<T*>(st.param), static_cast<const T*>(st.grad), static_cast<S*>(st.state[0]),
                  static_cast<S*>(st.state[1]), static_cast<S*>(st.state[2]), n, scalars, args.flags[kAmsgrad] != 0,
                  args.flags[kL2On] != 0);
  });
}

const RegisterOptimizerKernel registered("adam", {n_state, prepare, update});

}  // namespace
}  // namespace fused_optim
