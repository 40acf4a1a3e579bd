// SGD element loop: momentum, dampening, Nesterov, weight decay and maximize as torch.optim.SGD's
// single-tensor path, in fp32 (fp64 for double parameters). Scalars and flags are folded by
// fused_optim/optim/sgd.py (SGD_SPEC).
#include "element_loop.h"

namespace fused_optim {
namespace {

enum Scalar { kLr, kMomentum, kDampening, kWeightDecay, kSign };
enum Flag { kMomentumOn, kL2, kNesterov };

template <typename C>
struct SgdScalars {
  C neg_lr, momentum, one_minus_dampening, weight_decay, sign, grad_factor;
  bool l2, nesterov;

  explicit SgdScalars(const UpdateArgs& a)
      : neg_lr(C(-a.scalars[kLr])),
        momentum(C(a.scalars[kMomentum])),
        one_minus_dampening(C(1.0 - a.scalars[kDampening])),
        weight_decay(C(a.scalars[kWeightDecay])),
        sign(C(a.scalars[kSign])),
        grad_factor(C(a.grad_factor)),
        l2(a.flags[kL2] != 0),
        nesterov(a.flags[kNesterov] != 0) {}
};

template <typename T, bool MOMENTUM, bool FIRST>
FUSED_OPTIM_INLINE void sgd_loop(T* __restrict p, const T* __restrict g, state_t<T>* __restrict buf, int64_t n,
                                 const SgdScalars<compute_t<T>>& s) {
  using C = compute_t<T>;
  for (int64_t i = 0; i < n; ++i) {
    const C param = load(p[i]);
    C grad = s.sign * (load(g[i]) * s.grad_factor);
    if (s.l2) {
      grad = grad + s.weight_decay * param;
    }
    if (MOMENTUM) {
      C b;
      if (FIRST) {
        b = grad;
      } else {
        b = buf[i] * s.momentum;
        b = b + s.one_minus_dampening * grad;
      }
      buf[i] = b;
      grad = s.nesterov ? grad + s.momentum * b : b;
    }
    p[i] = store_as<T>(param + s.neg_lr * grad);
  }
}

#define FUSED_OPTIM_SGD_VARIANT(NAME, T, MOMENTUM, FIRST)                                            \
  FUSED_OPTIM_SIMD_CLONES void NAME(T* p, const T* g, state_t<T>* buf, int64_t n,                    \
                                    const SgdScalars<compute_t<T>>& s) {                             \
    sgd_loop<T, MOMENTUM, FIRST>(p, g, buf, n, s);                                                   \
  }

#define FUSED_OPTIM_SGD_DTYPE(SUFFIX, T)                                                               \
  FUSED_OPTIM_SGD_VARIANT(sgd_##SUFFIX, T, false, false)                                               \
  FUSED_OPTIM_SGD_VARIANT(sgd_momentum_##SUFFIX, T, true, false)                                       \
  FUSED_OPTIM_SGD_VARIANT(sgd_momentum_first_##SUFFIX, T, true, true)                                  \
  void sgd_dispatch(T* p, const T* g, state_t<T>* buf, int64_t n, const SgdScalars<compute_t<T>>& s,  \
                    bool momentum, bool first) {                                                       \
    if (!momentum) {                                                                                   \
      sgd_##SUFFIX(p, g, buf, n, s);                                                                   \
    } else if (first) {                                                                                \
      sgd_momentum_first_##SUFFIX(p, g, buf, n, s);                                                    \
    } else {                                                                                           \
      sgd_momentum_##SUFFIX(p, g, buf, n, s);                                                          \
    }                                                                                                  \
  }

FUSED_OPTIM_SGD_DTYPE(f32, float)
FUSED_OPTIM_SGD_DTYPE(f64, double)
FUSED_OPTIM_SGD_DTYPE(bf16, bf16_bits)
FUSED_OPTIM_SGD_DTYPE(f16, half_t)

int n_state(const int64_t* flags) { return flags[kMomentumOn] ? 1 : 0; }

void prepare(const double*, const int64_t*, double, double*) {}

void update(c10::ScalarType dtype, const Streams& st, int64_t n, const UpdateArgs& args) {
  dispatch_param_type(dtype, "sgd", [&](auto* ptag, auto* stag) {
    using T = std::remove_pointer_t<decltype(ptag)>;
    using S = std::remove_pointer_t<decltype(stag)>;
    const SgdScalars<compute_t<T>> scalars(args);
    sgd_dispatch(static_cast<T*>(st.param), static_cast<const T*>(st.grad), static_cast<S*>(st.state[0]), n, scalars,
                 args.flags[kMomentumOn] != 0, args.first);
  });
}

const RegisterOptimizerKernel registered("sgd", {n_state, prepare, update});

}  // namespace
}  // namespace fused_optim
