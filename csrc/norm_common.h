// Pieces shared by the LayerNorm and BatchNorm kernels: numerically stable moments, and a
// parallel loop over pieces of the work, each with its own slot for partial results.
#pragma once

#include <ATen/Parallel.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <omp.h>
#include <torch/extension.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "dtypes.h"
#include "parallel.h"
#include "plain_tensor.h"
#include "simd.h"

namespace fused_optim {

template <typename T>
using compute_t = typename ComputeType<T>::type;

// Values per cache-resident chunk: a chunk is read twice (mean, then squared deviations from
// it), the second time from L1/L2, so a whole span costs one pass over memory.
constexpr int64_t kMomentsChunk = 4096;

// Count, mean and sum of squared deviations from the mean (M2) of a set of values.
template <typename A>
struct Moments {
  A count = 0;
  A mean = 0;
  A m2 = 0;

  // Chan et al.'s update for the union with a set of n values of mean `m` and M2 `q`: exact,
  // and free of the cancellation of E[x^2] - E[x]^2.
  FUSED_OPTIM_INLINE void merge(A n, A m, A q) {
    if (n == 0) {
      return;
    }
    const A total = count + n;
    const A delta = m - mean;
    mean += delta * (n / total);
    m2 += q + delta * delta * (count * n / total);
    count = total;
  }
};

// Mean and M2 of x[0, n), n <= kMomentsChunk, by two passes in the compute type.
template <typename T>
FUSED_OPTIM_INLINE void chunk_moments(const T* __restrict x, int64_t n, compute_t<T>& mean, compute_t<T>& m2) {
  using C = compute_t<T>;
  C sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    sum += load(x[i]);
  }
  const C m = sum / C(n);
  C squares = 0;
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < n; ++i) {
    const C d = load(x[i]) - m;
    squares += d * d;
  }
  mean = m;
  m2 = squares;
}

// Moments of a contiguous span of any length, accumulated in A, chunk by chunk.
template <typename A, typename T>
FUSED_OPTIM_INLINE void span_moments(const T* x, int64_t n, Moments<A>& acc) {
  for (int64_t start = 0; start < n; start += kMomentsChunk) {
    const int64_t len = std::min(kMomentsChunk, n - start);
    compute_t<T> mean, m2;
    chunk_moments(x + start, len, mean, m2);
    acc.merge(A(len), A(mean), A(m2));
  }
}

// Outputs of at least this size are advised to use transparent huge pages (see empty_output).
constexpr size_t kHugePageAdviceBytes = size_t(32) << 20;

