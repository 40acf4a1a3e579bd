// Adagrad element loop (dense gradients), torch.optim.Adagrad's single-tensor path operation by
// operation in fp32 (fp64 for double parameters): p, g, sum in and p, sum out, 20 bytes per fp32
// element. Sparse gradients take the reference math. Scalars are folded by fused_optim/optim/adagrad.py.
#include <cmath>

#include "element_loop.h"

namespace fused_optim {
namespace {

enum Scalar { kLr, kLrDecay, kEps, kWeightDecay, kSign };
enum Flag { kL2 };
enum TensorScalar { kNegClr };

template <typename C>
struct AdagradScalars {
  C neg_clr, eps, weight_decay, sign, grad_factor;

  explicit AdagradScalars(const UpdateArgs& a)
      : neg_clr(C(a.tensor[kNegClr])),
        eps(C(a.scalars[kEps])),
        weight_decay(C(a.scalars[kWeightDecay])),
        sign(C(a.scalars[kSign])),
        grad_factor(C(a.grad_factor)) {}
};

template <typename T, bool L2>
FUSED_OPTIM_INLINE void adagrad_loop(T* __restrict p, const T* __restrict g, state_t<T>* __restrict sum, int64_t n,
                                     const AdagradScalars<compute_t<T>>& s) {
  using C = compute_t<T>;
  for (int64_t i = 0; i < n; ++i) {
    const C param = load(p[i]);
    C grad = s.sign * (load(g[i]) * s.grad_factor);
    if (L2) {
      grad = grad + s.weight_decay * param;
    }
    const C total = sum[i] + grad * grad;
    sum[i] = total;
    const C std_ = std::sqrt(total) + s.eps;
    p[i] = store_as<T>(param + (s.neg_clr * grad) / std_);
  }
}

#define FUSED_OPTIM_ADAGRAD_VARIANT(NAME, T, L2)                                                           \
  FUSED_OPTIM_SIMD_CLONES void NAME(T* p, const T* g, state_t<T>* sum, int64_t n,                          \
                                    const AdagradScalars<compute_t<T>>& s) {                               \
    adagrad_loop<T, L2>(p, g, sum, n, s);                                                                  \
  }

#define FUSED_OPTIM_ADAGRAD_DTYPE(SUFFIX, T)                                                              \
  FUSED_OPTIM_ADAGRAD_VARIANT(adagrad_##SUFFIX, T, false)                                                 \
  FUSED_OPTIM_ADAGRAD_VARIANT(adagrad_l2_##SUFFIX, T, true)                                               \
  void adagrad_dispatch(T* p, const T* g, state_t<T>* sum, int64_t n, const AdagradScalars<compute_t<T>>& s, \
                        bool l2) {                                                                        \
    l2 ? adagrad_l2_##SUFFIX(p, g, sum, n, s) : adagrad_##SUFFIX(p, g, sum, n, s);                       \
  }

FUSED_OPTIM_ADAGRAD_DTYPE(f32, float)
FUSED_OPTIM_ADAGRAD_DTYPE(f64, double)
FUSED_OPTIM_ADAGRAD_DTYPE(bf16, bf16_bits)
FUSED_OPTIM_ADAGRAD_DTYPE(f16, half_t)

int n_state(const int64_t*) { return 1; }

void prepare(const double* s, const int64_t*, double step, double* tensor) {
  tensor[kNegClr] = -(s[kLr] / (1.0 + (step - 1.0) * s[kLrDecay]));
}

void update(c10::ScalarType dtype, const Streams& st, int64_t n, const UpdateArgs& args) {
  dispatch_param_type(dtype, "adagrad", [&](auto* ptag, auto* stag) {
    using T = std::remove_pointer_t<decltype(ptag)>;
    using S = std::remove_pointer_t<decltype(stag)>;
    const AdagradScalars<compute_t<T>> scalars(args);
    adagrad_dispatch(static_cast<T*>(st.param), static_cast<const T*>(st.grad), static_cast<S*>(st.state[0]), n,
                     scalars, args.flags[kL2] != 0);
  });
}

const RegisterOptimizerKernel registered("adagrad", {n_state, prepare, update});

}  // namespace
}  // namespace fused_optim
