// RMSprop element loop (plain, centered, with momentum), torch.optim.RMSprop's single-tensor path
// operation by operation in fp32 (fp64 for double parameters). Streams: p, g, square_avg, then
// momentum_buffer with momentum, then grad_avg when centered: 20 bytes per fp32 element plain,
// 8 more for each option. Scalars and flags are folded by fused_optim/optim/rmsprop.py.
#include <cmath>

#include "element_loop.h"

namespace fused_optim {
namespace {

enum Scalar { kLr, kAlpha, kEps, kWeightDecay, kMomentum, kSign, kRoundingKey };
enum Flag { kCentered, kMomentumOn, kL2, kLerpFromStart, kMaster, kStateBf16 };

template <typename C>
struct RmspropScalars {
  C neg_lr, alpha, one_minus_alpha, eps, weight_decay, momentum, sign, grad_factor;
  bool lerp_from_start, l2;

  explicit RmspropScalars(const UpdateArgs& a)
      : neg_lr(C(-a.scalars[kLr])),
        alpha(C(a.scalars[kAlpha])),
        one_minus_alpha(C(1.0 - a.scalars[kAlpha])),
        eps(C(a.scalars[kEps])),
        weight_decay(C(a.scalars[kWeightDecay])),
        momentum(C(a.scalars[kMomentum])),
        sign(C(a.scalars[kSign])),
        grad_factor(C(a.grad_factor)),
        lerp_from_start(a.flags[kLerpFromStart] != 0),
        l2(a.flags[kL2] != 0) {}
};

// T: parameter storage, S: state storage, M: master kind (element_loop.h).
template <typename T, typename S, int M, bool CENTERED, bool MOMENTUM>
FUSED_OPTIM_INLINE void rmsprop_loop(T* __restrict p, const T* __restrict g, S* __restrict square_avg,
                                     S* __restrict buf, S* __restrict grad_avg, void* __restrict master, int64_t n,
                                     const RmspropScalars<compute_t<T>>& scalars_in, const RoundingKeys& keys_in) {
  using C = compute_t<T>;
  // local copies: the loop reads registers, never memory that a store might alias
  const auto s = scalars_in;
  const RoundingKeys keys = keys_in;
  const C one_minus_weight = C(1) - s.one_minus_alpha;
  uint32_t element = keys.offset_lo;  // the hash's counter: a 32-bit induction, not 64-bit i truncated
  for (int64_t i = 0; i < n; ++i, ++element) {
    const C param = load_param<T, M>(p, master, i);
    C grad = s.sign * (load(g[i]) * s.grad_factor);
    grad = choose(s.l2, grad + s.weight_decay * param, grad);
    const C sq = load(square_avg[i]) * s.alpha + (s.one_minus_alpha * grad) * grad;
    store_state<T, S, M>(square_avg, i, sq, 0, keys, element);
    C avg;
    if (CENTERED) {
      const C ga_old = load(grad_avg[i]);
      const C ga = choose(s.lerp_from_start, ga_old + s.one_minus_alpha * (grad - ga_old),
                          grad - (grad - ga_old) * one_minus_weight);
      store_state<T, S, M>(grad_avg, i, ga, MOMENTUM ? 2 : 1, keys, element);
      avg = std::sqrt(sq + (-ga) * ga);
    } else {
      avg = std::sqrt(sq);
    }
    avg = avg + s.eps;
    if (MOMENTUM) {
      const C b = load(buf[i]) * s.momentum + grad / avg;
      store_state<T, S, M>(buf, i, b, 1, keys, element);
      store_param<T, M>(p, master, i, param + s.neg_lr * b, keys, element);
    } else {
      store_param<T, M>(p, master, i, param + (s.neg_lr * grad) / avg, keys, element);
    }
  }
}

template <typename T, typename S, int M, bool CENTERED, bool MOMENTUM>
FUSED_OPTIM_SIMD_CLONES void rmsprop_variant(T* p, const T* g, S* sq, S* buf, S* ga, void* master, int64_t n,
                                             const RmspropScalars<compute_t<T>>& s, const RoundingKeys& keys) {
  rmsprop_loop<T, S, M, CENTERED, MOMENTUM>(p, g, sq, buf, ga, master, n, s, keys);
}

int n_moments(const int64_t* flags) { return 1 + (flags[kMomentumOn] ? 1 : 0) + (flags[kCentered] ? 1 : 0); }

int n_state(const int64_t* flags) {
  const int64_t master = flags[kMaster];
  return n_moments(flags) + (master == kMasterFp32 || master == kMasterKahan ? 1 : 0);
}

void prepare(const double*, const int64_t*, double, double*) {}

void update(c10::ScalarType dtype, const Streams& st, int64_t n, const UpdateArgs& args) {
  const bool momentum = args.flags[kMomentumOn] != 0;
  const bool centered = args.flags[kCentered] != 0;
  const int moments = n_moments(args.flags);
  dispatch_low_precision(dtype, args.flags[kStateBf16] != 0, args.flags[kMaster], "rmsprop",
                         [&](auto* ptag, auto* stag, auto master_kind) {
    using T = std::remove_pointer_t<decltype(ptag)>;
    using S = std::remove_pointer_t<decltype(stag)>;
    constexpr int M = decltype(master_kind)::value;
    const RmspropScalars<compute_t<T>> scalars(args);
    const size_t extra_size = M == kMasterFp32 ? sizeof(float) : sizeof(T);
    for_key_ranges(args.offset, n, [&](int64_t begin, int64_t count) {
      const RoundingKeys keys(static_cast<uint32_t>(args.scalars[kRoundingKey]), args.tensor_key, args.offset + begin);
      T* p = static_cast<T*>(st.param) + begin;
      const T* g = static_cast<const T*>(st.grad) + begin;
      S* sq = static_cast<S*>(st.state[0]) + begin;
      S* buf = momentum ? static_cast<S*>(st.state[1]) + begin : nullptr;
      S* ga = centered ? static_cast<S*>(st.state[momentum ? 2 : 1]) + begin : nullptr;
      void* master = M == kMasterFp32 || M == kMasterKahan ? static_cast<char*>(st.state[moments]) + begin * extra_size
                                                           : nullptr;
      if (centered) {
        momentum ? rmsprop_variant<T, S, M, true, true>(p, g, sq, buf, ga, master, count, scalars, keys)
                 : rmsprop_variant<T, S, M, true, false>(p, g, sq, buf, ga, master, count, scalars, keys);
      } else {
        momentum ? rmsprop_variant<T, S, M, false, true>(p, g, sq, buf, ga, master, count, scalars, keys)
                 : rmsprop_variant<T, S, M, false, false>(p, g, sq, buf, ga, master, count, scalars, keys);
      }
    });
  });
}

const RegisterOptimizerKernel registered("rmsprop", {n_state, prepare, update});

}  // namespace
}  // namespace fused_optim
