// Gradient norms and clipping: one parallel pass per operation over all tensors.
#include "grad_norm.h"

#include <torch/extension.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "dtypes.h"
#include "parallel.h"
#include "plain_tensor.h"
#include "registry.h"
#include "simd.h"

namespace fused_optim {
namespace {

constexpr int64_t kNormChunk = 1 << 14;
constexpr int kLanes = 16;  // independent accumulators: a fixed summation order that still vectorizes

enum class NormKind { kOne, kTwo, kInf, kOther };

NormKind kind_of(double p) {
  if (p == 1.0) return NormKind::kOne;
  if (p == 2.0) return NormKind::kTwo;
  if (std::isinf(p) && p > 0) return NormKind::kInf;
  return NormKind::kOther;
}

template <typename T, NormKind K>
FUSED_OPTIM_INLINE double power_sum_loop(const T* __restrict x, int64_t n, double p) {
  double acc[kLanes] = {};
  int64_t i = 0;
  auto term = [p](double a) {
    if (K == NormKind::kOne) return a;
    if (K == NormKind::kTwo) return a * a;
    return std::pow(a, p);
  };
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const double a = std::fabs(static_cast<double>(load(x[i + j])));
      if (K == NormKind::kInf) {
        acc[j] = (a > acc[j] || a != a) ? a : acc[j];
      } else {
        acc[j] += term(a);
      }
    }
  }
  for (int j = 0; i < n; ++i, ++j) {
    const double a = std::fabs(static_cast<double>(load(x[i])));
    if (K == NormKind::kInf) {
      acc[j] = (a > acc[j] || a != a) ? a : acc[j];
    } else {
      acc[j] += term(a);
    }
  }
  double total = 0.0;
  for (int j = 0; j < kLanes; ++j) {
    if (K == NormKind::kInf) {
      total = (acc[j] > total || acc[j] != acc[j]) ? acc[j] : total;
    } else {
      total += acc[j];
    }
  }
  return total;
}

#define FUSED_OPTIM_NORM_LOOPS(SUFFIX, T)                                                                   \
  FUSED_OPTIM_SIMD_CLONES double sum_abs_##SUFFIX(const T* x, int64_t n) {                                \
    return power_sum_loop<T, NormKind::kOne>(x, n, 1.0);                                                   \
  }                                                                                                        \
  FUSED_OPTIM_SIMD_CLONES double sum_sq_##SUFFIX(const T* x, int64_t n) {                                 \
    return power_sum_loop<T, NormKind::kTwo>(x, n, 2.0);                                                   \
  }                                                                                                        \
  FUSED_OPTIM_SIMD_CLONES double max_abs_##SUFFIX(const T* x, int64_t n) {                                \
    return power_sum_loop<T, NormKind::kInf>(x, n, 0.0);                                                   \
  }                                                                                                        \
  double power_sum(const T* x, int64_t n, NormKind kind, double p) {                                       \
    switch (kind) {                                                                                        \
      case NormKind::kOne:                                                                                 \
        return sum_abs_##SUFFIX(x, n);                                                                     \
      case NormKind::kTwo:                                                                                 \
        return sum_sq_##SUFFIX(x, n);                                                                      \
      case NormKind::kInf:                                                                                 \
        return max_abs_##SUFFIX(x, n);                                                                     \
      default:                                                                                             \
        return power_sum_loop<T, NormKind::kOther>(x, n, p);                                               \
    }                                                                                                      \
  }                                                                                                        \
  FUSED_OPTIM_SIMD_CLONES void scale_##SUFFIX(T* __restrict x, int64_t n, compute_t<T> factor) {           \
    for (int64_t i = 0; i < n; ++i) x[i] = store_as<T>(load(x[i]) * factor);                               \
  }                                                                                                        \
  FUSED_OPTIM_SIMD_CLONES void clamp_##SUFFIX(T* __restrict x, int64_t n, compute_t<T> low, compute_t<T> high) { \
    for (int64_t i = 0; i < n; ++i) {                                                                      \
      compute_t<T> v = load(x[i]);                                                                         \
      v = v < low ? low : v;                                                                               \
      v = v > high ? high : v;                                                                             \
      x[i] = store_as<T>(v);                                                                               \
    }                                                                                                      \
  }                                                                                                        \
  void scale(T* x, int64_t n, double factor) { scale_##SUFFIX(x, n, compute_t<T>(factor)); }              \
  void clamp(T* x, int64_t n, double low, double high) {                                                   \
    clamp_##SUFFIX(x, n, compute_t<T>(low), compute_t<T>(high));                                           \
  }

template <typename T>
using compute_t = typename ComputeType<T>::type;

FUSED_OPTIM_NORM_LOOPS(f32, float)
FUSED_OPTIM_NORM_LOOPS(f64, double)
FUSED_OPTIM_NORM_LOOPS(bf16, bf16_bits)
FUSED_OPTIM_NORM_LOOPS(f16, half_t)

// The tensors as flat real arrays: complex on their real view. Tensors with gaps or overlaps
// between elements (rare: gradients are dense) cannot be walked flat: they are read through a
// contiguous copy kept in `copies`, or, when null (in-place ops), listed in `others`.
struct FlatTensor {
  void* data;
  int64_t numel;  // real elements
  c10::ScalarType dtype;
  bool complex;
};

bool supported_dtype(c10::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf;
}

// Plain dense-strided CPU tensors of a dtype the loops handle (float, double, bfloat16, half, complex).
bool eligible(const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors) {
    const c10::ScalarType dtype = t.is_complex() ? c10::toRealValueType(t.scalar_type()) : t.scalar_type();
    if (!is_plain_cpu_tensor(t) || !supported_dtype(dtype)) return false;
  }
  return true;
}

