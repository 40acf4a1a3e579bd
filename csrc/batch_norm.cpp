// BatchNorm over a contiguous 3-D tensor in one of two layouts, forward and backward:
//   planar        (N, C, S): contiguous NCHW, one plane of S values per (n, c);
//   channels_last (N*S, C):  rows of C channels (channels_last, and (N, C) input).
//
// Training forward: per-channel moments in one pass over memory (each cache-sized chunk read
// twice from cache: its mean, then squared deviations, merged with Chan's formula into double
// partials), then y = x * alpha[c] + beta[c]. Backward: the two per-channel sums (dy and
// dy * (x - mean)) in one pass, then dx in a second. Work is cut into contiguous pieces of
// memory, a few per thread, each with its own partials, merged in piece order.
#include <torch/extension.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "dtypes.h"
#include "norm_common.h"
#include "registry.h"
#include "simd.h"
#include "stream_store.h"

namespace fused_optim {
namespace {

// Channels-last rows per block: a block of about 32 KB is summed, then read again from cache for
// its squared deviations, so the per-channel vectors stay in L1 while rows stream past.
int64_t rows_per_block(int64_t channels, size_t element_size) {
  return std::max<int64_t>(1, std::min<int64_t>(1024, 32768 / (std::max<int64_t>(1, channels) * int64_t(element_size))));
}

// Calls fn(plane, offset, i, len) on the pieces of the flat range [begin, end) of a planar tensor
// with planes of `spatial` values: element i is value `offset` of plane `plane`.
template <typename F>
FUSED_OPTIM_INLINE void for_each_plane_piece(int64_t begin, int64_t end, int64_t spatial, const F& fn) {
  int64_t i = begin;
  while (i < end) {
    const int64_t plane = i / spatial;
    const int64_t offset = i - plane * spatial;
    const int64_t len = std::min(end - i, spatial - offset);
    fn(plane, i, len);
    i += len;
  }
}

// ----- statistics ---------------------------------------------------------------------------

template <typename T>
FUSED_OPTIM_INLINE void planar_moments_body(const T* x, int64_t spatial, int64_t channels, int64_t begin, int64_t end,
                                            Moments<double>* partial) {
  for_each_plane_piece(begin, end, spatial, [&](int64_t plane, int64_t i, int64_t len) {
    span_moments(x + i, len, partial[plane % channels]);
  });
}

// Rows [begin, end) of channels into partial[0, channels); scratch: 2 * channels values of the
// compute type and 2 * channels doubles.
template <typename T>
FUSED_OPTIM_INLINE void rows_moments_body(const T* x, int64_t channels, int64_t begin, int64_t end,
                                          Moments<double>* partial, compute_t<T>* scratch, double* merged) {
  using C = compute_t<T>;
  const int64_t block_rows = rows_per_block(channels, sizeof(T));
  C* __restrict block_mean = scratch;
  C* __restrict squares = scratch + channels;
  double* __restrict mean = merged;
  double* __restrict m2 = merged + channels;
  std::fill(mean, mean + 2 * channels, 0.0);
  double count = 0;
  for (int64_t start = begin; start < end; start += block_rows) {
    const int64_t rows = std::min(block_rows, end - start);
    const T* __restrict block = x + start * channels;
    std::fill(block_mean, block_mean + channels, C(0));
    std::fill(squares, squares + channels, C(0));
    // Four rows per update of the per-channel sums: a quarter of the loads and stores of them.
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      const T* __restrict row = block + r * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        block_mean[c] += (load(row[c]) + load(row[channels + c])) +
                         (load(row[2 * channels + c]) + load(row[3 * channels + c]));
      }
    }
    for (; r < rows; ++r) {
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        block_mean[c] += load(block[r * channels + c]);
      }
    }
    const C inv_rows = C(1) / C(rows);
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      block_mean[c] *= inv_rows;
    }
    for (r = 0; r + 4 <= rows; r += 4) {
      const T* __restrict row = block + r * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        const C m = block_mean[c];
        const C d0 = load(row[c]) - m;
        const C d1 = load(row[channels + c]) - m;
        const C d2 = load(row[2 * channels + c]) - m;
        const C d3 = load(row[3 * channels + c]) - m;
        squares[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
      }
    }
    for (; r < rows; ++r) {
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        const C d = load(block[r * channels + c]) - block_mean[c];
        squares[c] += d * d;
      }
    }
    // Moments::merge for every channel at once: the channels share one count, so the weights
    // are computed once per block, not once per channel.
    const double total = count + double(rows);
    const double new_weight = double(rows) / total;
    const double cross_weight = count * double(rows) / total;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const double delta = double(block_mean[c]) - mean[c];
      mean[c] += delta * new_weight;
      m2[c] += double(squares[c]) + delta * delta * cross_weight;
    }
    count = total;
  }
  for (int64_t c = 0; c < channels; ++c) {
    partial[c].merge(count, mean[c], m2[c]);
  }
}

// ----- y = x * alpha[c] + beta[c] -----------------------------------------------------------

