// SGD element loop: momentum, dampening, Nesterov, weight decay and maximize as torch.optim.SGD's
// single-tensor path, in fp32 (fp64 for double parameters). Scalars and flags are folded by
// fused_optim/optim/sgd.py (SGD_SPEC).
#include "element_loop.h"

namespace fused_optim {
namespace {

enum Scalar { kLr, kMomentum, kDampening, kWeightDecay, kSign, kRoundingKey };
enum Flag { kMomentumOn, kL2, kNesterov, kMaster, kStateBf16 };

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

// T: parameter storage, S: momentum buffer storage, M: master kind (element_loop.h).
template <typename T, typename S, int M, bool MOMENTUM, bool FIRST>
FUSED_OPTIM_INLINE void sgd_loop(T* __restrict p, const T* __restrict g, S* __restrict buf, void* __restrict master,
                                 int64_t n, const SgdScalars<compute_t<T>>& scalars_in, const RoundingKeys& keys_in) {
  using C = compute_t<T>;
  // local copies: the loop reads registers, never memory that a store might alias
  const auto s = scalars_in;
  const RoundingKeys keys = keys_in;
  uint32_t element = keys.offset_lo;  // the hash's counter: a 32-bit induction, not 64-bit i truncated
  for (int64_t i = 0; i < n; ++i, ++element) {
    const C param = load_param<T, M>(p, master, i);
    C grad = s.sign * (load(g[i]) * s.grad_factor);
    grad = choose(s.l2, grad + s.weight_decay * param, grad);
    if (MOMENTUM) {
      C b;
      if (FIRST) {
        b = grad;
      } else {
        b = load(buf[i]) * s.momentum;
        b = b + s.one_minus_dampening * grad;
      }
      store_state<T, S, M>(buf, i, b, 0, keys, element);
      grad = choose(s.nesterov, grad + s.momentum * b, b);
    }
    store_param<T, M>(p, master, i, param + s.neg_lr * grad, keys, element);
  }
}

template <typename T, typename S, int M, bool MOMENTUM, bool FIRST>
FUSED_OPTIM_SIMD_CLONES void sgd_variant(T* p, const T* g, S* buf, void* master, int64_t n,
                                         const SgdScalars<compute_t<T>>& s, const RoundingKeys& keys) {
  sgd_loop<T, S, M, MOMENTUM, FIRST>(p, g, buf, master, n, s, keys);
}

int extra_state(int64_t master) { return master == kMasterFp32 || master == kMasterKahan ? 1 : 0; }

int n_state(const int64_t* flags) { return (flags[kMomentumOn] ? 1 : 0) + extra_state(flags[kMaster]); }

void prepare(const double*, const int64_t*, double, double*) {}

void update(c10::ScalarType dtype, const Streams& st, int64_t n, const UpdateArgs& args) {
  const bool momentum = args.flags[kMomentumOn] != 0;
  dispatch_low_precision(dtype, args.flags[kStateBf16] != 0, args.flags[kMaster], "sgd",
                         [&](auto* ptag, auto* stag, auto master_kind) {
    using T = std::remove_pointer_t<decltype(ptag)>;
    using S = std::remove_pointer_t<decltype(stag)>;
    constexpr int M = decltype(master_kind)::value;
    const SgdScalars<compute_t<T>> scalars(args);
    const size_t extra_size = M == kMasterFp32 ? sizeof(float) : sizeof(T);
    for_key_ranges(args.offset, n, [&](int64_t begin, int64_t count) {
      const RoundingKeys keys(static_cast<uint32_t>(args.scalars[kRoundingKey]), args.tensor_key, args.offset + begin);
      T* p = static_cast<T*>(st.param) + begin;
      const T* g = static_cast<const T*>(st.grad) + begin;
      S* buf = momentum ? static_cast<S*>(st.state[0]) + begin : nullptr;
      void* master = extra_state(M) ? static_cast<char*>(st.state[momentum ? 1 : 0]) + begin * extra_size : nullptr;
      if (!momentum) {
        sgd_variant<T, S, M, false, false>(p, g, buf, master, count, scalars, keys);
      } else if (args.first) {
        sgd_variant<T, S, M, true, true>(p, g, buf, master, count, scalars, keys);
      } else {
        sgd_variant<T, S, M, true, false>(p, g, buf, master, count, scalars, keys);
      }
    });
  });
}

const RegisterOptimizerKernel registered("sgd", {n_state, prepare, update});

}  // namespace
}  // namespace fused_optim
