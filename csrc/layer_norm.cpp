// LayerNorm over the rows of a contiguous (M, N) tensor, forward and backward, parallel over rows.
//
// Forward reads a row from memory once (the moments' second pass and the normalization hit the
// cache) and writes it once. Backward reads x and dy once per row and writes dx; the weight and
// bias gradients are summed per piece of rows (a few pieces per thread), in float blocks of rows
// flushed into double partials, and the pieces' partials are added at the end, in piece order.
// When dx and those gradients are both wanted, rows go four at a time: their terms are added in
// registers before they reach the block partials.
#include <torch/extension.h>

#include <algorithm>
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

template <typename T>
struct ForwardArgs {
  using C = compute_t<T>;
  const T* x;
  T* y;
  const C* weight;  // null without weight
  const C* bias;    // null without bias
  C* mean;
  C* rstd;
  int64_t n;
  C eps;
  bool stream;  // float32 rows written with streaming stores (stream_store.h)
};

template <typename T>
struct BackwardArgs {
  using C = compute_t<T>;
  const T* dy;
  const T* x;
  const C* weight;  // null without weight
  const C* mean;
  const C* rstd;
  T* dx;  // null when dx is not wanted
  int64_t n;
};

template <typename T, bool HAS_WEIGHT, bool HAS_BIAS>
FUSED_OPTIM_INLINE void forward_rows_body(const ForwardArgs<T>& a, int64_t begin, int64_t end) {
  using C = compute_t<T>;
  const int64_t n = a.n;
  const C* __restrict weight = a.weight;
  const C* __restrict bias = a.bias;
  for (int64_t r = begin; r < end; ++r) {
    const T* __restrict x = a.x + r * n;
    T* __restrict y = a.y + r * n;
    Moments<C> moments;
    span_moments(x, n, moments);
    const C mean = moments.mean;
    const C rstd = C(1) / std::sqrt(moments.m2 / C(n) + a.eps);
    if constexpr (std::is_same_v<T, float>) {
      if (a.stream) {
        stream_layer_norm_row(x, y, n, mean, rstd, HAS_WEIGHT ? weight : nullptr, HAS_BIAS ? bias : nullptr);
        a.mean[r] = mean;
        a.rstd[r] = rstd;
        continue;
      }
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      C v = (load(x[i]) - mean) * rstd;
      if (HAS_WEIGHT) {
        v = v * weight[i];
      }
      if (HAS_BIAS) {
        v = v + bias[i];
      }
      y[i] = store_as<T>(v);
    }
    a.mean[r] = mean;
    a.rstd[r] = rstd;
  }
}

template <typename T>
FUSED_OPTIM_INLINE void forward_rows_any(const ForwardArgs<T>& a, int64_t begin, int64_t end) {
  if (a.weight != nullptr) {
    a.bias != nullptr ? forward_rows_body<T, true, true>(a, begin, end)
                      : forward_rows_body<T, true, false>(a, begin, end);
  } else {
    a.bias != nullptr ? forward_rows_body<T, false, true>(a, begin, end)
                      : forward_rows_body<T, false, false>(a, begin, end);
  }
}

// Rows per block of weight/bias gradient partials summed in the compute type before they are
// added into the thread's double partials: short float sums, exact-enough totals over many rows.
constexpr int64_t kGradRowBlock = 32;

