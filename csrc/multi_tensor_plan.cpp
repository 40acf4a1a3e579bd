#include "multi_tensor_plan.h"

#include <cmath>

#include "dtypes.h"
#include "grad_norm.h"
#include "parallel.h"
#include "registry.h"

namespace fused_optim {
namespace {

at::Tensor real_view(const at::Tensor& t) { return t.is_complex() ? at::view_as_real(t) : t; }

c10::ScalarType real_dtype(const at::Tensor& t) {
  return t.is_complex() ? c10::toRealValueType(t.scalar_type()) : t.scalar_type();
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

}  // namespace

MultiTensorPlan::MultiTensorPlan(std::vector<at::Tensor> params, int64_t n_state, std::optional<at::Tensor> steps,
                                 std::string optimizer)
    : params_(std::move(params)),
      n_state_(n_state),
      steps_(steps.has_value() ? std::move(*steps) : at::Tensor()),
      optimizer_(std::move(optimizer)),
      dtype_(c10::ScalarType::Float),
      device_(c10::kCPU) {
  TORCH_CHECK(n_state_ >= 0 && n_state_ <= 3, "MultiTensorPlan: at most 3 state tensors per parameter");
  const size_t n = params_.size();
  if (n > 0) {
    dtype_ = real_dtype(params_[0]);
    device_ = params_[0].device();
  }
  for (const auto& p : params_) {
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
  bound_.assign(n, 0);
  fresh_.assign(n, 0);
}

std::pair<bool, std::vector<int64_t>> MultiTensorPlan::scan() {
  scanned_ = false;
  active_.clear();
  grads_.clear();
  complex_grads_.clear();
  complex_grads_.reserve(params_.size());
  std::vector<int64_t> need_state;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& p = params_[i];
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    TORCH_CHECK(!g.is_sparse() && g.layout() == c10::kStrided, optimizer_,
                " does not support sparse gradients (parameter ", i, " of its group has one)");
    if (real_dtype(p) != dtype_ || p.device() != device_ || p.is_complex() != bool(is_complex_[i])) {
      return {true, {}};
    }
    TORCH_CHECK(g.scalar_type() == p.scalar_type(), optimizer_, ": the gradient of parameter ", i, " has dtype ",
                g.scalar_type(), " but the parameter has dtype ", p.scalar_type());
    TORCH_CHECK(g.device() == p.device(), optimizer_, ": the gradient of parameter ", i, " is on ", g.device(),
                " but the parameter is on ", p.device());
    TORCH_CHECK(g.sizes() == p.sizes(), optimizer_, ": the gradient of parameter ", i, " has shape ", g.sizes(),
                " but the parameter has shape ", p.sizes());
    if (bound_[i]) {
      const int64_t numel = is_complex_[i] ? 2 * p.numel() : p.numel();
      for (const auto& s : state_[i]) {
        TORCH_CHECK(s.numel() == numel, optimizer_, ": parameter ", i, " has ", p.numel(),
                    " elements but its state was created for ", (is_complex_[i] ? s.numel() / 2 : s.numel()),
                    "; the parameter was replaced after its first step");
      }
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
  return {false, need_state};
}

void MultiTensorPlan::bind(int64_t index, const std::vector<at::Tensor>& state, bool fresh) {
  TORCH_CHECK(index >= 0 && index < size(), "MultiTensorPlan.bind: index out of range");
  TORCH_CHECK(static_cast<int64_t>(state.size()) == n_state_, "MultiTensorPlan.bind: expected ", n_state_,
              " state tensors, got ", state.size());
  const at::Tensor& p = params_[index];
  const c10::ScalarType want = state_dtype_for(dtype_);
  std::vector<at::Tensor> views;
  for (const auto& s : state) {
    TORCH_CHECK(s.defined() && s.device() == p.device() && s.is_complex() == p.is_complex() &&
                    real_dtype(s) == want && s.sizes() == p.sizes(),
                optimizer_, ": state of parameter ", index, " must be a ", want, " tensor of shape ", p.sizes(),
                " on ", p.device(), " (", p.is_complex() ? "complex" : "real", "), got ",
                s.defined() ? s.toString() : std::string("None"), " of shape ", s.sizes());
    views.push_back(real_view(s));
  }
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
    std::vector<at::Tensor>& state = state_[i];
    Work w{};
    w.index = i;
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

void MultiTensorPlan::finish() {
  write_back();
  for (int64_t i : active_) fresh_[i] = 0;
  forget_scan();
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

at::Tensor MultiTensorPlan::launch_rows(int64_t counters_address) {
  check_scanned();
  gather_work();
  at::Tensor rows = at::zeros({static_cast<int64_t>(work_.size()), 8}, at::kLong);
  int64_t* row = rows.data_ptr<int64_t>();
  for (size_t a = 0; a < work_.size(); ++a, row += 8) {
    const Work& w = work_[a];
    row[0] = reinterpret_cast<int64_t>(w.param);
    row[1] = reinterpret_cast<int64_t>(w.grad);
    for (int64_t k = 0; k < n_state_; ++k) row[2 + k] = reinterpret_cast<int64_t>(w.state[k]);
    row[5] = prefix_[a + 1] - prefix_[a];
    row[6] = counters_address + 4 * w.index;
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

void MultiTensorPlan::adam(double lr, double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                           bool maximize, bool decoupled_weight_decay, double grad_factor, bool skip) {
  check_scanned();
  if (skip) {
    forget_scan();  // a skipped first step leaves SGD's buffers fresh
    return;
  }
  TORCH_CHECK(n_state_ == (amsgrad ? 3 : 2), "MultiTensorPlan.adam: the plan was built with ", n_state_,
              " state tensors per parameter");
  TORCH_CHECK(steps_.defined(), "MultiTensorPlan.adam: the plan has no step counts");
  gather_work();
  float* steps = steps_.data_ptr<float>();
  per_tensor_adam_.resize(work_.size());
  float last_step = -1.0f;
  AdamTensorConstants last{};
  for (size_t a = 0; a < work_.size(); ++a) {
    float& step = steps[work_[a].index];
    step += 1.0f;
    if (step != last_step) {  // parameters of a group usually share their step: compute once
      const double t = step;
      last.neg_step_size = -(lr / (1.0 - std::pow(beta1, t)));
      last.bias_correction2_sqrt = std::sqrt(1.0 - std::pow(beta2, t));
      last_step = step;
    }
    per_tensor_adam_[a] = last;
  }
  const std::vector<AdamTensorConstants>& per_tensor = per_tensor_adam_;
  AdamConstants constants{};
  constants.beta1 = beta1;
  constants.beta2 = beta2;
  constants.eps = eps;
  const bool decay = weight_decay != 0;
  constants.l2_weight_decay = (decay && !decoupled_weight_decay) ? weight_decay : 0.0;
  constants.decay = (decay && decoupled_weight_decay) ? 1.0 - lr * weight_decay : 1.0;
  constants.grad_sign = maximize ? -1.0 : 1.0;
  constants.grad_factor = grad_factor;
  constants.amsgrad = amsgrad;
  {
    pybind11::gil_scoped_release no_gil;
    const c10::ScalarType dtype = dtype_;
    parallel_over_elements(prefix_, [&](int64_t t, int64_t begin, int64_t end) {
      const Work& w = work_[t];
      const size_t pe = c10::elementSize(dtype);
      const size_t se = c10::elementSize(state_dtype_for(dtype));
      adam_update(dtype, static_cast<char*>(w.param) + begin * pe, static_cast<const char*>(w.grad) + begin * pe,
                  static_cast<char*>(w.state[0]) + begin * se, static_cast<char*>(w.state[1]) + begin * se,
                  amsgrad ? static_cast<char*>(w.state[2]) + begin * se : nullptr, end - begin, constants,
                  per_tensor[t]);
    });
  }
  finish();
}

void MultiTensorPlan::sgd(double lr, double momentum, double dampening, double weight_decay, bool nesterov,
                          bool maximize, double grad_factor, bool skip) {
  check_scanned();
  if (skip) {
    forget_scan();  // a skipped first step leaves SGD's buffers fresh
    return;
  }
  TORCH_CHECK(n_state_ == (momentum != 0 ? 1 : 0), "MultiTensorPlan.sgd: the plan was built with ", n_state_,
              " state tensors per parameter");
  gather_work();
  SgdConstants constants{lr, momentum, dampening, weight_decay, maximize ? -1.0 : 1.0, grad_factor, nesterov};
  std::vector<char> first(work_.size());
  for (size_t a = 0; a < work_.size(); ++a) first[a] = fresh_[work_[a].index];
  {
    pybind11::gil_scoped_release no_gil;
    const c10::ScalarType dtype = dtype_;
    parallel_over_elements(prefix_, [&](int64_t t, int64_t begin, int64_t end) {
      const Work& w = work_[t];
      const size_t pe = c10::elementSize(dtype);
      const size_t se = c10::elementSize(state_dtype_for(dtype));
      sgd_update(dtype, static_cast<char*>(w.param) + begin * pe, static_cast<const char*>(w.grad) + begin * pe,
                 momentum != 0 ? static_cast<char*>(w.state[0]) + begin * se : nullptr, end - begin, constants,
                 first[t]);
    });
  }
  finish();
}

namespace {

void register_bindings(pybind11::module_& m) {
  namespace py = pybind11;
  // module_local: the loader may import a stale prebuilt extension before it loads a JIT build of
  // newer sources into the same process; each module must own its type.
  py::class_<MultiTensorPlan>(m, "MultiTensorPlan", py::module_local())
      .def(py::init<std::vector<at::Tensor>, int64_t, std::optional<at::Tensor>, std::string>(), py::arg("params"),
           py::arg("n_state"), py::arg("steps"), py::arg("optimizer"))
      .def("scan", &MultiTensorPlan::scan)
      .def("bind", &MultiTensorPlan::bind, py::arg("index"), py::arg("state"), py::arg("fresh"))
      .def("grad_norm_power_sum", &MultiTensorPlan::grad_norm_power_sum, py::arg("p"))
      .def("launch_rows", &MultiTensorPlan::launch_rows, py::arg("counters_address"))
      .def("finish_launch", &MultiTensorPlan::finish_launch)
      .def("adam", &MultiTensorPlan::adam, py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
           py::arg("weight_decay"), py::arg("amsgrad"), py::arg("maximize"), py::arg("decoupled_weight_decay"),
           py::arg("grad_factor"), py::arg("skip"))
      .def("sgd", &MultiTensorPlan::sgd, py::arg("lr"), py::arg("momentum"), py::arg("dampening"),
           py::arg("weight_decay"), py::arg("nesterov"), py::arg("maximize"), py::arg("grad_factor"), py::arg("skip"))
      .def("__len__", &MultiTensorPlan::size);
}

const RegisterBindings registered(register_bindings);

}  // namespace
}  // namespace fused_optim