template <typename T>
FUSED_OPTIM_INLINE void planar_affine_body(const T* x, T* y, int64_t spatial, int64_t channels, const compute_t<T>* alpha,
                                           const compute_t<T>* beta, int64_t begin, int64_t end) {
  using C = compute_t<T>;
  for_each_plane_piece(begin, end, spatial, [&](int64_t plane, int64_t i, int64_t len) {
    const C a = alpha[plane % channels];
    const C b = beta[plane % channels];
    const T* __restrict src = x + i;
    T* __restrict dst = y + i;
#pragma omp simd
    for (int64_t k = 0; k < len; ++k) {
      dst[k] = store_as<T>(load(src[k]) * a + b);
    }
  });
}

template <typename T>
FUSED_OPTIM_INLINE void rows_affine_body(const T* x, T* y, int64_t channels, const compute_t<T>* alpha,
                                         const compute_t<T>* beta, int64_t begin, int64_t end) {
  using C = compute_t<T>;
  const C* __restrict a = alpha;
  const C* __restrict b = beta;
  int64_t r = begin;
  // Two rows per pass over alpha and beta: fewer loads of them per element.
  for (; r + 2 <= end; r += 2) {
    const T* __restrict src = x + r * channels;
    T* __restrict dst = y + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      dst[c] = store_as<T>(load(src[c]) * a[c] + b[c]);
      dst[channels + c] = store_as<T>(load(src[channels + c]) * a[c] + b[c]);
    }
  }
  for (; r < end; ++r) {
    const T* __restrict src = x + r * channels;
    T* __restrict dst = y + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      dst[c] = store_as<T>(load(src[c]) * a[c] + b[c]);
    }
  }
}

// ----- backward sums: sum(dy) and sum(dy * (x - mean)) per channel --------------------------

struct GradSums {
  double dy = 0;
  double dy_xmu = 0;
};

template <typename T>
FUSED_OPTIM_INLINE void planar_grad_sums_body(const T* dy, const T* x, const compute_t<T>* mean, int64_t spatial,
                                              int64_t channels, int64_t begin, int64_t end, GradSums* partial) {
  using C = compute_t<T>;
  for_each_plane_piece(begin, end, spatial, [&](int64_t plane, int64_t i, int64_t len) {
    const int64_t c = plane % channels;
    const C m = mean[c];
    for (int64_t start = 0; start < len; start += kMomentsChunk) {
      const int64_t stop = std::min(len, start + kMomentsChunk);
      const T* __restrict g = dy + i;
      const T* __restrict v = x + i;
      C sum_dy = 0;
      C sum_dy_xmu = 0;
#pragma omp simd reduction(+ : sum_dy, sum_dy_xmu)
      for (int64_t k = start; k < stop; ++k) {
        const C d = load(g[k]);
        sum_dy += d;
        sum_dy_xmu += d * (load(v[k]) - m);
      }
      partial[c].dy += double(sum_dy);
      partial[c].dy_xmu += double(sum_dy_xmu);
    }
  });
}

// Rows [begin, end); scratch: 2 * channels values of the compute type.
template <typename T>
FUSED_OPTIM_INLINE void rows_grad_sums_body(const T* dy, const T* x, const compute_t<T>* mean, int64_t channels,
                                            int64_t begin, int64_t end, GradSums* partial, compute_t<T>* scratch) {
  using C = compute_t<T>;
  const int64_t block_rows = rows_per_block(channels, 2 * sizeof(T));
  C* __restrict sum_dy = scratch;
  C* __restrict sum_dy_xmu = scratch + channels;
  const C* __restrict m = mean;
  for (int64_t start = begin; start < end; start += block_rows) {
    const int64_t stop = std::min(end, start + block_rows);
    std::fill(sum_dy, sum_dy + channels, C(0));
    std::fill(sum_dy_xmu, sum_dy_xmu + channels, C(0));
    // Four rows per update of the per-channel sums, as in rows_moments_body.
    int64_t r = start;
    for (; r + 4 <= stop; r += 4) {
      const T* __restrict g = dy + r * channels;
      const T* __restrict v = x + r * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        const C mc = m[c];
        const C d0 = load(g[c]), d1 = load(g[channels + c]);
        const C d2 = load(g[2 * channels + c]), d3 = load(g[3 * channels + c]);
        sum_dy[c] += (d0 + d1) + (d2 + d3);
        sum_dy_xmu[c] += (d0 * (load(v[c]) - mc) + d1 * (load(v[channels + c]) - mc)) +
                         (d2 * (load(v[2 * channels + c]) - mc) + d3 * (load(v[3 * channels + c]) - mc));
      }
    }
    for (; r < stop; ++r) {
      const T* __restrict g = dy + r * channels;
      const T* __restrict v = x + r * channels;
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        const C d = load(g[c]);
        sum_dy[c] += d;
        sum_dy_xmu[c] += d * (load(v[c]) - m[c]);
      }
    }
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      partial[c].dy += double(sum_dy[c]);
      partial[c].dy_xmu += double(sum_dy_xmu[c]);
    }
  }
}

// ----- dx = dy * k1 + (x - mean) * k2 + k3 (batch statistics) or dy * k1 (running ones) -----

template <typename T>
struct DxCoefficients {
  const compute_t<T>* mean;
  const compute_t<T>* k1;
  const compute_t<T>* k2;
  const compute_t<T>* k3;
};

