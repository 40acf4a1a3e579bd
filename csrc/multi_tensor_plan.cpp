#include "multi_tensor_plan.h"

#include <cmath>
#include <map>

#include "dtypes.h"
#include "grad_norm.h"
#include "parallel.h"
#include "registry.h"
#include "simd.h"

namespace fused_optim {
namespace {

std::map<std::string, OptimizerKernel>& optimizer_kernels() {
  static std::map<std::string, OptimizerKernel> all;
  return all;
}

at::Tensor real_view(const at::Tensor& t) { return t.is_complex() ? at::view_as_real(t) : t; }

c10::ScalarType real_dtype(const at::Tensor& t) {
  return t.is_complex() ? c10::toRealValueType(t.scalar_type()) : t.scalar_type();
}

// A tensor whose data pointer means what it says: dense strided memory of its own, no Python
// subclass (DTensor, FakeTensor...), no functionalization wrapper, not meta.
bool has_plain_storage(const at::Tensor& t) {
  const auto keys = t.key_set();
  return t.layout() == c10::kStrided && t.has_storage() && !t.is_meta() && !keys.has(c10::DispatchKey::Python) &&
         !keys.has(c10::DispatchKey::Functionalize);
}

// The next tensor's streams, requested while the current one is updated (see prefetch_head).
void prefetch_work(const void* param, const void* grad, void* const* state, int64_t n_state) {
  prefetch_head(param, true);
  prefetch_head(grad, false);
  for (int64_t k = 0; k < n_state; ++k) prefetch_head(state[k], true);
}

// True when every tensor can be walked as one flat array in the same element order.
bool flat_compatible(const at::Tensor& p, const at::Tensor& g, const std::vector<at::Tensor>& state) {
  bool contiguous = p.is_contiguous() && g.is_contiguous();
  for (const auto& s : state) contiguous = contiguous && s.is_contiguous();
  if (contiguous) return true;
  if (!p.is_non_overlapping_and_dense()) return false;
  if (g.strides() != p.strides()) return false;
  for (const auto& s : state) {
    if (s.strides() != p.strides()) return false;
  }
  return true;
}

// A 0-dim scalar tensor's value, read on the host.
double host_value(const at::Tensor& t) { return t.item<double>(); }

}  // namespace

const OptimizerKernel* find_optimizer_kernel(const std::string& name) {
  auto& all = optimizer_kernels();
  const auto it = all.find(name);
  return it == all.end() ? nullptr : &it->second;
}

RegisterOptimizerKernel::RegisterOptimizerKernel(const char* name, OptimizerKernel kernel) {
  optimizer_kernels()[name] = kernel;
}

MultiTensorPlan::MultiTensorPlan(std::vector<at::Tensor> params, int64_t n_state, std::optional<at::Tensor> steps,
                                 std::string optimizer, std::string kernel, std::vector<c10::ScalarType> state_dtypes,
                                 std::vector<int64_t> tensor_ids)
    : params_(std::move(params)),
      n_state_(n_state),
      state_dtypes_(std::move(state_dtypes)),
      tensor_ids_(std::move(tensor_ids)),
      steps_(steps.has_value() ? std::move(*steps) : at::Tensor()),
      optimizer_(std::move(optimizer)),
      kernel_(nullptr),
      dtype_(c10::ScalarType::Float),
      device_(c10::kCPU) {
  TORCH_CHECK(n_state_ >= 0 && n_state_ <= kMaxState, "MultiTensorPlan: at most ", kMaxState,
              " state tensors per parameter");
  if (!kernel.empty()) {
    kernel_ = find_optimizer_kernel(kernel);
    TORCH_CHECK(kernel_ != nullptr, "MultiTensorPlan: no C++ optimizer kernel named '", kernel, "'");
  }
  const size_t n = params_.size();
  if (n > 0) {
    dtype_ = real_dtype(params_[0]);
    device_ = params_[0].device();
  }
  if (state_dtypes_.empty()) state_dtypes_.assign(n_state_, state_dtype_for(dtype_));
  TORCH_CHECK(static_cast<int64_t>(state_dtypes_.size()) == n_state_, "MultiTensorPlan: ", n_state_,
              " state tensors per parameter but ", state_dtypes_.size(), " state dtypes");
  if (tensor_ids_.empty()) {
    for (size_t i = 0; i < n; ++i) tensor_ids_.push_back(static_cast<int64_t>(i));
  }
  TORCH_CHECK(tensor_ids_.size() == n, "MultiTensorPlan: one tensor id per parameter");
  for (const auto& p : params_) {
    TORCH_CHECK(has_plain_storage(p), optimizer_, ": the C++ plan takes plain dense tensors, got a ", p.toString(),
                " on ", p.device());
    TORCH_CHECK(real_dtype(p) == dtype_ && p.device() == device_,
                "MultiTensorPlan: all parameters of a plan share one device and real dtype");
    is_complex_.push_back(p.is_complex());
  }
  if (steps_.defined()) {
    TORCH_CHECK(steps_.scalar_type() == at::kFloat && steps_.device().is_cpu() && steps_.is_contiguous() &&
                    steps_.numel() == static_cast<int64_t>(n),
                "MultiTensorPlan: steps must be a contiguous float32 CPU tensor with one entry per parameter");
  }
  state_.assign(n, {});
  bound_state_.assign(n, BoundState{});
  bound_.assign(n, 0);
  fresh_.assign(n, 0);
}

std::tuple<bool, std::vector<int64_t>, std::vector<int64_t>> MultiTensorPlan::scan(bool allow_sparse) {
  scanned_ = false;
  active_.clear();
  grads_.clear();
  complex_grads_.clear();
  complex_grads_.reserve(params_.size());
  std::vector<int64_t> need_state;
  std::vector<int64_t> sparse;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i];
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    if (real_dtype(p) != dtype_ || p.device() != device_ || p.is_complex() != bool(is_complex_[i])) {
      return {true, {}, {}};
    }
    if (g.is_sparse() && allow_sparse) {
      sparse.push_back(static_cast<int64_t>(i));
      continue;
    }
    TORCH_CHECK(!g.is_sparse() && g.layout() == c10::kStrided, optimizer_,
                " does not support sparse gradients (parameter ", i, " of its group has one)");
    TORCH_CHECK(g.scalar_type() == p.scalar_type(), optimizer_, ": the gradient of parameter ", i, " has dtype ",
                g.scalar_type(), " but the parameter has dtype ", p.scalar_type());
    TORCH_CHECK(g.device() == p.device(), optimizer_, ": the gradient of parameter ", i, " is on ", g.device(),
                " but the parameter is on ", p.device());
    TORCH_CHECK(g.sizes() == p.sizes(), optimizer_, ": the gradient of parameter ", i, " has shape ", g.sizes(),
                " but the parameter has shape ", p.sizes());
    TORCH_CHECK(has_plain_storage(g), optimizer_, ": the gradient of parameter ", i,
                " is not a plain dense tensor (a tensor subclass or one without storage)");
    if (bound_[i]) {
      const int64_t numel = is_complex_[i] ? 2 * p.numel() : p.numel();
      const int64_t state_numel = bound_state_[i].numel;
      TORCH_CHECK(n_state_ == 0 || state_numel == numel, optimizer_, ": parameter ", i, " has ", p.numel(),
                  " elements but its state was created for ", (is_complex_[i] ? state_numel / 2 : state_numel),
                  "; the parameter was replaced after its first step");
    } else {
      need_state.push_back(static_cast<int64_t>(i));
    }
    active_.push_back(static_cast<int64_t>(i));
    if (is_complex_[i]) {
      complex_grads_.push_back(at::view_as_real(g));
      grads_.push_back(&complex_grads_.back());
    } else {
      grads_.push_back(&g);  // owned by the parameter, which nothing changes during the step
    }
  }
  scanned_ = true;
  return {false, need_state, sparse};
}

