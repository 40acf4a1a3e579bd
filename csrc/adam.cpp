// Adam/AdamW element loop. Each element reads and writes every stream once: p, g, m, v in and
// p, m, v out (28 bytes per fp32 element; 14 with bfloat16 parameters, state and stochastic
// rounding); the math follows torch.optim's single-tensor path operation by operation, in fp32
// (fp64 for double parameters). Scalars and flags are folded by fused_optim/optim/adam.py
// (ADAM_SPEC). Per element, two divisions and a square root (torch's order of operations) set the
// floor of the bfloat16 loops on one core; the rest is kept to about 100 AVX-512 instructions per
// 32 elements (124 with stochastic rounding).
#include <cmath>
#include <type_traits>

#include "element_loop.h"

namespace fused_optim {
namespace {

enum Scalar { kLr, kBeta1, kBeta2, kEps, kL2, kDecay, kSign, kRoundingKey };
enum Flag { kAmsgrad, kL2On, kLerpFromStart, kMaster, kStateBf16 };
enum TensorScalar { kNegStepSize, kBiasCorrection2Sqrt };

template <typename C>
struct AdamScalars {
  C one_minus_beta1, beta2, one_minus_beta2, eps, l2, decay, sign, grad_factor, neg_step_size, bias_correction2_sqrt;

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
        bias_correction2_sqrt(C(a.tensor[kBiasCorrection2Sqrt])) {}
};

template <typename C>
struct AdamResult {
  C param, m, v, v_used;
};

// One element's update, from its loaded values; LERP_START: torch's lerp formula for exp_avg,
// start + w * (end - start) for |w| < 0.5, else end - (end - start) * (1 - w), a template flag,
// not a select, as computing both formulas costs the bfloat16 loops about a tenth.
template <bool AMSGRAD, bool L2, bool LERP_START, typename C>
FUSED_OPTIM_INLINE AdamResult<C> adam_element(const AdamScalars<C>& s, C param, C raw_grad, C m_old, C v_old,
                                              C v_max) {
  C grad = s.sign * (raw_grad * s.grad_factor);
  if (L2) {
    grad = grad + s.l2 * param;
  }
  param = param * s.decay;
  const C m_new = LERP_START ? m_old + s.one_minus_beta1 * (grad - m_old)
                             : grad - (grad - m_old) * (C(1) - s.one_minus_beta1);
  C v_new = v_old * s.beta2;
  v_new = v_new + (s.one_minus_beta2 * grad) * grad;
  C v_used = v_new;
  if (AMSGRAD) {
    v_used = (v_new > v_max || v_new != v_new) ? v_new : v_max;  // torch.maximum propagates NaN
  }
  const C denom = std::sqrt(v_used) / s.bias_correction2_sqrt + s.eps;
  return {param + (s.neg_step_size * m_new) / denom, m_new, v_new, v_used};
}

// T: parameter storage, S: moment storage, M: master kind (element_loop.h); `element`: the low
// 32 bits of element 0's index (the hash's counter, a 32-bit induction, not 64-bit i truncated).
template <typename T, typename S, int M, bool AMSGRAD, bool L2, bool LERP_START>
FUSED_OPTIM_INLINE void adam_loop(T* __restrict p, const T* __restrict g, S* __restrict m, S* __restrict v,
                                  S* __restrict vmax, void* __restrict master, int64_t n,
                                  const AdamScalars<compute_t<T>>& scalars_in, const RoundingKeys& keys_in,
                                  uint32_t element) {
  using C = compute_t<T>;
  // local copies: the loop reads registers, never memory that a store might alias
  const auto s = scalars_in;
  const RoundingKeys keys = keys_in;
  for (int64_t i = 0; i < n; ++i, ++element) {
    const auto r = adam_element<AMSGRAD, L2, LERP_START>(s, load_param<T, M>(p, master, i), load(g[i]), load(m[i]),
                                                         load(v[i]), AMSGRAD ? load(vmax[i]) : C(0));
    if (AMSGRAD) {
      store_state<T, S, M>(vmax, i, r.v_used, 2, keys, element);
    }
    store_state<T, S, M>(m, i, r.m, 0, keys, element);
    store_state<T, S, M>(v, i, r.v, 1, keys, element);
    store_param<T, M>(p, master, i, r.param, keys, element);
  }
}

// Every stream bfloat16 (parameters, state, Kahan compensation): the loop walks 32-bit words of two
// elements each, so unpacking a value is one shift or mask and no vector is split or repacked.
template <typename T, typename S, int M>
constexpr bool kPairedLoop = std::is_same_v<T, bf16_bits> && std::is_same_v<S, bf16_bits> && M != kMasterFp32;

template <typename T, typename S, int M, bool AMSGRAD, bool L2, bool LERP_START>
FUSED_OPTIM_INLINE void adam_pair_loop(T* __restrict p, const T* __restrict g, S* __restrict m, S* __restrict v,
                                       S* __restrict vmax, void* __restrict master, int64_t n,
                                       const AdamScalars<float>& scalars_in, const RoundingKeys& keys_in) {
  const auto s = scalars_in;
  const RoundingKeys keys = keys_in;
  bf16_bits* __restrict comp = static_cast<bf16_bits*>(master);
  const int64_t pairs = n / 2;
  uint32_t element = keys.offset_lo;
  for (int64_t j = 0; j < pairs; ++j, element += 2) {
    const Bf16Pair pp = load_pair(p, j), gg = load_pair(g, j), mm = load_pair(m, j), vv = load_pair(v, j);
    const Bf16Pair cc = M == kMasterKahan ? load_pair(comp, j) : Bf16Pair{0.0f, 0.0f};
    const Bf16Pair xx = AMSGRAD ? load_pair(vmax, j) : Bf16Pair{0.0f, 0.0f};
    // Kahan: the parameter as the update sees it is value + compensation (load_param)
    const float p_even = M == kMasterKahan ? pp.even + cc.even : pp.even;
    const float p_odd = M == kMasterKahan ? pp.odd + cc.odd : pp.odd;
    const auto e = adam_element<AMSGRAD, L2, LERP_START>(s, p_even, gg.even, mm.even, vv.even, xx.even);
    const auto o = adam_element<AMSGRAD, L2, LERP_START>(s, p_odd, gg.odd, mm.odd, vv.odd, xx.odd);
    if (AMSGRAD) {
      store_pair(vmax, j, round_state_bits<M>(e.v_used, 2, keys, element),
                 round_state_bits<M>(o.v_used, 2, keys, element + 1));
    }
    store_pair(m, j, round_state_bits<M>(e.m, 0, keys, element), round_state_bits<M>(o.m, 0, keys, element + 1));
    store_pair(v, j, round_state_bits<M>(e.v, 1, keys, element), round_state_bits<M>(o.v, 1, keys, element + 1));
    if constexpr (M == kMasterKahan) {
      const uint32_t r_even = bf16_rounded_bits(e.param), r_odd = bf16_rounded_bits(o.param);
      store_pair(p, j, r_even, r_odd);
      store_pair(comp, j, bf16_rounded_bits(e.param - bits_float(r_even)),
                 bf16_rounded_bits(o.param - bits_float(r_odd)));
    } else {
      store_pair(p, j, round_param_bits<M>(e.param, keys, element), round_param_bits<M>(o.param, keys, element + 1));
    }
  }
  if (n % 2) {  // the last element
    const int64_t i = n - 1;
    adam_loop<T, S, M, AMSGRAD, L2, LERP_START>(p + i, g + i, m + i, v + i, AMSGRAD ? vmax + i : nullptr,
                                                M == kMasterKahan ? static_cast<void*>(comp + i) : nullptr, 1, s,
                                                keys, keys.offset_lo + static_cast<uint32_t>(i));
  }
}

// One SIMD-cloned entry point per (dtypes, master kind, variant): the loop body is inlined into
// each clone.
template <typename T, typename S, int M, bool AMSGRAD, bool L2, bool LERP_START>
FUSED_OPTIM_SIMD_CLONES void adam_variant(T* p, const T* g, S* m, S* v, S* vmax, void* master, int64_t n,
                                          const AdamScalars<compute_t<T>>& s, const RoundingKeys& keys) {
  if constexpr (kPairedLoop<T, S, M>) {
    adam_pair_loop<T, S, M, AMSGRAD, L2, LERP_START>(p, g, m, v, vmax, master, n, s, keys);
  } else {
    adam_loop<T, S, M, AMSGRAD, L2, LERP_START>(p, g, m, v, vmax, master, n, s, keys, keys.offset_lo);
  }
}

// The variant of these flags, picked once per slice.
template <typename T, typename S, int M>
void adam_dispatch(bool amsgrad, bool l2, bool lerp_start, T* p, const T* g, S* m, S* v, S* vmax, void* master,
                   int64_t n, const AdamScalars<compute_t<T>>& s, const RoundingKeys& keys) {
  auto with_lerp = [&](auto amsgrad_c, auto l2_c) {
    constexpr bool A = decltype(amsgrad_c)::value, L = decltype(l2_c)::value;
    lerp_start ? adam_variant<T, S, M, A, L, true>(p, g, m, v, vmax, master, n, s, keys)
               : adam_variant<T, S, M, A, L, false>(p, g, m, v, vmax, master, n, s, keys);
  };
  using yes = std::true_type;
  using no = std::false_type;
  if (amsgrad) {
    l2 ? with_lerp(yes{}, yes{}) : with_lerp(yes{}, no{});
  } else {
    l2 ? with_lerp(no{}, yes{}) : with_lerp(no{}, no{});
  }
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
  const bool lerp_start = args.flags[kLerpFromStart] != 0;
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
      adam_dispatch<T, S, M>(amsgrad, l2, lerp_start, p, g, m, v, vmax, extra, count, scalars, keys);
    });
  });
}

const RegisterOptimizerKernel registered("adam", {n_state, prepare, update});

}  // namespace
}  // namespace fused_optim