template <typename T, bool BATCH_STATS>
FUSED_OPTIM_INLINE void planar_dx_body(const T* dy, const T* x, T* dx, const DxCoefficients<T>& k, int64_t spatial,
                                       int64_t channels, int64_t begin, int64_t end) {
  using C = compute_t<T>;
  for_each_plane_piece(begin, end, spatial, [&](int64_t plane, int64_t i, int64_t len) {
    const int64_t c = plane % channels;
    const C m = k.mean[c], k1 = k.k1[c], k2 = k.k2[c], k3 = k.k3[c];
    const T* __restrict g = dy + i;
    const T* __restrict v = x + i;
    T* __restrict out = dx + i;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      out[j] = BATCH_STATS ? store_as<T>(load(g[j]) * k1 + (load(v[j]) - m) * k2 + k3) : store_as<T>(load(g[j]) * k1);
    }
  });
}

template <typename T, bool BATCH_STATS>
FUSED_OPTIM_INLINE void rows_dx_body(const T* dy, const T* x, T* dx, const DxCoefficients<T>& k, int64_t channels,
                                     int64_t begin, int64_t end) {
  using C = compute_t<T>;
  const C* __restrict m = k.mean;
  const C* __restrict k1 = k.k1;
  const C* __restrict k2 = k.k2;
  const C* __restrict k3 = k.k3;
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict g = dy + r * channels;
    const T* __restrict v = x + r * channels;
    T* __restrict out = dx + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      out[c] = BATCH_STATS ? store_as<T>(load(g[c]) * k1[c] + (load(v[c]) - m[c]) * k2[c] + k3[c])
                           : store_as<T>(load(g[c]) * k1[c]);
    }
  }
}

// One SIMD-cloned entry point per loop and dtype; the bodies are inlined into each clone, and
// overloads by dtype let the templated host code below call them.
#define FUSED_OPTIM_BATCH_NORM_DTYPE(SUFFIX, T)                                                                      \
  FUSED_OPTIM_SIMD_CLONES void planar_moments_##SUFFIX(const T* x, int64_t spatial, int64_t channels, int64_t begin, \
                                                       int64_t end, Moments<double>* partial) {                      \
    planar_moments_body(x, spatial, channels, begin, end, partial);                                                  \
  }                                                                                                                  \
  FUSED_OPTIM_SIMD_CLONES void rows_moments_##SUFFIX(const T* x, int64_t channels, int64_t begin, int64_t end,       \
                                                     Moments<double>* partial, compute_t<T>* scratch,                \
                                                     double* merged) {                                               \
    rows_moments_body(x, channels, begin, end, partial, scratch, merged);                                            \
  }                                                                                                                  \
  FUSED_OPTIM_SIMD_CLONES void planar_affine_##SUFFIX(const T* x, T* y, int64_t spatial, int64_t channels,           \
                                                      const compute_t<T>* alpha, const compute_t<T>* beta,           \
                                                      int64_t begin, int64_t end) {                                  \
    planar_affine_body(x, y, spatial, channels, alpha, beta, begin, end);                                            \
  }                                                                                                                  \
  FUSED_OPTIM_SIMD_CLONES void rows_affine_##SUFFIX(const T* x, T* y, int64_t channels, const compute_t<T>* alpha,   \
                                                    const compute_t<T>* beta, int64_t begin, int64_t end) {          \
    rows_affine_body(x, y, channels, alpha, beta, begin, end);                                                       \
  }                                                                                                                  \
  FUSED_OPTIM_SIMD_CLONES void planar_grad_sums_##SUFFIX(const T* dy, const T* x, const compute_t<T>* mean,          \
                                                         int64_t spatial, int64_t channels, int64_t begin,           \
                                                         int64_t end, GradSums* partial) {                           \
    planar_grad_sums_body(dy, x, mean, spatial, channels, begin, end, partial);                                      \
  }                                                                                                                  \
  FUSED_OPTIM_SIMD_CLONES void rows_grad_sums_##SUFFIX(const T* dy, const T* x, const compute_t<T>* mean,            \
                                                       int64_t channels, int64_t begin, int64_t end,                 \
                                                       GradSums* partial, compute_t<T>* scratch) {                   \
    rows_grad_sums_body(dy, x, mean, channels, begin, end, partial, scratch);                                        \
  }                                                                                                                  \
  FUSED_OPTIM_SIMD_CLONES void planar_dx_##SUFFIX(const T* dy, const T* x, T* dx, const DxCoefficients<T>& k,        \
                                                  int64_t spatial, int64_t channels, int64_t begin, int64_t end,     \
                                                  bool batch_stats) {                                                \
    batch_stats ? planar_dx_body<T, true>(dy, x, dx, k, spatial, channels, begin, end)                               \
                : planar_dx_body<T, false>(dy, x, dx, k, spatial, channels, begin, end);                             \
  }                                                                                                                  \
  FUSED_OPTIM_SIMD_CLONES void rows_dx_##SUFFIX(const T* dy, const T* x, T* dx, const DxCoefficients<T>& k,          \
                                                int64_t channels, int64_t begin, int64_t end, bool batch_stats) {    \
    batch_stats ? rows_dx_body<T, true>(dy, x, dx, k, channels, begin, end)                                          \
                : rows_dx_body<T, false>(dy, x, dx, k, channels, begin, end);                                        \
  }                                                                                                                  \
  void planar_moments(const T* x, int64_t spatial, int64_t channels, int64_t begin, int64_t end,                     \
                      Moments<double>* partial) {                                                                    \
    planar_moments_##SUFFIX(x, spatial, channels, begin, end, partial);                                              \
  }                                                                                                                  \
  void rows_moments(const T* x, int64_t channels, int64_t begin, int64_t end, Moments<double>* partial,              \
                    compute_t<T>* scratch, double* merged) {                                                         \
    rows_moments_##SUFFIX(x, channels, begin, end, partial, scratch, merged);                                        \
  }                                                                                                                  \
  void planar_affine(const T* x, T* y, int64_t spatial, int64_t channels, const compute_t<T>* alpha,                 \
                     const compute_t<T>* beta, int64_t begin, int64_t end) {                                         \
    planar_affine_##SUFFIX(x, y, spatial, channels, alpha, beta, begin, end);                                        \
  }                                                                                                                  \
  void rows_affine(const T* x, T* y, int64_t channels, const compute_t<T>* alpha, const compute_t<T>* beta,          \
                   int64_t begin, int64_t end) {                                                                     \
    rows_affine_##SUFFIX(x, y, channels, alpha, beta, begin, end);                                                   \
  }                                                                                                                  \
  void planar_grad_sums(const T* dy, const T* x, const compute_t<T>* mean, int64_t spatial, int64_t channels,        \
                        int64_t begin, int64_t end, GradSums* partial) {                                             \
    planar_grad_sums_##SUFFIX(dy, x, mean, spatial, channels, begin, end, partial);                                  \
  }                                                                                                                  \
  void rows_grad_sums(const T* dy, const T* x, const compute_t<T>* mean, int64_t channels, int64_t begin,            \
                      int64_t end, GradSums* partial, compute_t<T>* scratch) {                                       \
    rows_grad_sums_##SUFFIX(dy, x, mean, channels, begin, end, partial, scratch);                                    \
  }                                                                                                                  \
  void planar_dx(const T* dy, const T* x, T* dx, const DxCoefficients<T>& k, int64_t spatial, int64_t channels,      \
                 int64_t begin, int64_t end, bool batch_stats) {                                                     \
    planar_dx_##SUFFIX(dy, x, dx, k, spatial, channels, begin, end, batch_stats);                                    \
  }                                                                                                                  \
  void rows_dx(const T* dy, const T* x, T* dx, const DxCoefficients<T>& k, int64_t channels, int64_t begin,          \
               int64_t end, bool batch_stats) {                                                                      \
    rows_dx_##SUFFIX(dy, x, dx, k, channels, begin, end, batch_stats);                                               \
  }