void MultiTensorPlan::bind(int64_t index, const std::vector<at::Tensor>& state, bool fresh) {
  TORCH_CHECK(index >= 0 && index < size(), "MultiTensorPlan.bind: index out of range");
  TORCH_CHECK(static_cast<int64_t>(state.size()) == n_state_, "MultiTensorPlan.bind: expected ", n_state_,
              " state tensors, got ", state.size());
  const at::Tensor& p = params_[index];
  std::vector<at::Tensor> views;
  for (size_t k = 0; k < state.size(); ++k) {
    const at::Tensor& s = state[k];
    const c10::ScalarType want = state_dtypes_[k];
    TORCH_CHECK(s.defined() && has_plain_storage(s) && s.device() == p.device() && s.is_complex() == p.is_complex() &&
                    real_dtype(s) == want && s.sizes() == p.sizes(),
                optimizer_, ": state of parameter ", index, " must be a ", want, " tensor of shape ", p.sizes(),
                " on ", p.device(), " (", p.is_complex() ? "complex" : "real", "), got ",
                s.defined() ? s.toString() : std::string("None"), " of shape ", s.sizes());
    views.push_back(real_view(s));
  }
  BoundState cached{};
  cached.numel = is_complex_[index] ? 2 * p.numel() : p.numel();
  cached.contiguous = true;
  for (size_t k = 0; k < views.size(); ++k) {
    cached.data[k] = views[k].data_ptr();
    cached.contiguous = cached.contiguous && views[k].is_contiguous();
  }
  bound_state_[index] = cached;
  state_[index] = std::move(views);
  bound_[index] = 1;
  fresh_[index] = fresh ? 1 : 0;
}