// dx of rows r..r+3 and their dweight/dbias terms added into block_dw/block_db:
// the four rows' sums in one loop (eight independent accumulators), and their four terms added
// in registers before one update of the block partials (a row at a time, those updates are two
// loads and two stores per element). dx is computed exactly as a row at a time.
template <typename T, bool HAS_WEIGHT>
FUSED_OPTIM_INLINE void backward_four_rows(const BackwardArgs<T>& a, int64_t r, compute_t<T>* __restrict block_dw,
                                           compute_t<T>* __restrict block_db) {
  using C = compute_t<T>;
  const int64_t n = a.n;
  const C* __restrict weight = a.weight;
  const C inv_n = C(1) / C(n);
  const T* __restrict x0 = a.x + r * n;
  const T* __restrict x1 = x0 + n;
  const T* __restrict x2 = x1 + n;
  const T* __restrict x3 = x2 + n;
  const T* __restrict dy0 = a.dy + r * n;
  const T* __restrict dy1 = dy0 + n;
  const T* __restrict dy2 = dy1 + n;
  const T* __restrict dy3 = dy2 + n;
  const C m0 = a.mean[r], m1 = a.mean[r + 1], m2 = a.mean[r + 2], m3 = a.mean[r + 3];
  const C s0 = a.rstd[r], s1 = a.rstd[r + 1], s2 = a.rstd[r + 2], s3 = a.rstd[r + 3];
  C g0 = 0, g1 = 0, g2 = 0, g3 = 0, h0 = 0, h1 = 0, h2 = 0, h3 = 0;  // sums of g and of g * xhat
#pragma omp simd reduction(+ : g0, g1, g2, g3, h0, h1, h2, h3)
  for (int64_t i = 0; i < n; ++i) {
    const C w = HAS_WEIGHT ? weight[i] : C(1);
    const C e0 = HAS_WEIGHT ? load(dy0[i]) * w : load(dy0[i]);
    const C e1 = HAS_WEIGHT ? load(dy1[i]) * w : load(dy1[i]);
    const C e2 = HAS_WEIGHT ? load(dy2[i]) * w : load(dy2[i]);
    const C e3 = HAS_WEIGHT ? load(dy3[i]) * w : load(dy3[i]);
    g0 += e0;
    g1 += e1;
    g2 += e2;
    g3 += e3;
    h0 += e0 * ((load(x0[i]) - m0) * s0);
    h1 += e1 * ((load(x1[i]) - m1) * s1);
    h2 += e2 * ((load(x2[i]) - m2) * s2);
    h3 += e3 * ((load(x3[i]) - m3) * s3);
  }
  const C mg0 = g0 * inv_n, mg1 = g1 * inv_n, mg2 = g2 * inv_n, mg3 = g3 * inv_n;
  const C mh0 = h0 * inv_n, mh1 = h1 * inv_n, mh2 = h2 * inv_n, mh3 = h3 * inv_n;
  T* __restrict dx0 = a.dx + r * n;
  T* __restrict dx1 = dx0 + n;
  T* __restrict dx2 = dx1 + n;
  T* __restrict dx3 = dx2 + n;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const C w = HAS_WEIGHT ? weight[i] : C(1);
    const C d0 = load(dy0[i]), d1 = load(dy1[i]), d2 = load(dy2[i]), d3 = load(dy3[i]);
    const C xh0 = (load(x0[i]) - m0) * s0;
    const C xh1 = (load(x1[i]) - m1) * s1;
    const C xh2 = (load(x2[i]) - m2) * s2;
    const C xh3 = (load(x3[i]) - m3) * s3;
    dx0[i] = store_as<T>(s0 * ((HAS_WEIGHT ? d0 * w : d0) - mg0 - xh0 * mh0));
    dx1[i] = store_as<T>(s1 * ((HAS_WEIGHT ? d1 * w : d1) - mg1 - xh1 * mh1));
    dx2[i] = store_as<T>(s2 * ((HAS_WEIGHT ? d2 * w : d2) - mg2 - xh2 * mh2));
    dx3[i] = store_as<T>(s3 * ((HAS_WEIGHT ? d3 * w : d3) - mg3 - xh3 * mh3));
    block_dw[i] += (d0 * xh0 + d1 * xh1) + (d2 * xh2 + d3 * xh3);
    block_db[i] += (d0 + d1) + (d2 + d3);
  }
}