FUSED_OPTIM_BATCH_NORM_DTYPE(f32, float)
FUSED_OPTIM_BATCH_NORM_DTYPE(f64, double)
FUSED_OPTIM_BATCH_NORM_DTYPE(bf16, bf16_bits)
FUSED_OPTIM_BATCH_NORM_DTYPE(f16, half_t)

// ----- host side ----------------------------------------------------------------------------

// Sizes of a layout tensor: planar (N, C, S), channels_last (N, S, C).
struct Shape {
  int64_t batch, channels, spatial;
  bool channels_last;

  Shape(const at::Tensor& x, bool last)
      : batch(x.size(0)), channels(last ? x.size(2) : x.size(1)), spatial(last ? x.size(1) : x.size(2)),
        channels_last(last) {}
  int64_t numel() const { return batch * channels * spatial; }
  int64_t rows() const { return batch * spatial; }
  // The units parallel_pieces cuts: rows of C (channels_last) or elements (planar).
  int64_t units() const { return channels_last ? rows() : numel(); }
};

c10::ScalarType compute_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_layout(const at::Tensor& t, const char* name) {
  TORCH_CHECK(is_plain_cpu_tensor(t), "batch_norm: ", name, " must be a plain dense CPU tensor");
  TORCH_CHECK(t.dim() == 3 && t.is_contiguous(), "batch_norm: ", name,
              " must be a contiguous 3-D tensor, (N, C, S) or (N, S, C)");
}

void check_channel_vector(const std::optional<at::Tensor>& t, const char* name, int64_t channels,
                          std::optional<c10::ScalarType> dtype) {
  if (!t.has_value()) {
    return;
  }
  TORCH_CHECK(is_plain_cpu_tensor(*t) && t->is_contiguous() && t->dim() == 1 && t->numel() == channels, "batch_norm: ",
              name, " must be a contiguous CPU tensor of ", channels, " elements");
  TORCH_CHECK(!dtype.has_value() || t->scalar_type() == *dtype, "batch_norm: ", name, " must be ", *dtype);
}

template <typename P>
P* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? static_cast<P*>(t->data_ptr()) : nullptr;
}