std::vector<FlatTensor> flatten(const std::vector<const at::Tensor*>& tensors, const char* what,
                                std::vector<at::Tensor>* copies, std::vector<const at::Tensor*>* others) {
  std::vector<FlatTensor> flat;
  flat.reserve(tensors.size());
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(is_plain_cpu_tensor(*t), what, ": expected plain dense CPU tensors");
    const c10::ScalarType dtype = t->is_complex() ? c10::toRealValueType(t->scalar_type()) : t->scalar_type();
    TORCH_CHECK(supported_dtype(dtype), what, ": unsupported dtype ", t->scalar_type());
    if (t->numel() == 0) continue;
    const at::Tensor* source = t;
    if (!t->is_non_overlapping_and_dense()) {
      if (copies == nullptr) {
        others->push_back(t);
        continue;
      }
      copies->push_back(t->contiguous());
      source = &copies->back();
    }
    flat.push_back({source->data_ptr(), t->is_complex() ? 2 * t->numel() : t->numel(), dtype, t->is_complex()});
  }
  return flat;
}

// sum |z|^p (max |z|) over complex elements stored as (re, im) pairs: only norms other than 2
// need |z| itself, a rare case kept scalar.
template <typename T>
double complex_power_sum(const T* x, int64_t n_pairs, NormKind kind, double p) {
  double acc = 0.0;
  for (int64_t i = 0; i < n_pairs; ++i) {
    const double a = std::hypot(static_cast<double>(load(x[2 * i])), static_cast<double>(load(x[2 * i + 1])));
    if (kind == NormKind::kInf) {
      acc = (a > acc || a != a) ? a : acc;
    } else {
      acc += kind == NormKind::kOne ? a : std::pow(a, p);
    }
  }
  return acc;
}

template <typename F>
void with_storage(c10::ScalarType dtype, void* data, const F& fn) {
  dispatch_storage(dtype, "fused_optim", [&](auto* tag) { fn(static_cast<decltype(tag)>(data)); });
}

std::vector<int64_t> prefix_sums(const std::vector<FlatTensor>& flat) {
  std::vector<int64_t> prefix(1, 0);
  for (const auto& f : flat) prefix.push_back(prefix.back() + f.numel);
  return prefix;
}

std::vector<const at::Tensor*> pointers(const std::vector<at::Tensor>& tensors) {
  std::vector<const at::Tensor*> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) out.push_back(&t);
  return out;
}

// The tensors themselves, or their defined gradients.
std::vector<at::Tensor> gather(const std::vector<at::Tensor>& tensors, bool use_grads) {
  if (!use_grads) return tensors;
  std::vector<at::Tensor> grads;
  grads.reserve(tensors.size());
  for (const auto& t : tensors) {
    const at::Tensor& g = t.grad();
    if (g.defined()) grads.push_back(g);
  }
  return grads;
}