// dx of rows [begin, end) and, when block_dw is not null, their dweight/dbias added into
// thread_dw/thread_db (double, n each) through block_dw/block_db (compute type, n each).
template <typename T, bool HAS_WEIGHT, bool NEED_DX, bool NEED_DWB>
FUSED_OPTIM_INLINE void backward_rows_body(const BackwardArgs<T>& a, int64_t begin, int64_t end,
                                           compute_t<T>* __restrict block_dw, compute_t<T>* __restrict block_db,
                                           double* __restrict thread_dw, double* __restrict thread_db) {
  using C = compute_t<T>;
  const int64_t n = a.n;
  const C* __restrict weight = a.weight;
  const C inv_n = C(1) / C(n);
  for (int64_t block = begin; block < end; block += kGradRowBlock) {
    const int64_t block_end = std::min(end, block + kGradRowBlock);
    if (NEED_DWB) {
      std::fill(block_dw, block_dw + n, C(0));
      std::fill(block_db, block_db + n, C(0));
    }
    int64_t r = block;
    if (NEED_DX && NEED_DWB) {  // dx alone runs faster a row at a time (measured)
      for (; r + 4 <= block_end; r += 4) {
        backward_four_rows<T, HAS_WEIGHT>(a, r, block_dw, block_db);
      }
    }
    for (; r < block_end; ++r) {
      const T* __restrict x = a.x + r * n;
      const T* __restrict dy = a.dy + r * n;
      const C mean = a.mean[r];
      const C rstd = a.rstd[r];
      if (NEED_DX) {
        // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * weight.
        C sum_g = 0;
        C sum_g_xhat = 0;
#pragma omp simd reduction(+ : sum_g, sum_g_xhat)
        for (int64_t i = 0; i < n; ++i) {
          const C xhat = (load(x[i]) - mean) * rstd;
          const C g = HAS_WEIGHT ? load(dy[i]) * weight[i] : load(dy[i]);
          sum_g += g;
          sum_g_xhat += g * xhat;
        }
        const C mean_g = sum_g * inv_n;
        const C mean_g_xhat = sum_g_xhat * inv_n;
        T* __restrict dx = a.dx + r * n;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const C d = load(dy[i]);
          const C xhat = (load(x[i]) - mean) * rstd;
          const C g = HAS_WEIGHT ? d * weight[i] : d;
          dx[i] = store_as<T>(rstd * (g - mean_g - xhat * mean_g_xhat));
          if (NEED_DWB) {
            block_dw[i] += d * xhat;
            block_db[i] += d;
          }
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const C d = load(dy[i]);
          block_dw[i] += d * ((load(x[i]) - mean) * rstd);
          block_db[i] += d;
        }
      }
    }
    if (NEED_DWB) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        thread_dw[i] += double(block_dw[i]);
        thread_db[i] += double(block_db[i]);
      }
    }
  }
}

template <typename T>
FUSED_OPTIM_INLINE void backward_rows_any(const BackwardArgs<T>& a, int64_t begin, int64_t end, compute_t<T>* block_dw,
                                          compute_t<T>* block_db, double* thread_dw, double* thread_db) {
  const bool need_dwb = block_dw != nullptr;
  if (a.dx == nullptr) {
    backward_rows_body<T, false, false, true>(a, begin, end, block_dw, block_db, thread_dw, thread_db);
  } else if (a.weight != nullptr) {
    need_dwb ? backward_rows_body<T, true, true, true>(a, begin, end, block_dw, block_db, thread_dw, thread_db)
             : backward_rows_body<T, true, true, false>(a, begin, end, block_dw, block_db, thread_dw, thread_db);
  } else {
    need_dwb ? backward_rows_body<T, false, true, true>(a, begin, end, block_dw, block_db, thread_dw, thread_db)
             : backward_rows_body<T, false, true, false>(a, begin, end, block_dw, block_db, thread_dw, thread_db);
  }
}