void MultiTensorPlan::check_scanned() const {
  TORCH_CHECK(scanned_, "MultiTensorPlan: scan() must precede a step");
  for (int64_t i : active_) {
    TORCH_CHECK(bound_[i], "MultiTensorPlan: parameter ", i, " has a gradient but no bound state");
  }
}

void MultiTensorPlan::gather_work() {
  work_.clear();
  prefix_.assign(1, 0);
  write_back_.clear();
  keep_alive_.clear();
  for (size_t a = 0; a < active_.size(); ++a) {
    const int64_t i = active_[a];
    const at::Tensor p = is_complex_[i] ? at::view_as_real(params_[i]) : at::Tensor();
    const at::Tensor& param = is_complex_[i] ? p : params_[i];
    const at::Tensor& g = *grads_[a];
    const BoundState& cached = bound_state_[i];
    Work w{};
    w.index = i;
    if (cached.contiguous && param.is_contiguous() && g.is_contiguous()) {
      w.param = param.data_ptr();
      w.grad = g.data_ptr();
      for (int64_t k = 0; k < n_state_; ++k) w.state[k] = cached.data[k];
      work_.push_back(w);
      prefix_.push_back(prefix_.back() + param.numel());
      continue;
    }
    std::vector<at::Tensor>& state = state_[i];
    if (flat_compatible(param, g, state)) {
      w.param = param.data_ptr();
      w.grad = g.data_ptr();
      for (int64_t k = 0; k < n_state_; ++k) w.state[k] = state[k].data_ptr();
    } else {
      auto flat = [&](const at::Tensor& t, bool written) {
        if (t.is_contiguous()) return t;
        at::Tensor copy = t.contiguous();
        if (written) write_back_.emplace_back(t, copy);
        keep_alive_.push_back(copy);
        return copy;
      };
      w.param = flat(param, true).data_ptr();
      w.grad = flat(g, false).data_ptr();
      for (int64_t k = 0; k < n_state_; ++k) w.state[k] = flat(state[k], true).data_ptr();
    }
    work_.push_back(w);
    prefix_.push_back(prefix_.back() + param.numel());
  }
}

void MultiTensorPlan::write_back() {
  for (auto& [destination, copy] : write_back_) destination.copy_(copy);
  write_back_.clear();
  keep_alive_.clear();
}

