// Adam/AdamW element loop. Each element reads and writes every stream once: p, g, m, v in and
// p, m, v out (28 bytes per fp32 element; 14 with bfloat16 parameters, state and stochastic rounding); the math follows torch.optim's single-tensor path
// operation by operation, in fp32 (fp64 for double parameters). Scalars and flags are folded by
// fused_optim/optim/adam.py (ADAM_SPEC).
#include <cmath>

#include "element_loop.h"

namespace fused_optim {
namespace {

enum Scalar { kLr, kBeta1, kBeta2, kEps, kL2, kDecay, kSign, kRoundingKey };
enum Flag { kAmsgrad, kL2On, kLerpFromStart, kMaster, kStateBf16 };
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

// T: parameter storage, S: moment storage, M: master kind (element_loop.h).
template <typename T, typename S, int M, bool AMSGRAD, bool L2>
FUSED_OPTIM_INLINE void adam_loop(T* __restrict p, const T* __restrict g, S* __restrict m, S* __restrict v,
                                  S* __restrict vmax, void* __restrict master, int64_t n,
                                  const AdamScalars<compute_t<T>>& scalars_in, const RoundingKeys& keys_in) {
  using C = compute_t<T>;
  // local copies: the loop reads registers, never memory that a store might alias
  const auto s = scalars_in;
  const RoundingKeys keys = keys_in;
  const C one_minus_weight = C(1) - s.one_minus_beta1;
  uint32_t element = keys.offset_lo;  // the hash's counter: a 32-bit induction, not 64-bit i truncated
  for (int64_t i = 0; i < n; ++i, ++element) {
    C param = load_param<T, M>(p, master, i);
    C grad = s.sign * (load(g[i]) * s.grad_factor);
    if (L2) {
      grad = grad + s.l2 * param;
    }
    param = param * s.decay;
    const C m_old = load(m[i]);
    const C m_new = choose(s.lerp_from_start, m_old + s.one_minus_beta1 * (grad - m_old),
                           grad - (grad - m_old) * one_minus_weight);
    C v_new = load(v[i]) * s.beta2;
    v_new = v_new + (s.one_minus_beta2 * grad) * grad;
    C v_used = v_new;
    if (AMSGRAD) {
      const C v_max = load(vmax[i]);
      v_used = (v_new > v_max || v_new != v_new) ? v_new : v_max;  // torch.maximum propagates NaN
      store_state<T, S, M>(vmax, i, v_used, 2, keys, element);
    }
    const C denom = std::sqrt(v_used) / s.bias_correction2_sqrt + s.eps;
    store_state<T, S, M>(m, i, m_new, 0, keys, element);
    store_state<T, S, M>(v, i, v_new, 1, keys, element);
    store_param<T, M>(p, master, i, param + (s.neg_step_size * m_new) / denom, keys, element);
  }
}

// One SIMD-cloned entry point per (dtypes, master kind, variant): the loop body is inlined into
// each clone.
template <typename T, typename S, int M, bool AMSGRAD, bool L2>
FUSED_OPTIM_SIMD_CLONES void adam_variant(T* p, const T* g, S* m, S* v, S* vmax, void* master, int64_t n,
                                          const AdamScalars<compute_t<T>>& s, const RoundingKeys& keys) {
  adam_loop<T, S, M, AMSGRAD, L2>(p, g, m, v, vmax, master, n, s, keys);
}

int n_state(const int64_t* flags) {
  const int64_t master = flags[kMaster];
  return (flags[kAmsgrad] ? 3 : 2) + (master == kMasterFp32 || master == kMasterKahan ? 1 : 0);
}

void prepare(const double* s, const int64_t*, double step, double* tensor) {
  tensor[kNegStepSize] = -(s[kLr] / (1.0 - std::pow(s[kBeta1], step)));
  tensor[kBiasCorrection2Sqrt] = std::sqrt(1.0 - std::pow(s[kBeta2], step));
}

void update(c10::ScalarType dtype, const Streams& st, int64_t n, const UpdateArgs& args) {
  const bool amsgrad = args.flags[kAmsgrad] != 0;
  const bool l2 = args.flags[kL2On] != 0;
  dispatch_low_precision(dtype, args.flags[kStateBf16] != 0, args.flags[kMaster], "adam",
                         [&](auto* ptag, auto* stag, auto master_kind) {
    using T = std::remove_pointer_t<decltype(ptag)>;
    using S = std::remove_pointer_t<decltype(stag)>;
    constexpr int M = decltype(master_kind)::value;
    const AdamScalars<compute_t<T>> scalars(args);
    const size_t extra_size = M == kMasterFp32 ? sizeof(float) : sizeof(T);
    for_key_ranges(args.offset, n, [&](int64_t begin, int64_t count) {
      const RoundingKeys keys(static_cast<uint32_t>(args.scalars[kRoundingKey]), args.tensor_key, args.offset + begin);
      T* p = static_cast<T*>(st.param) + begin;
      const T* g = static_cast<const T*>(st.grad) + begin;
      S* m = static_cast<S*>(st.state[0]) + begin;
      S* v = static_cast<S*>(st.state[1]) + begin;
      S* vmax = amsgrad ? static_cast<S*>(st.state[2]) + begin : nullptr;
      void* extra = M == kMasterFp32 || M == kMasterKahan
                        ? static_cast<char*>(st.state[amsgrad ? 3 : 2]) + begin * extra_size
                        : nullptr;
      if (amsgrad) {
        l2 ? adam_variant<T, S, M, true, true>(p, g, m, v, vmax, extra, count, scalars, keys)
           : adam_variant<T, S, M, true, false>(p, g, m, v, vmax, extra, count, scalars, keys);
      } else {
        l2 ? adam_variant<T, S, M, false, true>(p, g, m, v, vmax, extra, count, scalars, keys)
           : adam_variant<T, S, M, false, false>(p, g, m, v, vmax, extra, count, scalars, keys);
      }
    });
  });
}

const RegisterOptimizerKernel registered("adam", {n_state, prepare, update});

}  // namespace
}  // namespace fused_optim
