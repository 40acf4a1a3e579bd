// One OpenMP region over the elements of many tensors.
#pragma once

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fused_optim {

// Below this many elements a step runs on one thread: waking the pool costs more than it saves.
constexpr int64_t kMinParallelElements = 1 << 14;

// Calls fn(t, begin, end) on element ranges of tensors t = 0..n-1, where tensor t is the slice
// [prefix[t], prefix[t+1]) of one virtual concatenation. The concatenation is cut into one
// contiguous, equal share per thread, so one big tensor and a thousand small ones both keep every
// core equally busy, and a thread streams through memory in order. fn must not throw.
template <typename F>
void parallel_over_elements(const std::vector<int64_t>& prefix, const F& fn, int64_t min_parallel = kMinParallelElements) {
  const int64_t total = prefix.empty() ? 0 : prefix.back();
  if (total == 0) {
    return;
  }
  auto run = [&](int64_t begin, int64_t end) {
    int64_t t = std::upper_bound(prefix.begin(), prefix.end(), begin) - prefix.begin() - 1;
    while (begin < end) {
      const int64_t stop = std::min(end, prefix[t + 1]);
      if (stop > begin) {
        fn(t, begin - prefix[t], stop - prefix[t]);
      }
      begin = stop;
      ++t;
    }
  };
  if (at::get_num_threads() <= 1 || total < min_parallel || omp_in_parallel()) {
    run(0, total);
    return;
  }
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads();
    const int64_t id = omp_get_thread_num();
    // Shares start at multiples of 64 elements, so neighbours rarely write one cache line.
    const int64_t begin = (total * id / threads) & ~int64_t(63);
    const int64_t end = id + 1 == threads ? total : (total * (id + 1) / threads) & ~int64_t(63);
    run(begin, end);
  }
}

}  // namespace fused_optim