void MultiTensorPlan::forget_scan() {
  active_.clear();
  grads_.clear();
  complex_grads_.clear();
  scanned_ = false;
}

const std::vector<int64_t>& MultiTensorPlan::active() const {
  TORCH_CHECK(scanned_, "MultiTensorPlan: scan() must precede a step");
  return active_;
}

std::vector<int64_t> MultiTensorPlan::fresh() const { return std::vector<int64_t>(fresh_.begin(), fresh_.end()); }

void MultiTensorPlan::finish_step() {
  for (int64_t i : active_) fresh_[i] = 0;
  forget_scan();
}

at::Tensor MultiTensorPlan::launch_rows(int64_t counters_address) {
  check_scanned();
  gather_work();
  at::Tensor rows = at::zeros({static_cast<int64_t>(work_.size()), launch_row::kWords}, at::kLong);
  int64_t* row = rows.data_ptr<int64_t>();
  for (size_t a = 0; a < work_.size(); ++a, row += launch_row::kWords) {
    const Work& w = work_[a];
    row[launch_row::kParam] = reinterpret_cast<int64_t>(w.param);
    row[launch_row::kGrad] = reinterpret_cast<int64_t>(w.grad);
    for (int64_t k = 0; k < n_state_; ++k) row[launch_row::kState + k] = reinterpret_cast<int64_t>(w.state[k]);
    row[launch_row::kNumel] = prefix_[a + 1] - prefix_[a];
    row[launch_row::kCounter] = counters_address + 4 * w.index;
    row[launch_row::kKey] = tensor_ids_[w.index];
  }
  return rows;
}

void MultiTensorPlan::finish_launch() {
  write_back();
  forget_scan();
}

double MultiTensorPlan::grad_norm_power_sum(double p) const {
  check_scanned();
  pybind11::gil_scoped_release no_gil;
  return norm_power_sum(grads_, p);
}

void MultiTensorPlan::update(const std::vector<double>& scalars, const std::vector<int64_t>& flags,
                             std::optional<at::Tensor> grad_factor, std::optional<at::Tensor> found_inf) {
  check_scanned();
  TORCH_CHECK(kernel_ != nullptr, "MultiTensorPlan.update: the plan was built without a kernel");
  TORCH_CHECK(scalars.size() <= kMaxScalars && flags.size() <= kMaxFlags, "MultiTensorPlan.update: at most ",
              kMaxScalars, " scalars and ", kMaxFlags, " flags");
  if (found_inf.has_value() && host_value(*found_inf) != 0.0) {
    forget_scan();  // a skipped step changes nothing: counters and first-step flags stay
    return;
  }
  double scalar_values[kMaxScalars] = {};
  int64_t flag_values[kMaxFlags] = {};
  std::copy(scalars.begin(), scalars.end(), scalar_values);
  std::copy(flags.begin(), flags.end(), flag_values);
  TORCH_CHECK(n_state_ == kernel_->n_state(flag_values), "MultiTensorPlan.update: the plan was built with ",
              n_state_, " state tensors per parameter, the kernel reads ", kernel_->n_state(flag_values));
  const double factor = grad_factor.has_value() ? host_value(*grad_factor) : 1.0;
  gather_work();
  // Counters first, then each tensor's scalars: parameters of a group usually share their step,
  // so prepare() runs once per distinct step.
  float* steps = steps_.defined() ? steps_.data_ptr<float>() : nullptr;
  tensor_scalars_.assign(work_.size() * kMaxTensorScalars, 0.0);
  first_.resize(work_.size());
  float last_step = -1.0f;
  for (size_t a = 0; a < work_.size(); ++a) {
    const int64_t index = work_[a].index;
    first_[a] = fresh_[index];
    const float step = steps != nullptr ? (steps[index] += 1.0f) : 0.0f;
    double* mine = &tensor_scalars_[a * kMaxTensorScalars];
    if (a > 0 && step == last_step) {
      std::copy(mine - kMaxTensorScalars, mine, mine);
    } else {
      kernel_->prepare(scalar_values, flag_values, step, mine);
      last_step = step;
    }
  }
  {
    pybind11::gil_scoped_release no_gil;
    const size_t param_size = c10::elementSize(dtype_);
    size_t state_size[kMaxState] = {};
    for (int64_t k = 0; k < n_state_; ++k) state_size[k] = c10::elementSize(state_dtypes_[k]);
    const int64_t n_state = n_state_;
    const OptimizerKernel* kernel = kernel_;
    parallel_over_elements(prefix_, [&](int64_t t, int64_t begin, int64_t end) {
      const Work& w = work_[t];
      if (t + 1 < static_cast<int64_t>(work_.size())) {
        const Work& next = work_[t + 1];
        prefetch_work(next.param, next.grad, next.state, n_state);
      }
      Streams streams{};
      streams.param = static_cast<char*>(w.param) + begin * param_size;
      streams.grad = static_cast<const char*>(w.grad) + begin * param_size;
      for (int64_t k = 0; k < n_state; ++k) streams.state[k] = static_cast<char*>(w.state[k]) + begin * state_size[k];
      const UpdateArgs args{scalar_values, flag_values, &tensor_scalars_[t * kMaxTensorScalars], factor,
                            first_[t] != 0, begin, static_cast<uint32_t>(tensor_ids_[w.index])};
      kernel->update(dtype_, streams, end - begin, args);
    });
  }
  write_back();
  finish_step();
}