// One SIMD-cloned entry point per dtype and direction; the bodies are inlined into each clone.
#define FUSED_OPTIM_LAYER_NORM_DTYPE(SUFFIX, T)                                                                    \
  FUSED_OPTIM_SIMD_CLONES void layer_norm_forward_rows_##SUFFIX(const ForwardArgs<T>& a, int64_t begin,           \
                                                                int64_t end) {                                    \
    forward_rows_any(a, begin, end);                                                                               \
  }                                                                                                                \
  FUSED_OPTIM_SIMD_CLONES void layer_norm_backward_rows_##SUFFIX(                                                 \
      const BackwardArgs<T>& a, int64_t begin, int64_t end, compute_t<T>* block_dw, compute_t<T>* block_db,       \
      double* thread_dw, double* thread_db) {                                                                      \
    backward_rows_any(a, begin, end, block_dw, block_db, thread_dw, thread_db);                                    \
  }                                                                                                                \
  void forward_rows(const ForwardArgs<T>& a, int64_t begin, int64_t end) {                                         \
    layer_norm_forward_rows_##SUFFIX(a, begin, end);                                                               \
  }                                                                                                                \
  void backward_rows(const BackwardArgs<T>& a, int64_t begin, int64_t end, compute_t<T>* block_dw,                \
                     compute_t<T>* block_db, double* thread_dw, double* thread_db) {                               \
    layer_norm_backward_rows_##SUFFIX(a, begin, end, block_dw, block_db, thread_dw, thread_db);                    \
  }

FUSED_OPTIM_LAYER_NORM_DTYPE(f32, float)
FUSED_OPTIM_LAYER_NORM_DTYPE(f64, double)
FUSED_OPTIM_LAYER_NORM_DTYPE(bf16, bf16_bits)
FUSED_OPTIM_LAYER_NORM_DTYPE(f16, half_t)

c10::ScalarType compute_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(is_plain_cpu_tensor(t), "layer_norm: ", name, " must be a plain dense CPU tensor");
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous(), "layer_norm: ", name, " must be a contiguous (M, N) tensor");
}

void check_vector(const std::optional<at::Tensor>& t, const char* name, int64_t n, c10::ScalarType dtype) {
  if (!t.has_value()) {
    return;
  }
  TORCH_CHECK(is_plain_cpu_tensor(*t) && t->is_contiguous() && t->dim() == 1 && t->numel() == n &&
                  t->scalar_type() == dtype,
              "layer_norm: ", name, " must be a contiguous CPU ", dtype, " tensor of ", n, " elements");
}

template <typename P>
P* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? static_cast<P*>(t->data_ptr()) : nullptr;
}

