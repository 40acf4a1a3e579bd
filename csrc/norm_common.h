// Pieces shared by the LayerNorm and BatchNorm kernels: numerically stable moments and one
// contiguous share of the work per thread, with a slot per thread for partial results.
#pragma once

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "dtypes.h"
#include "parallel.h"
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

// Slots for per-thread partial results: one per thread parallel_shares may run.
inline int share_slots() { return std::max(1, at::get_num_threads()); }

// Calls fn(slot, begin, end) on one contiguous share of [0, total) per thread, slot < share_slots().
// `work` estimates the elements touched: small jobs run on the calling thread, as do calls from
// inside a parallel region. fn must not throw.
template <typename F>
void parallel_shares(int64_t total, int64_t work, const F& fn) {
  if (total <= 0) {
    return;
  }
  const int slots = share_slots();
  if (slots <= 1 || total == 1 || work < kMinParallelElements || omp_in_parallel()) {
    fn(0, int64_t(0), total);
    return;
  }
#pragma omp parallel num_threads(slots)
  {
    const int64_t threads = omp_get_num_threads();
    const int64_t id = omp_get_thread_num();
    const int64_t begin = total * id / threads;
    const int64_t end = total * (id + 1) / threads;
    if (end > begin) {
      fn(static_cast<int>(id), begin, end);
    }
  }
}

}  // namespace fused_optim