namespace {

void register_bindings(pybind11::module_& m) {
  namespace py = pybind11;
  // module_local: the loader may import a stale prebuilt extension before it loads a JIT build of
  // newer sources into the same process; each module must own its type.
  py::class_<MultiTensorPlan>(m, "MultiTensorPlan", py::module_local())
      .def(py::init<std::vector<at::Tensor>, int64_t, std::optional<at::Tensor>, std::string, std::string,
                    std::vector<c10::ScalarType>, std::vector<int64_t>>(),
           py::arg("params"), py::arg("n_state"), py::arg("steps"), py::arg("optimizer"), py::arg("kernel") = "",
           py::arg("state_dtypes") = std::vector<c10::ScalarType>{}, py::arg("tensor_ids") = std::vector<int64_t>{})
      .def("scan", &MultiTensorPlan::scan, py::arg("allow_sparse") = false)
      .def("bind", &MultiTensorPlan::bind, py::arg("index"), py::arg("state"), py::arg("fresh"))
      .def("grad_norm_power_sum", &MultiTensorPlan::grad_norm_power_sum, py::arg("p"))
      .def("update", &MultiTensorPlan::update, py::arg("scalars"), py::arg("flags"), py::arg("grad_factor"),
           py::arg("found_inf"))
      .def("active", &MultiTensorPlan::active)
      .def("fresh", &MultiTensorPlan::fresh)
      .def("finish_step", &MultiTensorPlan::finish_step)
      .def("launch_rows", &MultiTensorPlan::launch_rows, py::arg("counters_address"))
      .def("finish_launch", &MultiTensorPlan::finish_launch)
      .def("__len__", &MultiTensorPlan::size);
  py::dict row;
  row["WORDS"] = launch_row::kWords;
  row["PARAM"] = launch_row::kParam;
  row["GRAD"] = launch_row::kGrad;
  row["STATE"] = launch_row::kState;
  row["MAX_STATE"] = kMaxState;
  row["NUMEL"] = launch_row::kNumel;
  row["COUNTER"] = launch_row::kCounter;
  m.attr("LAUNCH_ROW") = row;
  m.attr("LAUNCH_ROW_KEY") = launch_row::kKey;
  m.attr("MAX_KERNEL_SCALARS") = kMaxScalars;
  m.attr("MAX_KERNEL_FLAGS") = kMaxFlags;
  py::list names;
  for (const auto& [name, kernel] : optimizer_kernels()) names.append(name);
  m.attr("OPTIMIZER_KERNELS") = names;
}

const RegisterBindings registered(register_bindings);

}  // namespace
}  // namespace fused_optim
