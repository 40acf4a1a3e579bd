// Adagrad element loop (dense gradients), torch.optim.Adagrad's single-tensor path operation by
// operation in fp32 (fp64 for double parameters): p, g, sum in and p, sum out, 20 bytes per fp32
// element. Sparse gradients take the reference math. Scalars are folded by fused_optim/optim/adagrad.py.
#include <cmath>

#include "element_loop.h"

namespace fused_optim {
namespace {

enum Scalar { kLr, kLrDecay, kEps, kWeightDecay, kSign, kRoundingKey };
enum Flag { kL2, kMaster, kStateBf16 };
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

// T: parameter storage, S: accumulator storage, M: master kind (element_loop.h).
template <typename T, typename S, int M, bool L2>
FUSED_OPTIM_INLINE void adagrad_loop(T* __restrict p, const T* __restrict g, S* __restrict sum,
                                     void* __restrict master, int64_t n, const AdagradScalars<compute_t<T>>& scalars_in,
                                     const RoundingKeys& keys_in) {
  using C = compute_t<T>;
  // local copies: the loop reads registers, never memory that a store might alias
  const auto s = scalars_in;
  const RoundingKeys keys = keys_in;
  uint32_t element = keys.offset_lo;  // the hash's counter: a 32-bit induction, not 64-bit i truncated
  for (int64_t i = 0; i < n; ++i, ++element) {
    const C param = load_param<T, M>(p, master, i);
    C grad = s.sign * (load(g[i]) * s.grad_factor);
    if (L2) {
      grad = grad + s.weight_decay * param;
    }
    const C total = load(sum[i]) + grad * grad;
    store_state<T, S, M>(sum, i, total, 0, keys, element);
    const C std_ = std::sqrt(total) + s.eps;
    store_param<T, M>(p, master, i, param + (s.neg_clr * grad) / std_, keys, element);
  }
}

template <typename T, typename S, int M, bool L2>
FUSED_OPTIM_SIMD_CLONES void adagrad_variant(T* p, const T* g, S* sum, void* master, int64_t n,
                                             const AdagradScalars<compute_t<T>>& s, const RoundingKeys& keys) {
  adagrad_loop<T, S, M, L2>(p, g, sum, master, n, s, keys);
}

int n_state(const int64_t* flags) {
  return 1 + (flags[kMaster] == kMasterFp32 || flags[kMaster] == kMasterKahan ? 1 : 0);
}

void prepare(const double* s, const int64_t*, double step, double* tensor) {
  tensor[kNegClr] = -(s[kLr] / (1.0 + (step - 1.0) * s[kLrDecay]));
}

void update(c10::ScalarType dtype, const Streams& st, int64_t n, const UpdateArgs& args) {
  const bool l2 = args.flags[kL2] != 0;
  dispatch_low_precision(dtype, args.flags[kStateBf16] != 0, args.flags[kMaster], "adagrad",
                         [&](auto* ptag, auto* stag, auto master_kind) {
    using T = std::remove_pointer_t<decltype(ptag)>;
    using S = std::remove_pointer_t<decltype(stag)>;
    constexpr int M = decltype(master_kind)::value;
    const AdagradScalars<compute_t<T>> scalars(args);
    const size_t extra_size = M == kMasterFp32 ? sizeof(float) : sizeof(T);
    for_key_ranges(args.offset, n, [&](int64_t begin, int64_t count) {
      const RoundingKeys keys(static_cast<uint32_t>(args.scalars[kRoundingKey]), args.tensor_key, args.offset + begin);
      T* p = static_cast<T*>(st.param) + begin;
      const T* g = static_cast<const T*>(st.grad) + begin;
      S* sum = static_cast<S*>(st.state[0]) + begin;
      void* master = M == kMasterFp32 || M == kMasterKahan ? static_cast<char*>(st.state[1]) + begin * extra_size
                                                           : nullptr;
      l2 ? adagrad_variant<T, S, M, true>(p, g, sum, master, count, scalars, keys)
         : adagrad_variant<T, S, M, false>(p, g, sum, master, count, scalars, keys);
    });
  });
}

const RegisterOptimizerKernel registered("adagrad", {n_state, prepare, update});

}  // namespace
}  // namespace fused_optim