// running = (1 - momentum) * running + momentum * value, computed in double, stored in its dtype.
void update_running(at::Tensor& running, const std::vector<double>& values, double momentum) {
  dispatch_storage(running.scalar_type(), "batch_norm running statistics", [&](auto* tag) {
    using R = std::remove_pointer_t<decltype(tag)>;
    R* r = static_cast<R*>(running.data_ptr());
    for (size_t c = 0; c < values.size(); ++c) {
      const double updated = momentum * values[c] + (1.0 - momentum) * double(load(r[c]));
      r[c] = store_as<R>(compute_t<R>(updated));
    }
  });
}

std::vector<double> to_doubles(const at::Tensor& t) {
  at::Tensor d = t.to(at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// Per-channel batch mean and biased variance, in double.
template <typename T>
void batch_moments(const at::Tensor& x, const Shape& shape, std::vector<double>& mean, std::vector<double>& var) {
  using C = compute_t<T>;
  const int64_t channels = shape.channels;
  const int64_t pieces = piece_count(shape.units());
  std::vector<Moments<double>> partial(size_t(pieces) * channels);
  const T* data = static_cast<const T*>(x.data_ptr());
  {
    ReleaseGilIfHeld no_gil;
    parallel_pieces(shape.units(), pieces, shape.numel(), [&](int64_t piece, int64_t begin, int64_t end) {
      Moments<double>* mine = partial.data() + size_t(piece) * channels;
      if (shape.channels_last) {
        std::vector<C> scratch(2 * channels);
        std::vector<double> merged(2 * channels);
        rows_moments(data, channels, begin, end, mine, scratch.data(), merged.data());
      } else {
        planar_moments(data, shape.spatial, channels, begin, end, mine);
      }
    });
  }
  mean.assign(channels, 0.0);
  var.assign(channels, 0.0);
  for (int64_t c = 0; c < channels; ++c) {
    Moments<double> total;
    for (int64_t piece = 0; piece < pieces; ++piece) {
      const Moments<double>& p = partial[size_t(piece) * channels + c];
      total.merge(p.count, p.mean, p.m2);
    }
    mean[c] = total.mean;
    var[c] = total.m2 / total.count;
  }
}

// Fills y (x's numel, in x's layout) with the BatchNorm of x: (mean, rstd).
std::tuple<at::Tensor, at::Tensor> batch_norm_forward_into(const at::Tensor& x, bool channels_last,
                                                           const std::optional<at::Tensor>& weight,
                                                           const std::optional<at::Tensor>& bias,
                                                           std::optional<at::Tensor> running_mean,
                                                           std::optional<at::Tensor> running_var, bool use_batch_stats,
                                                           double momentum, double eps, const at::Tensor& y) {
  check_layout(x, "x");
  const Shape shape(x, channels_last);
  const int64_t channels = shape.channels;
  const c10::ScalarType compute = compute_dtype(x);
  check_channel_vector(weight, "weight", channels, compute);
  check_channel_vector(bias, "bias", channels, compute);
  check_channel_vector(running_mean, "running_mean", channels, std::nullopt);
  check_channel_vector(running_var, "running_var", channels, std::nullopt);
  TORCH_CHECK(use_batch_stats || (running_mean.has_value() && running_var.has_value()),
              "batch_norm: running statistics are needed without batch statistics");
  TORCH_CHECK(!use_batch_stats || shape.rows() > 1, "batch_norm: batch statistics need more than 1 value per channel");
  TORCH_CHECK(y.numel() == x.numel() && y.scalar_type() == x.scalar_type(), "batch_norm: bad output tensor");
  at::Tensor save_mean = at::empty({channels}, x.options().dtype(compute));
  at::Tensor save_rstd = at::empty({channels}, x.options().dtype(compute));
  dispatch_storage(x.scalar_type(), "batch_norm_forward", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using C = compute_t<T>;
    std::vector<double> mean, var;
    if (use_batch_stats) {
      batch_moments<T>(x, shape, mean, var);
      const double n = double(shape.rows());
      if (running_mean.has_value()) {
        update_running(*running_mean, mean, momentum);
      }
      if (running_var.has_value()) {
        std::vector<double> unbiased(var);
        for (double& v : unbiased) v *= n / (n - 1);
        update_running(*running_var, unbiased, momentum);
      }
    } else {
      mean = to_doubles(*running_mean);
      var = to_doubles(*running_var);
    }
    C* saved_mean = static_cast<C*>(save_mean.data_ptr());
    C* saved_rstd = static_cast<C*>(save_rstd.data_ptr());
    const C* w = data_or_null<const C>(weight);
    const C* b = data_or_null<const C>(bias);
    std::vector<C> alpha(channels), beta(channels);
    for (int64_t c = 0; c < channels; ++c) {
      saved_mean[c] = C(mean[c]);
      saved_rstd[c] = C(1.0 / std::sqrt(var[c] + eps));
      alpha[c] = w != nullptr ? w[c] * saved_rstd[c] : saved_rstd[c];
      beta[c] = (b != nullptr ? b[c] : C(0)) - saved_mean[c] * alpha[c];
    }
    const T* src = static_cast<const T*>(x.data_ptr());
    T* dst = static_cast<T*>(y.data_ptr());
    // float32 outputs too large to stay in the cache are written with streaming stores
    // (stream_store.h); channels_last rows only when every row starts on a 64-byte boundary.
    const bool stream = std::is_same_v<T, float> && should_stream(x.nbytes(), y.nbytes()) &&
                        (!shape.channels_last || (channels % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 64 == 0));
    ReleaseGilIfHeld no_gil;
    parallel_pieces(shape.units(), piece_count(shape.units()), shape.numel(), [&](int64_t, int64_t begin,
                                                                                   int64_t end) {
      if constexpr (std::is_same_v<T, float>) {
        if (stream && shape.channels_last) {
          stream_affine(src + begin * channels, dst + begin * channels, (end - begin) * channels, alpha.data(),
                        beta.data(), channels);
          stream_fence();
          return;
        }
        if (stream) {
          for_each_plane_piece(begin, end, shape.spatial, [&](int64_t plane, int64_t i, int64_t len) {
            stream_affine(src + i, dst + i, len, alpha.data() + plane % channels, beta.data() + plane % channels, 1);
          });
          stream_fence();
          return;
        }
      }
      if (shape.channels_last) {
        rows_affine(src, dst, channels, alpha.data(), beta.data(), begin, end);
      } else {
        planar_affine(src, dst, shape.spatial, channels, alpha.data(), beta.data(), begin, end);
      }
    });
  });
  return {save_mean, save_rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_forward(
    const at::Tensor& x, bool channels_last, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, std::optional<at::Tensor> running_mean,
    std::optional<at::Tensor> running_var, bool use_batch_stats, double momentum, double eps) {
  check_layout(x, "x");
  at::Tensor y = empty_output(x);
  auto [mean, rstd] =
      batch_norm_forward_into(x, channels_last, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps, y);
  return {y, mean, rstd};
}

// dweight and dbias (undefined where not needed); fills dx (x's numel, in x's layout) when it is
// defined.
std::tuple<at::Tensor, at::Tensor> batch_norm_backward_into(const at::Tensor& dy, const at::Tensor& x,
                                                            bool channels_last,
                                                            const std::optional<at::Tensor>& weight,
                                                            const at::Tensor& mean, const at::Tensor& rstd,
                                                            bool used_batch_stats, const at::Tensor& dx_out,
                                                            bool need_dweight, bool need_dbias) {
  const bool need_dx = dx_out.defined();
  check_layout(x, "x");
  check_layout(dy, "dy");
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
              "batch_norm_backward: dy must match x in shape and dtype");
  const Shape shape(x, channels_last);
  const int64_t channels = shape.channels;
  const c10::ScalarType compute = compute_dtype(x);
  check_channel_vector(weight, "weight", channels, compute);
  check_channel_vector(mean, "mean", channels, compute);
  check_channel_vector(rstd, "rstd", channels, compute);
  const bool need_sums = need_dweight || need_dbias || (need_dx && used_batch_stats);
  TORCH_CHECK(!need_dx || (dx_out.numel() == x.numel() && dx_out.scalar_type() == x.scalar_type()),
              "batch_norm_backward: bad dx tensor");
  std::optional<at::Tensor> dx, dweight, dbias;
  if (need_dx) {
    dx = dx_out;
  }
  if (need_dweight) {
    dweight = at::empty({channels}, x.options().dtype(compute));
  }
  if (need_dbias) {
    dbias = at::empty({channels}, x.options().dtype(compute));
  }
  dispatch_storage(x.scalar_type(), "batch_norm_backward", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using C = compute_t<T>;
    const T* g = static_cast<const T*>(dy.data_ptr());
    const T* v = static_cast<const T*>(x.data_ptr());
    const C* m = static_cast<const C*>(mean.data_ptr());
    const C* r = static_cast<const C*>(rstd.data_ptr());
    const C* w = data_or_null<const C>(weight);
    std::vector<GradSums> sums(channels);
    if (need_sums) {
      const int64_t pieces = piece_count(shape.units());
      std::vector<GradSums> partial(size_t(pieces) * channels);
      {
        ReleaseGilIfHeld no_gil;
        parallel_pieces(shape.units(), pieces, 2 * shape.numel(), [&](int64_t piece, int64_t begin, int64_t end) {
          GradSums* mine = partial.data() + size_t(piece) * channels;
          if (shape.channels_last) {
            std::vector<C> scratch(2 * channels);
            rows_grad_sums(g, v, m, channels, begin, end, mine, scratch.data());
          } else {
            planar_grad_sums(g, v, m, shape.spatial, channels, begin, end, mine);
          }
        });
      }
      for (int64_t c = 0; c < channels; ++c) {
        for (int64_t piece = 0; piece < pieces; ++piece) {
          sums[c].dy += partial[size_t(piece) * channels + c].dy;
          sums[c].dy_xmu += partial[size_t(piece) * channels + c].dy_xmu;
        }
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      if (need_dweight) {
        static_cast<C*>(dweight->data_ptr())[c] = C(sums[c].dy_xmu * double(r[c]));
      }
      if (need_dbias) {
        static_cast<C*>(dbias->data_ptr())[c] = C(sums[c].dy);
      }
    }
    if (!need_dx) {
      return;
    }
    // dx = w * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)) with xhat = (x - mean) * rstd:
    // k1 = w * rstd, k2 = -w * rstd^3 * sum(dy * (x - mean)) / n, k3 = -w * rstd * sum(dy) / n.
    const double n = double(shape.rows());
    std::vector<C> k1(channels), k2(channels), k3(channels);
    for (int64_t c = 0; c < channels; ++c) {
      const double scale = (w != nullptr ? double(w[c]) : 1.0) * double(r[c]);
      k1[c] = C(scale);
      k2[c] = C(-scale * double(r[c]) * double(r[c]) * sums[c].dy_xmu / n);
      k3[c] = C(-scale * sums[c].dy / n);
    }
    const DxCoefficients<T> k{m, k1.data(), k2.data(), k3.data()};
    T* out = static_cast<T*>(dx->data_ptr());
    // float32 dx too large to stay in the cache: streaming stores, as in the forward
    const bool stream = std::is_same_v<T, float> && should_stream(2 * x.nbytes(), dx->nbytes()) &&
                        (!shape.channels_last || (channels % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 64 == 0));
    ReleaseGilIfHeld no_gil;
    parallel_pieces(shape.units(), piece_count(shape.units()), 3 * shape.numel(), [&](int64_t, int64_t begin,
                                                                                       int64_t end) {
      if constexpr (std::is_same_v<T, float>) {
        if (stream && shape.channels_last) {
          stream_batch_norm_dx(g + begin * channels, v + begin * channels, out + begin * channels,
                               (end - begin) * channels, m, k1.data(), k2.data(), k3.data(), channels, used_batch_stats);
          stream_fence();
          return;
        }
        if (stream) {
          for_each_plane_piece(begin, end, shape.spatial, [&](int64_t plane, int64_t i, int64_t len) {
            const int64_t c = plane % channels;
            stream_batch_norm_dx(g + i, v + i, out + i, len, m + c, k1.data() + c, k2.data() + c, k3.data() + c, 1,
                                 used_batch_stats);
          });
          stream_fence();
          return;
        }
      }
      if (shape.channels_last) {
        rows_dx(g, v, out, k, channels, begin, end, used_batch_stats);
      } else {
        planar_dx(g, v, out, k, shape.spatial, channels, begin, end, used_batch_stats);
      }
    });
  });
  return {dweight.value_or(at::Tensor()), dbias.value_or(at::Tensor())};
}

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>> batch_norm_backward(
    const at::Tensor& dy, const at::Tensor& x, bool channels_last, const std::optional<at::Tensor>& weight,
    const at::Tensor& mean, const at::Tensor& rstd, bool used_batch_stats, bool need_dx, bool need_dweight,
    bool need_dbias) {
  check_layout(x, "x");
  at::Tensor dx = need_dx ? empty_output(x) : at::Tensor();
  auto [dweight, dbias] =
      batch_norm_backward_into(dy, x, channels_last, weight, mean, rstd, used_batch_stats, dx, need_dweight, need_dbias);
  return {optional_of(dx), optional_of(dweight), optional_of(dbias)};
}

// ----- eager autograd: one call from Python per forward, a C++ backward ----------------------

// The Python backward for what the kernels do not compute (see needs_composite_backward):
// (dy, x, weight, bias, mean, rstd, used_batch_stats, eps, need_dx, need_dweight, need_dbias)
// -> (dx, dweight, dbias), None where not needed.
PythonCallable composite_backward;

// How the kernels see an (N, C, *spatial) tensor: its layout, the sizes and strides of an output
// in that layout, and the contiguous 3-D tensor: planar (N, C, S) for contiguous input with
// S > 1, channels_last (N, S, C) where the channels are the innermost dim (channels_last, and
// (N, C[, 1...]) input), else a planar copy.
struct Layout {
  bool channels_last;
  std::vector<int64_t> sizes, strides;

  explicit Layout(const at::Tensor& x) : sizes(x.sizes().vec()), strides(x.dim()) {
    const int64_t n = x.size(0), c = x.size(1);
    const int64_t s = x.numel() / (n * c);
    channels_last = !(x.is_contiguous() && s > 1) && x.movedim(1, -1).is_contiguous();
    // Contiguous strides of (N, C, *spatial), or of (N, *spatial, C) moved back to channel order.
    int64_t stride = 1;
    if (channels_last) {
      strides[1] = 1;
      stride = c;
    }
    for (int64_t d = x.dim() - 1; d >= 0; --d) {
      if (channels_last && d == 1) {
        continue;
      }
      strides[d] = stride;
      stride *= std::max<int64_t>(sizes[d], 1);
    }
  }

  int64_t spatial() const { return c10::multiply_integers(sizes.begin() + 2, sizes.end()); }

  // t (x's shape) as the contiguous 3-D tensor of this layout.
  at::Tensor to_3d(const at::Tensor& t) const {
    if (channels_last) {
      return t.movedim(1, -1).contiguous().view({sizes[0], spatial(), sizes[1]});
    }
    return t.contiguous().view({sizes[0], sizes[1], spatial()});
  }

  at::Tensor new_output(const at::Tensor& x) const { return empty_output(sizes, strides, x.options()); }
};

// BatchNorm of a non-empty plain CPU x; weight, bias and running statistics undefined when
// absent. With batch statistics, running statistics given are updated in place. Outputs are new
// tensors in x's layout (never views), so in-place ops on them are allowed.
struct BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& weight_opt, const std::optional<at::Tensor>& bias_opt,
                            const std::optional<at::Tensor>& running_mean_opt,
                            const std::optional<at::Tensor>& running_var_opt, bool use_batch_stats, double momentum,
                            double eps) {
    const at::Tensor none;
    const at::Tensor weight = weight_opt.value_or(none), bias = bias_opt.value_or(none);
    const at::Tensor running_mean = running_mean_opt.value_or(none), running_var = running_var_opt.value_or(none);
    TORCH_CHECK(x.dim() >= 2 && x.numel() > 0, "batch_norm: the autograd path needs non-empty (N, C, ...) input");
    const Layout layout(x);
    const at::Tensor x3 = layout.to_3d(x);
    const c10::ScalarType compute = compute_dtype(x);
    const at::Tensor weight_c = flat_in(weight, compute);
    // The kernels update the running statistics in place; odd strides are updated on a copy.
    const auto stats = [](const at::Tensor& t) { return !t.defined() || t.is_contiguous() ? t : t.contiguous(); };
    const at::Tensor mean_stat = stats(running_mean), var_stat = stats(running_var);
    at::Tensor y = layout.new_output(x);
    auto [mean, rstd] =
        batch_norm_forward_into(x3, layout.channels_last, optional_of(weight_c), optional_of(flat_in(bias, compute)),
                                optional_of(mean_stat), optional_of(var_stat), use_batch_stats, momentum, eps, y);
    if (use_batch_stats) {
      if (mean_stat.defined() && !mean_stat.is_same(running_mean)) {
        running_mean.copy_(mean_stat);
      }
      if (var_stat.defined() && !var_stat.is_same(running_var)) {
        running_var.copy_(var_stat);
      }
    }
    ctx->save_for_backward({x3, weight_c, mean, rstd, x, weight, bias});
    ctx->saved_data["use_batch_stats"] = use_batch_stats;
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor& dy = grads[0];
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x3 = saved[0], &weight_c = saved[1], &mean = saved[2], &rstd = saved[3], &x = saved[4],
                     &weight = saved[5], &bias = saved[6];
    const bool used_batch_stats = ctx->saved_data["use_batch_stats"].toBool();
    const auto [need_dx, need_dweight, need_dbias] = gradients_needed(ctx, weight, bias);
    const at::Tensor none;
    if (needs_composite_backward(dy)) {
      auto g = composite_backward.call_for_grads("batch_norm", dy, x, optional_of(weight), optional_of(bias), mean,
                                                 rstd, used_batch_stats, ctx->saved_data["eps"].toDouble(), need_dx,
                                                 need_dweight, need_dbias);
      return {g[0], g[1], g[2], none, none, none, none, none};
    }
    const Layout layout(x);
    at::Tensor dx = need_dx ? layout.new_output(x) : at::Tensor();
    auto [dweight, dbias] = batch_norm_backward_into(layout.to_3d(dy), x3, layout.channels_last, optional_of(weight_c),
                                                     mean, rstd, used_batch_stats, dx, need_dweight, need_dbias);
    return {dx, as_parameter_grad(dweight, weight), as_parameter_grad(dbias, bias), none, none, none, none, none};
  }
};

