// One OpenMP region over the elements of many tensors.
#pragma once

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace fused_optim {

// Below this many elements a step runs on one thread: waking the pool costs more than it saves.
constexpr int64_t kMinParallelElements = 1 << 14;
// Each thread takes about this many pieces, so a thread slowed by a busy core hands its share on.
constexpr int64_t kPiecesPerThread = 8;
constexpr int64_t kMinPieceElements = 1 << 13;

// Calls fn(t, begin, end) on element ranges of tensors t = 0..n-1, where tensor t is the slice
// [prefix[t], prefix[t+1]) of one virtual concatenation. The concatenation is cut into equal
// pieces, independent of tensor boundaries, that the threads of one parallel region take in
// order from a shared counter: one big tensor and a thousand small ones keep every core busy, each
// piece streams through memory in order, and a thread on a busy core simply takes fewer pieces.
// fn must not throw.
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
  const int64_t threads = at::get_num_threads();
  if (threads <= 1 || total < min_parallel || omp_in_parallel()) {
    run(0, total);
    return;
  }
  // Pieces are whole multiples of 64 elements, so neighbours rarely write one cache line.
  const int64_t piece = std::max(kMinPieceElements, (total / (threads * kPiecesPerThread) + 63) & ~int64_t(63));
  std::atomic<int64_t> next{0};
#pragma omp parallel
  {
    for (int64_t begin = next.fetch_add(piece); begin < total; begin = next.fetch_add(piece)) {
      run(begin, std::min(total, begin + piece));
    }
  }
}

}  // namespace fused_optim
