// RMSprop element loop (plain, centered, with momentum), torch.optim.RMSprop's single-tensor path
// operation by operation in fp32 (fp64 for double parameters). Streams: p, g, square_avg, then
// momentum_buffer with momentum, then grad_avg when centered: 20 bytes per fp32 element plain,
// 8 more for each option. Scalars and flags are folded by fused_optim/optim/rmsprop.py.
#include <cmath>

#include "element_loop.h"

namespace fused_optim {
namespace {

enum Scalar { kLr, kAlpha, kEps, kWeightDecay, kMomentum, kSign };
enum Flag { kCentered, kMomentumOn, kL2, kLerpFromStart };

template <typename C>
struct RmspropScalars {
  C neg_lr, alpha, one_minus_alpha, eps, weight_decay, momentum, sign, grad_factor;
  bool lerp_from_start;

  explicit RmspropScalars(const UpdateArgs& a)
      : neg_lr(C(-a.scalars[kLr])),
        alpha(C(a.scalars[kAlpha])),
        one_minus_alpha(C(1.0 - a.scalars[kAlpha])),
        eps(C(a.scalars[kEps])),
        weight_decay(C(a.scalars[kWeightDecay])),
        momentum(C(a.scalars[kMomentum])),
        sign(C(a.scalars[kSign])),
        grad_factor(C(a.grad_factor)),
        lerp_from_start(a.flags[kLerpFromStart] != 0) {}
};

template <typename T, bool CENTERED, bool MOMENTUM, bool L2>
FUSED_OPTIM_INLINE void rmsprop_loop(T* __restrict p, const T* __restrict g, state_t<T>* __restrict square_avg,
                                     state_t<T>* __restrict buf, state_t<T>* __restrict grad_avg, int64_t n,
                                     const RmspropScalars<compute_t<T>>& s) {
  using C = compute_t<T>;
  const C one_minus_weight = C(1) - s.one_minus_alpha;
  for (int64_t i = 0; i < n; ++i) {
    const C param = load(p[i]);
    C grad = s.sign * (load(g[i]) * s.grad_factor);
    if (L2) {
      grad = grad + s.weight_decay * param;
    }
    const C sq = square_avg[i] * s.alpha + (s.one_minus_alpha * grad) * grad;
    square_avg[i] = sq;
    C avg;
    if (CENTERED) {
      const C ga_old = grad_avg[i];
      const C ga = s.lerp_from_start ? ga_old + s.one_minus_alpha * (grad - ga_old)
                                     : grad - (grad - ga_old) * one_minus_weight;
      grad_avg[i] = ga;
      avg = std::sqrt(sq + (-ga) * ga);
    } else {
      avg = std::sqrt(sq);
    }
    avg = avg + s.eps;
    if (MOMENTUM) {
      const C b = buf[i] * s.momentum + grad / avg;
      buf[i] = b;
      p[i] = store_as<T>(param + s.neg_lr * b);
    } else {
      p[i] = store_as<T>(param + (s.neg_lr * grad) / avg);
    }
  }
}

#define FUSED_OPTIM_RMSPROP_VARIANT(NAME, T, CENTERED, MOMENTUM, L2)                                            \
  FUSED_OPTIM_SIMD_CLONES void NAME(T* p, const T* g, state_t<T>* sq, state_t<T>* buf, state_t<T>* ga, int64_t n, \
                                    const RmspropScalars<compute_t<T>>& s) {                                     \
    rmsprop_loop<T, CENTERED, MOMENTUM, L2>(p, g, sq, buf, ga, n, s);                                           \
  }

#define FUSED_OPTIM_RMSPROP_DTYPE(SUFFIX, T)                                                              \
  FUSED_OPTIM_RMSPROP_VARIANT(rmsprop_##SUFFIX, T, false, false, false)                                   \
  FUSED_OPTIM_RMSPROP_VARIANT(rmsprop_l2_##SUFFIX, T, false, false, true)                                 \
  FUSED_OPTIM_RMSPROP_VARIANT(rmsprop_m_##SUFFIX, T, false, true, false)                                  \
  FUSED_OPTIM_RMSPROP_VARIANT(rmsprop_m_l2_##SUFFIX, T, false, true, true)                                \
  FUSED_OPTIM_RMSPROP_VARIANT(rmsprop_c_##SUFFIX, T, true, false, false)                                  \
  FUSED_OPTIM_RMSPROP_VARIANT(rmsprop_c_l2_##SUFFIX, T, true, false, true)                                \
  FUSED_OPTIM_RMSPROP_VARIANT(rmsprop_cm_##SUFFIX, T, true, true, false)                                  \
  FUSED_OPTIM_RMSPROP_VARIANT(rmsprop_cm_l2_##SUFFIX, T, true, true, true)                                \
  void rmsprop_dispatch(T* p, const T* g, state_t<T>* sq, state_t<T>* buf, state_t<T>* ga, int64_t n,    \
                        const RmspropScalars<compute_t<T>>& s, bool centered, bool momentum, bool l2) {  \
    if (centered) {                                                                                       \
      if (momentum) {                                                                                     \
        l2 ? rmsprop_cm_l2_##SUFFIX(p, g, sq, buf, ga, n, s) : rmsprop_cm_##SUFFIX(p, g, sq, buf, ga, n, s); \
      } else {                                                                                            \
        l2 ? rmsprop_c_l2_##SUFFIX(p, g, sq, buf, ga, n, s) : rmsprop_c_##SUFFIX(p, g, sq, buf, ga, n, s); \
      }                                                                                                   \
    } else if (momentum) {                                                                                \
      l2 ? rmsprop_m_l2_##SUFFIX(p, g, sq, buf, ga, n, s) : rmsprop_m_##SUFFIX(p, g, sq, buf, ga, n, s);   \
    } else {                                                                                              \
      l2 ? rmsprop_l2_##SUFFIX(p, g, sq, buf, ga, n, s) : rmsprop_##SUFFIX(p, g, sq, buf, ga, n, s);       \
    }                                                                                                     \
  }

FUSED_OPTIM_RMSPROP_DTYPE(f32, float)
FUSED_OPTIM_RMSPROP_DTYPE(f64, double)
FUSED_OPTIM_RMSPROP_DTYPE(bf16, bf16_bits)
FUSED_OPTIM_RMSPROP_DTYPE(f16, half_t)

int n_state(const int64_t* flags) { return 1 + (flags[kMomentumOn] ? 1 : 0) + (flags[kCentered] ? 1 : 0); }

void prepare(const double*, const int64_t*, double, double*) {}

void update(c10::ScalarType dtype, const Streams& st, int64_t n, const UpdateArgs& args) {
  dispatch_param_type(dtype, "rmsprop", [&](auto* ptag, auto* stag) {
    using T = std::remove_pointer_t<decltype(ptag)>;
    using S = std::remove_pointer_t<decltype(stag)>;
    const bool momentum = args.flags[kMomentumOn] != 0;
    const RmspropScalars<compute_t<T>> scalars(args);
    S* buf = momentum ? static_cast<S*>(st.state[1]) : nullptr;
    S* grad_avg = static_cast<S*>(st.state[momentum ? 2 : 1]);
    rmsprop_dispatch(static_cast<T*>(st.param), static_cast<const T*>(st.grad), static_cast<S*>(st.state[0]), buf,
                     grad_avg, n, scalars, args.flags[kCentered] != 0, momentum, args.flags[kL2] != 0);
  });
}

const RegisterOptimizerKernel registered("rmsprop", {n_state, prepare, update});

}  // namespace
}  // namespace fused_optim