// The value x takes when rounded to `dtype`, as torch's 0-dim tensor arithmetic would store it.
double round_to(c10::ScalarType dtype, double x) {
  switch (dtype) {
    case at::kFloat:
      return static_cast<float>(x);
    case at::kBFloat16:
      return load(store_as<bf16_bits>(static_cast<float>(x)));
    case at::kHalf:
      return static_cast<float>(static_cast<half_t>(static_cast<float>(x)));
    default:
      return x;
  }
}

c10::ScalarType result_dtype(const std::vector<at::Tensor>& tensors) {
  c10::ScalarType dtype = tensors.front().scalar_type();
  for (const auto& t : tensors) dtype = c10::promoteTypes(dtype, t.scalar_type());
  return c10::isComplexType(dtype) ? c10::toRealValueType(dtype) : dtype;
}

// torch's clip coefficient, clamp(max_norm / (total + 1e-6), max=1), computed as torch computes it
// on a 0-dim tensor of `dtype`: the Python scalars in the compute type (float32, float64 for
// float64), each result rounded to `dtype`.
double clip_coefficient(double max_norm, double total, c10::ScalarType dtype) {
  double denominator, coefficient;
  if (dtype == at::kDouble) {
    denominator = total + 1e-6;
    coefficient = max_norm / denominator;
  } else {
    denominator = round_to(dtype, static_cast<float>(total) + static_cast<float>(1e-6));
    coefficient = round_to(dtype, static_cast<float>(max_norm) / static_cast<float>(denominator));
  }
  return coefficient > 1.0 ? 1.0 : coefficient;  // clamp keeps NaN
}

// get_total_norm / clip_grad_norm_ on CPU tensors in one call: the norm (returned as a 0-dim
// tensor of the promoted dtype), the non-finite check, then the in-place scale. None, with nothing
// done, when some tensor is not a dense-strided CPU float tensor (the caller takes another path).
std::optional<at::Tensor> clip_grad_norm(const std::vector<at::Tensor>& tensors, bool use_grads,
                                         std::optional<double> max_norm, double norm_type, bool error_if_nonfinite) {
  const std::vector<at::Tensor> selected = gather(tensors, use_grads);
  if (selected.empty()) return at::scalar_tensor(0.0, at::kFloat);
  if (!eligible(selected)) return std::nullopt;
  const c10::ScalarType dtype = result_dtype(selected);
  const auto ptrs = pointers(selected);
  double total;
  {
    pybind11::gil_scoped_release no_gil;
    total = round_to(dtype, norm_from_power_sum(norm_power_sum(ptrs, norm_type), norm_type));
  }
  if (error_if_nonfinite && !std::isfinite(total)) {
    TORCH_CHECK(false, "The total norm of order ", norm_type,
                " for gradients from `parameters` is non-finite, so it cannot be clipped. To disable this error and "
                "scale the gradients by the non-finite norm anyway, set `error_if_nonfinite=False`");
  }
  if (max_norm.has_value()) {
    const double coefficient = clip_coefficient(*max_norm, total, dtype);
    pybind11::gil_scoped_release no_gil;
    scale_tensors(ptrs, coefficient);
  }
  return at::scalar_tensor(total, dtype);
}

// In-place scale / clamp of the tensors (or their gradients); false, with nothing done, when some
// tensor is not eligible.
bool scale_checked(const std::vector<at::Tensor>& tensors, bool use_grads, double factor) {
  const std::vector<at::Tensor> selected = gather(tensors, use_grads);
  if (!eligible(selected)) return false;
  pybind11::gil_scoped_release no_gil;
  scale_tensors(pointers(selected), factor);
  return true;
}

bool clamp_checked(const std::vector<at::Tensor>& tensors, bool use_grads, double low, double high) {
  const std::vector<at::Tensor> selected = gather(tensors, use_grads);
  if (!eligible(selected)) return false;
  for (const auto& t : selected) {
    if (t.is_complex()) return false;  // torch's clamp rejects complex tensors: let it say so
  }
  pybind11::gil_scoped_release no_gil;
  clamp_tensors(pointers(selected), low, high);
  return true;
}

void register_bindings(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("clip_grad_norm", &clip_grad_norm, py::arg("tensors"), py::arg("use_grads"), py::arg("max_norm"),
        py::arg("norm_type"), py::arg("error_if_nonfinite"),
        "Total p-norm of the tensors (or of their gradients) and, with max_norm, clip them in place.");
  m.def("scale_checked", &scale_checked, py::arg("tensors"), py::arg("use_grads"), py::arg("factor"));
  m.def("clamp_checked", &clamp_checked, py::arg("tensors"), py::arg("use_grads"), py::arg("low"), py::arg("high"));
}