at::Tensor batch_norm_autograd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
                               const std::optional<at::Tensor>& running_var, bool use_batch_stats, double momentum,
                               double eps) {
  return BatchNormFunction::apply(x, weight, bias, running_mean, running_var, use_batch_stats, momentum, eps);
}


void register_bindings(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("batch_norm_forward", &batch_norm_forward, py::arg("x"), py::arg("channels_last"), py::arg("weight"),
        py::arg("bias"), py::arg("running_mean"), py::arg("running_var"), py::arg("use_batch_stats"),
        py::arg("momentum"), py::arg("eps"),
        "BatchNorm of a contiguous (N, C, S) or channels_last (N, S, C) tensor: (y, mean, rstd); with batch "
        "statistics, running statistics given are updated in place");
  m.def("batch_norm_backward", &batch_norm_backward, py::arg("dy"), py::arg("x"), py::arg("channels_last"),
        py::arg("weight"), py::arg("mean"), py::arg("rstd"), py::arg("used_batch_stats"), py::arg("need_dx"),
        py::arg("need_dweight"), py::arg("need_dbias"),
        "Gradients (dx, dweight, dbias) of batch_norm_forward; None where not needed");
  m.def("batch_norm_autograd", &batch_norm_autograd, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("running_mean"), py::arg("running_var"), py::arg("use_batch_stats"), py::arg("momentum"),
        py::arg("eps"),
        "Differentiable BatchNorm of plain non-empty (N, C, ...) CPU x, output in x's layout, backward in C++");
  m.def(
      "set_batch_norm_composite_backward", [](py::object fn) { composite_backward.set(fn); }, py::arg("fn"),
      "The Python backward batch_norm_autograd uses when a graph is built or the gradient is not plain");
}

const RegisterBindings registered(register_bindings);

}  // namespace
}  // namespace fused_optim