// Fills y (contiguous, x's numel) with the LayerNorm of the rows of x: (mean, rstd).
std::tuple<at::Tensor, at::Tensor> layer_norm_forward_into(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                           const std::optional<at::Tensor>& bias, double eps,
                                                           const at::Tensor& y) {
  check_rows(x, "x");
  const int64_t m = x.size(0);
  const int64_t n = x.size(1);
  const c10::ScalarType compute = compute_dtype(x);
  check_vector(weight, "weight", n, compute);
  check_vector(bias, "bias", n, compute);
  at::Tensor mean = at::empty({m}, x.options().dtype(compute));
  at::Tensor rstd = at::empty({m}, x.options().dtype(compute));
  if (n == 0) {
    return {mean.fill_(NAN), rstd.fill_(NAN)};
  }
  ReleaseGilIfHeld no_gil;
  dispatch_storage(x.scalar_type(), "layer_norm_forward", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using C = compute_t<T>;
    const ForwardArgs<T> args{static_cast<const T*>(x.data_ptr()), static_cast<T*>(y.data_ptr()),
                              data_or_null<const C>(weight), data_or_null<const C>(bias),
                              static_cast<C*>(mean.data_ptr()), static_cast<C*>(rstd.data_ptr()), n, C(eps),
                              std::is_same_v<T, float> && should_stream(x.nbytes(), y.nbytes())};
    parallel_pieces(m, piece_count(m), m * n, [&](int64_t, int64_t begin, int64_t end) {
      forward_rows(args, begin, end);
      if (args.stream) {
        stream_fence();
      }
    });
  });
  return {mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_forward(const at::Tensor& x,
                                                                  const std::optional<at::Tensor>& weight,
                                                                  const std::optional<at::Tensor>& bias, double eps) {
  check_rows(x, "x");
  at::Tensor y = empty_output(x);
  auto [mean, rstd] = layer_norm_forward_into(x, weight, bias, eps, y);
  return {y, mean, rstd};
}

// dweight and dbias of the rows of x (undefined where not needed); fills dx (contiguous, x's
// numel) when it is defined.
std::tuple<at::Tensor, at::Tensor> layer_norm_backward_into(const at::Tensor& dy, const at::Tensor& x,
                                                            const std::optional<at::Tensor>& weight,
                                                            const at::Tensor& mean, const at::Tensor& rstd,
                                                            const at::Tensor& dx, bool need_dweight,
                                                            bool need_dbias) {
  check_rows(x, "x");
  check_rows(dy, "dy");
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
              "layer_norm_backward: dy must match x in shape and dtype");
  const int64_t m = x.size(0);
  const int64_t n = x.size(1);
  const c10::ScalarType compute = compute_dtype(x);
  check_vector(weight, "weight", n, compute);
  check_vector(mean, "mean", m, compute);
  check_vector(rstd, "rstd", m, compute);
  const bool need_dx = dx.defined();
  const bool need_dwb = need_dweight || need_dbias;
  if (!need_dx && !need_dwb) {
    return {};
  }
  const int64_t pieces = piece_count(m);
  // Per piece of rows: double partials of dweight and dbias (n each).
  std::vector<double> piece_sums(need_dwb ? size_t(pieces) * 2 * n : 0, 0.0);
  {
    ReleaseGilIfHeld no_gil;
    dispatch_storage(x.scalar_type(), "layer_norm_backward", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      using C = compute_t<T>;
      const BackwardArgs<T> args{static_cast<const T*>(dy.data_ptr()), static_cast<const T*>(x.data_ptr()),
                                 data_or_null<const C>(weight), static_cast<const C*>(mean.data_ptr()),
                                 static_cast<const C*>(rstd.data_ptr()),
                                 need_dx ? static_cast<T*>(dx.data_ptr()) : nullptr, n};
      parallel_pieces(m, pieces, m * n, [&](int64_t piece, int64_t begin, int64_t end) {
        if (!need_dwb) {
          backward_rows(args, begin, end, nullptr, nullptr, nullptr, nullptr);
          return;
        }
        double* sums = piece_sums.data() + size_t(piece) * 2 * n;
        std::vector<C> block(2 * n);
        backward_rows(args, begin, end, block.data(), block.data() + n, sums, sums + n);
      });
    });
  }
  if (!need_dwb) {
    return {};
  }
  at::Tensor totals = at::empty({2, n}, x.options().dtype(compute));
  dispatch_storage(compute, "layer_norm_backward", [&](auto* tag) {
    using C = std::remove_pointer_t<decltype(tag)>;
    C* t = static_cast<C*>(totals.data_ptr());
    // The pieces' partials added in piece order, a whole piece at a time (contiguous, vectorized).
    double* total = piece_sums.data();
    for (int64_t piece = 1; piece < pieces; ++piece) {
      const double* __restrict part = piece_sums.data() + size_t(piece) * 2 * n;
#pragma omp simd
      for (int64_t i = 0; i < 2 * n; ++i) {
        total[i] += part[i];
      }
    }
    for (int64_t i = 0; i < 2 * n; ++i) {
      t[i] = C(total[i]);
    }
  });
  return {need_dweight ? totals[0] : at::Tensor(), need_dbias ? totals[1] : at::Tensor()};
}

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>> layer_norm_backward(
    const at::Tensor& dy, const at::Tensor& x, const std::optional<at::Tensor>& weight, const at::Tensor& mean,
    const at::Tensor& rstd, bool need_dx, bool need_dweight, bool need_dbias) {
  check_rows(x, "x");
  at::Tensor dx = need_dx ? empty_output(x) : at::Tensor();
  auto [dweight, dbias] = layer_norm_backward_into(dy, x, weight, mean, rstd, dx, need_dweight, need_dbias);
  return {optional_of(dx), optional_of(dweight), optional_of(dbias)};
}

// ----- eager autograd: one call from Python per forward, a C++ backward ----------------------

// The Python backward for what the kernels do not compute (see needs_composite_backward):
// (dy, x, weight, bias, mean, rstd, normalized_ndim, eps, need_dx, need_dweight, need_dbias)
// -> (dx, dweight, dbias), None where not needed.
PythonCallable composite_backward;