const RegisterBindings registered(register_bindings);

}  // namespace

double norm_power_sum(const std::vector<const at::Tensor*>& tensors, double p) {
  std::vector<at::Tensor> copies;
  copies.reserve(tensors.size());  // flat entries point into it
  const std::vector<FlatTensor> flat = flatten(tensors, "norm", &copies, nullptr);
  const NormKind kind = kind_of(p);
  struct Chunk {
    int64_t tensor, begin, end;
  };
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (size_t t = 0; t < flat.size(); ++t) {
    for (int64_t b = 0; b < flat[t].numel; b += kNormChunk) {  // kNormChunk is even: pairs stay whole
      chunks.push_back({static_cast<int64_t>(t), b, std::min(flat[t].numel, b + kNormChunk)});
    }
    total += flat[t].numel;
  }
  std::vector<double> partial(chunks.size());
  auto reduce_chunk = [&](size_t c) {
    const Chunk& chunk = chunks[c];
    const FlatTensor& f = flat[chunk.tensor];
    if (c + 1 < chunks.size()) {
      const Chunk& next = chunks[c + 1];
      prefetch_head(static_cast<const char*>(flat[next.tensor].data) +
                        next.begin * static_cast<int64_t>(c10::elementSize(flat[next.tensor].dtype)),
                    false);
    }
    with_storage(f.dtype, f.data, [&](auto* x) {
      const int64_t n = chunk.end - chunk.begin;
      partial[c] = (f.complex && kind != NormKind::kTwo) ? complex_power_sum(x + chunk.begin, n / 2, kind, p)
                                                          : power_sum(x + chunk.begin, n, kind, p);
    });
  };
  const int64_t n = static_cast<int64_t>(chunks.size());
  if (total < kMinParallelElements || at::get_num_threads() <= 1 || omp_in_parallel()) {
    for (int64_t c = 0; c < n; ++c) reduce_chunk(c);
  } else {
    std::atomic<int64_t> next{0};
#pragma omp parallel
    {
      for (int64_t c = next.fetch_add(1); c < n; c = next.fetch_add(1)) reduce_chunk(c);
    }
  }
  double result = 0.0;
  for (double value : partial) {
    if (kind == NormKind::kInf) {
      result = (value > result || value != value) ? value : result;
    } else {
      result += value;
    }
  }
  return result;
}

double norm_from_power_sum(double sum, double p) {
  switch (kind_of(p)) {
    case NormKind::kOne:
    case NormKind::kInf:
      return sum;
    case NormKind::kTwo:
      return std::sqrt(sum);
    default:
      return std::pow(sum, 1.0 / p);
  }
}

void scale_tensors(const std::vector<const at::Tensor*>& tensors, double factor) {
  std::vector<const at::Tensor*> others;
  const std::vector<FlatTensor> flat = flatten(tensors, "scale", nullptr, &others);
  parallel_over_elements(prefix_sums(flat), [&](int64_t t, int64_t begin, int64_t end) {
    if (t + 1 < static_cast<int64_t>(flat.size())) prefetch_head(flat[t + 1].data, true);
    with_storage(flat[t].dtype, flat[t].data, [&](auto* x) { scale(x + begin, end - begin, factor); });
  });
  for (const at::Tensor* t : others) {
    at::Tensor view = *t;
    view.mul_(factor);  // ATen casts the factor to the tensor's compute type, as the SIMD loop does
  }
}

void clamp_tensors(const std::vector<const at::Tensor*>& tensors, double low, double high) {
  std::vector<const at::Tensor*> others;
  const std::vector<FlatTensor> flat = flatten(tensors, "clamp", nullptr, &others);
  parallel_over_elements(prefix_sums(flat), [&](int64_t t, int64_t begin, int64_t end) {
    if (t + 1 < static_cast<int64_t>(flat.size())) prefetch_head(flat[t + 1].data, true);
    with_storage(flat[t].dtype, flat[t].data, [&](auto* x) { clamp(x + begin, end - begin, low, high); });
  });
  for (const at::Tensor* t : others) {
    at::Tensor view = *t;
    view.clamp_(low, high);
  }
}

}  // namespace fused_optim