// Advises the memory of a new output of at least kHugePageAdviceBytes to use transparent huge
// pages. glibc serves allocations of 32 MB and more with fresh memory each time, which the kernel
// then fills with thousands of 4 KB page faults, often most of a norm's time; advised to use 2 MB
// pages, the same memory faults in a few hundred times fewer steps (torch's allocator does the
// same under THP_MEM_ALLOC_ENABLE=1). Advice only: where the system declines it, nothing changes.
inline void advise_huge_pages(const at::Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t bytes = out.nbytes();
  if (bytes >= kHugePageAdviceBytes) {
    constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
    const uintptr_t data = reinterpret_cast<uintptr_t>(out.data_ptr());
    const uintptr_t begin = (data + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t end = (data + bytes) & ~(kHugePage - 1);
    if (end > begin) {
      madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
    }
  }
#else
  (void)out;
#endif
}

// A new tensor like `like`, for a kernel to fill.
inline at::Tensor empty_output(const at::Tensor& like) {
  at::Tensor out = at::empty_like(like);
  advise_huge_pages(out);
  return out;
}

// A new tensor of these sizes and strides, for a kernel to fill.
inline at::Tensor empty_output(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options) {
  at::Tensor out = at::empty_strided(sizes, strides, options);
  advise_huge_pages(out);
  return out;
}

// Releases the GIL for a kernel's loops when the calling thread holds it: a call from Python
// does, the autograd engine running a C++ backward does not.
class ReleaseGilIfHeld {
 public:
  ReleaseGilIfHeld() : state_(PyGILState_Check() ? PyEval_SaveThread() : nullptr) {}
  ~ReleaseGilIfHeld() {
    if (state_ != nullptr) {
      PyEval_RestoreThread(state_);
    }
  }
  ReleaseGilIfHeld(const ReleaseGilIfHeld&) = delete;
  ReleaseGilIfHeld& operator=(const ReleaseGilIfHeld&) = delete;

 private:
  PyThreadState* state_;
};

// ----- the eager autograd path (C++ autograd Functions) ---------------------------------------

// Whether a backward must be computed by the Python composite backward rather than the kernels:
// a graph is being built (create_graph=True), the gradient is not a plain CPU tensor (batched
// gradients, a subclass), or a dispatch mode is active.
inline bool needs_composite_backward(const at::Tensor& dy) {
  return at::GradMode::is_enabled() || !is_plain_cpu_tensor(dy) || c10::impl::TorchDispatchModeTLS::stack_len() > 0;
}

// Which of (x, weight, bias) need a gradient, for a Function whose forward took (x, weight,
// bias, ...) with weight and bias optional: absent inputs have no edge, so the edges of the
// later ones move down.
inline std::tuple<bool, bool, bool> gradients_needed(const torch::autograd::AutogradContext* ctx,
                                                     const at::Tensor& weight, const at::Tensor& bias) {
  size_t edge = 0;
  const bool dx = ctx->needs_input_grad(edge++);
  const bool dweight = weight.defined() && ctx->needs_input_grad(edge++);
  const bool dbias = bias.defined() && ctx->needs_input_grad(edge);
  return {dx, dweight, dbias};
}

// A Python callable set once from Python (the composite backward of an op), never released: it
// lives as long as the interpreter.
class PythonCallable {
 public:
  void set(pybind11::object fn) { fn_ = fn.release().ptr(); }

  // (dx, dweight, dbias) from the callable, each None or a tensor; undefined tensors for None.
  template <typename... Args>
  std::vector<at::Tensor> call_for_grads(const char* op, Args&&... args) const {
    TORCH_CHECK(fn_ != nullptr, op, ": no composite backward was registered");
    pybind11::gil_scoped_acquire gil;
    pybind11::object out = pybind11::reinterpret_borrow<pybind11::object>(fn_)(std::forward<Args>(args)...);
    auto grads = out.cast<std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>>();
    return {std::get<0>(grads).value_or(at::Tensor()), std::get<1>(grads).value_or(at::Tensor()),
            std::get<2>(grads).value_or(at::Tensor())};
  }

 private:
  PyObject* fn_ = nullptr;
};

inline std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// t flat (1-D), contiguous and in `dtype`: t itself when it already is.
inline at::Tensor flat_in(const at::Tensor& t, c10::ScalarType dtype) {
  if (!t.defined() || (t.dim() == 1 && t.scalar_type() == dtype && t.is_contiguous())) {
    return t;
  }
  return t.reshape(-1).to(dtype).contiguous();
}

// A gradient in its parameter's shape and dtype.
inline at::Tensor as_parameter_grad(const at::Tensor& grad, const at::Tensor& parameter) {
  if (!grad.defined() || (parameter.dim() == 1 && grad.scalar_type() == parameter.scalar_type())) {
    return grad;
  }
  return grad.reshape(parameter.sizes()).to(parameter.scalar_type());
}

// Pieces per thread of a parallel loop: more pieces than threads, handed out as threads free up,
// so a thread slowed down (by another process on its core, say) takes fewer of them.
constexpr int64_t kNormPiecesPerThread = 4;

// How many pieces parallel_pieces cuts [0, total) into. It depends on the thread count only, not
// on timing: partial results kept per piece and summed in piece order are deterministic.
inline int64_t piece_count(int64_t total) {
  const int64_t threads = std::max(1, at::get_num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(total, kNormPiecesPerThread * threads));
}

// Calls fn(piece, begin, end) for the `pieces` contiguous, equal pieces of [0, total), spread
// over the threads dynamically. `work` estimates the elements touched: small jobs run on the
// calling thread, as do calls from inside a parallel region. fn must not throw.
template <typename F>
void parallel_pieces(int64_t total, int64_t pieces, int64_t work, const F& fn) {
  const auto bound = [&](int64_t piece) { return total * piece / pieces; };
  const int threads = at::get_num_threads();
  if (threads <= 1 || pieces <= 1 || work < kMinParallelElements || omp_in_parallel()) {
    for (int64_t piece = 0; piece < pieces; ++piece) {
      fn(piece, bound(piece), bound(piece + 1));
    }
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t piece = 0; piece < pieces; ++piece) {
    fn(piece, bound(piece), bound(piece + 1));
  }
}

}  // namespace fused_optim