// LayerNorm over the trailing normalized_ndim dims of a non-empty x; weight and bias undefined
// when absent. Outputs are new tensors (never views), so in-place ops on them are allowed.
struct LayerNormFunction : public torch::autograd::Function<LayerNormFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& weight_opt, const std::optional<at::Tensor>& bias_opt,
                            int64_t normalized_ndim, double eps) {
    const at::Tensor weight = weight_opt.value_or(at::Tensor()), bias = bias_opt.value_or(at::Tensor());
    TORCH_CHECK(normalized_ndim >= 1 && normalized_ndim <= x.dim(), "layer_norm: bad normalized_ndim");
    int64_t n = 1;
    for (int64_t d = x.dim() - normalized_ndim; d < x.dim(); ++d) {
      n *= x.size(d);
    }
    TORCH_CHECK(n > 0, "layer_norm: the autograd path needs non-empty rows");
    const at::Tensor rows = x.reshape({x.numel() / n, n}).contiguous();
    const c10::ScalarType compute = compute_dtype(x);
    const at::Tensor weight_c = flat_in(weight, compute);
    const at::Tensor bias_c = flat_in(bias, compute);
    at::Tensor y = empty_output(x.sizes(), c10::contiguous_strides(x.sizes()), x.options());
    auto [mean, rstd] = layer_norm_forward_into(rows, optional_of(weight_c), optional_of(bias_c), eps, y);
    ctx->save_for_backward({rows, weight_c, mean, rstd, x, weight, bias});
    ctx->saved_data["normalized_ndim"] = normalized_ndim;
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor& dy = grads[0];
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &rows = saved[0], &weight_c = saved[1], &mean = saved[2], &rstd = saved[3], &x = saved[4],
                     &weight = saved[5], &bias = saved[6];
    const auto [need_dx, need_dweight, need_dbias] = gradients_needed(ctx, weight, bias);
    if (needs_composite_backward(dy)) {
      auto g = composite_backward.call_for_grads("layer_norm", dy, x, optional_of(weight), optional_of(bias), mean,
                                                 rstd, ctx->saved_data["normalized_ndim"].toInt(),
                                                 ctx->saved_data["eps"].toDouble(), need_dx, need_dweight, need_dbias);
      return {g[0], g[1], g[2], at::Tensor(), at::Tensor()};
    }
    const at::Tensor dy_rows = dy.reshape(rows.sizes()).contiguous();
    at::Tensor dx = need_dx ? empty_output(x.sizes(), c10::contiguous_strides(x.sizes()), x.options()) : at::Tensor();
    auto [dweight, dbias] =
        layer_norm_backward_into(dy_rows, rows, optional_of(weight_c), mean, rstd, dx, need_dweight, need_dbias);
    return {dx, as_parameter_grad(dweight, weight), as_parameter_grad(dbias, bias), at::Tensor(), at::Tensor()};
  }
};

at::Tensor layer_norm_autograd(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, int64_t normalized_ndim, double eps) {
  return LayerNormFunction::apply(x, weight, bias, normalized_ndim, eps);
}

void register_bindings(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("layer_norm_forward", &layer_norm_forward, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        "LayerNorm of the rows of a contiguous (M, N) tensor: (y, mean, rstd)");
  m.def("layer_norm_backward", &layer_norm_backward, py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("mean"),
        py::arg("rstd"), py::arg("need_dx"), py::arg("need_dweight"), py::arg("need_dbias"),
        "Gradients (dx, dweight, dbias) of layer_norm_forward; None where not needed");
  m.def("layer_norm_autograd", &layer_norm_autograd, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("normalized_ndim"), py::arg("eps"),
        "Differentiable LayerNorm of plain non-empty CPU x over its trailing normalized_ndim dims, backward in C++");
  m.def(
      "set_layer_norm_composite_backward", [](py::object fn) { composite_backward.set(fn); }, py::arg("fn"),
      "The Python backward layer_norm_autograd uses when a graph is built or the gradient is not plain");
}

const RegisterBindings registered(register_bindings);

}  // namespace
}  // namespace fused_optim
