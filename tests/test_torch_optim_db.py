"""torch's own optimizer database, driven through fused_optim's classes on every backend.

``torch.testing._internal.common_optimizers.optim_db`` (shipped in the wheel) holds, per
optimizer, the configurations torch tests (``optim_inputs_func``, here with torch's variants of
the implementation flags foreach / fused / differentiable) and the bad inputs with the exception
each must raise (``optim_error_inputs_func``). Each configuration is stepped by fused_optim's
class and by torch's (foreach=False) on the same CPU inputs, comparing the parameters and every
state tensor; each bad input must raise (or warn) as torch's own test requires.

Optimizers are keyed by name: one that fused_optim does not have is skipped with a reason. A
known gap would be marked ``xfail(strict=True)`` with its reason (none is open).
"""

import copy

import pytest
import torch
from torch.testing._internal import common_optimizers as torch_db

import fused_optim as fo
from conftest import require_backend
from optim_db import assert_same_state

NAMES = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad")
INFOS = {info.name: info for info in torch_db.optim_db if info.name in NAMES}
BACKENDS = [("reference", "cpu"), ("cpp", "cpu"), ("triton", "cpu")]
IMPLEMENTATION_FLAGS = ("foreach", "fused", "differentiable")
STEPS = 4

#: units in the last place of the 16-bit parameter types
LOW_PRECISION = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def fused_class(name):
    cls = getattr(fo, name, None)
    if cls is None:
        pytest.skip(f"fused_optim has no {name}")
    return cls


def configs(name, dtype=torch.float32, with_flags=True):
    """torch's configurations of ``name`` on the CPU: (id, kwargs), with the implementation-flag
    variants torch's own tests add (each flag True alone)."""
    info = INFOS[name]
    inputs = (torch_db._get_optim_inputs_including_global_cliquey_kwargs("cpu", dtype, info) if with_flags
              else info.optim_inputs_func("cpu", dtype))
    return [(f"{name}-{i.desc}".replace(" ", "_"), i.kwargs) for i in inputs]


def config_cases():
    cases = []
    for name in NAMES:
        for backend, device in BACKENDS:
            # the Triton interpreter is slow: torch's configurations without the flag variants
            for case_id, kwargs in configs(name, with_flags=backend != "triton"):
                cases.append(pytest.param(name, kwargs, backend, device, id=f"{case_id}-{backend}"))
    return cases


def make_params(device, dtype, backend, seed=0):
    """Small parameters of awkward shapes (0-dim, 1, 7, 2-D, one transposed); two for Triton."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(7,), (3, 5)] if backend == "triton" else [(), (1,), (7,), (3, 5), (33,), (4, 6)]
    params = [torch.randn(s, generator=g, dtype=torch.float64).to(device, dtype) for s in shapes]
    params[-1] = params[-1].t().contiguous().t() if params[-1].dim() == 2 else params[-1]  # transposed
    return params


def grads_for(params, step, seed=1):
    """Fresh gradients; one parameter (a different one each step) has none."""
    g = torch.Generator().manual_seed(seed * 100 + step)
    return [None if i == step % len(params) else torch.randn(p.shape, generator=g, dtype=torch.float64).to(p)
            for i, p in enumerate(params)]


def torch_kwargs(kwargs):
    """torch's reference implementation of the same configuration: the for-loop one."""
    out = {k: v for k, v in copy.deepcopy(kwargs).items() if k not in IMPLEMENTATION_FLAGS}
    out["foreach"] = False
    if kwargs.get("differentiable"):
        out["differentiable"] = True
    return out


def run_both(name, kwargs, backend, device, dtype=torch.float32, steps=STEPS, torch_dtype=None):
    """Steps fused_optim's and torch's class side by side (torch on ``torch_dtype`` copies of the
    same values when given); returns both optimizers and params."""
    cls = fused_class(name)
    base = make_params(device, dtype, backend)
    differentiable = bool(kwargs.get("differentiable"))
    leaves = [[p.clone().requires_grad_() for p in base],
              [p.to(torch_dtype or dtype, copy=True).requires_grad_() for p in base]]
    # differentiable=True steps non-leaf parameters, so that gradients flow through the update
    params, expected = [[q.clone() if differentiable else q for q in group] for group in leaves]
    fused_opt = cls(params, backend=backend, **copy.deepcopy(kwargs))
    torch_opt = INFOS[name].optim_cls(expected, **torch_kwargs(kwargs))
    for step in range(steps):
        for p, q, grad in zip(params, expected, grads_for(base, step)):
            p.grad = None if grad is None else grad.clone()
            q.grad = None if grad is None else grad.to(q.dtype)
        fused_opt.step()
        torch_opt.step()
    return fused_opt, torch_opt, params, expected, leaves


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("name,kwargs,backend,device", config_cases())
def test_config_matches_torch(name, kwargs, backend, device):
    require_backend(backend, device)
    fused_opt, torch_opt, params, expected, leaves = run_both(name, kwargs, backend, device)
    assert_same_state(fused_opt, torch_opt, params, expected)
    if kwargs.get("differentiable"):  # the gradient of the stepped parameters reaches the originals
        try:
            torch.autograd.backward([q.square().sum() for q in expected])
        except RuntimeError:  # torch's own step has no backward here (amsgrad's in-place maximum)
            return
        torch.autograd.backward([p.square().sum() for p in params])
        for p, q in zip(*leaves):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


def low_precision_cases():
    return [pytest.param(name, kwargs, backend, dtype, id=f"{case_id}-{backend}-{str(dtype)[6:]}")
            for name in NAMES for dtype in LOW_PRECISION for backend in ("reference", "cpp")
            for case_id, kwargs in configs(name, dtype, with_flags=False)]


@pytest.mark.parametrize("name,kwargs,backend,dtype", low_precision_cases())
def test_low_precision_config_near_torch(name, kwargs, backend, dtype):
    """16-bit parameters, float32 state and math (fused_optim's documented difference: torch keeps
    16-bit state, whose squares underflow in float16 with eps flushed to zero): against torch on
    float32 copies of the same values, within a few units in the last place of the 16-bit type
    (fused_optim rounds the parameters at every step, torch's float32 copies are not rounded)."""
    require_backend(backend, "cpu")
    fused_opt, torch_opt, params, expected, _ = run_both(name, kwargs, backend, "cpu", dtype, steps=3,
                                                         torch_dtype=torch.float32)
    ulp = LOW_PRECISION[dtype]
    assert_same_state(fused_opt, torch_opt, [p.float() for p in params], expected, rtol=4 * ulp, atol=1e-3,
                      state_tolerance=(4 * ulp, 4 * ulp))


def error_cases():
    cases = []
    for name in NAMES:
        for index, error in enumerate(INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32)):
            for backend, device in BACKENDS:
                desc = error.optimizer_error_input.desc.replace(" ", "_")
                cases.append(pytest.param(name, index, backend, device, id=f"{name}-{index}-{desc}-{backend}"))
    return cases


@pytest.mark.parametrize("name,index,backend,device", error_cases())
def test_error_input_raises_as_torch(name, index, backend, device):
    """The exception (or warning) type and message torch's test_errors requires, for the same
    arguments (torch's test passes params=None where the error is in the arguments)."""
    cls = fused_class(name)
    require_backend(backend, device)
    error = INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32)[index]
    optim_input = error.optimizer_error_input
    params, kwargs = optim_input.params, dict(optim_input.kwargs, backend=backend)
    expect = pytest.warns if issubclass(error.error_type, Warning) else pytest.raises
    if error.error_on == torch_db.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with expect(error.error_type, match=error.error_regex):
            cls(params, **kwargs)
    else:
        opt = cls(params, **kwargs)
        with expect(error.error_type, match=error.error_regex):
            opt.step()


def sparse_cases():
    cases = []
    for name in NAMES:
        info = INFOS[name]
        if not info.supports_sparse:
            continue
        for backend, device in BACKENDS:
            cases.append(pytest.param(name, backend, device, id=f"{name}-{backend}"))
    return cases


@pytest.mark.parametrize("name,backend,device", sparse_cases())
def test_sparse_gradients_match_torch(name, backend, device):
    """torch's sparse configuration (metadata_for_sparse) on an embedding-like table whose sparse
    gradients repeat rows, beside a dense parameter: the same results as torch."""
    cls = fused_class(name)
    require_backend(backend, device)
    kwargs, _ = INFOS[name].metadata_for_sparse
    g = torch.Generator().manual_seed(2)
    base = [torch.randn(10, 3, generator=g), torch.randn(5, generator=g)]
    params = [p.clone().requires_grad_() for p in base]
    expected = [p.clone().requires_grad_() for p in base]
    fused_opt = cls(params, backend=backend, **kwargs)
    torch_opt = INFOS[name].optim_cls(expected, foreach=False, **kwargs)
    for _ in range(STEPS):
        rows = torch.randint(0, 10, (6,), generator=g)
        sparse = torch.sparse_coo_tensor(rows[None], torch.randn(6, 3, generator=g), (10, 3), check_invariants=True)
        dense = torch.randn(5, generator=g)
        for ps in (params, expected):
            ps[0].grad, ps[1].grad = sparse.clone(), dense.clone()
        fused_opt.step()
        torch_opt.step()
    assert_same_state(fused_opt, torch_opt, params, expected)


def no_grad_cases():
    cases = []
    for name in NAMES:
        case_id, kwargs = configs(name, with_flags=False)[0]
        for backend, device in BACKENDS + [("reference", "meta"), ("cpp", "meta"), ("triton", "meta")]:
            cases.append(pytest.param(name, kwargs, backend, device, id=f"{case_id}-{backend}-{device}"))
    return cases


@pytest.mark.parametrize("name,kwargs,backend,device", no_grad_cases())
def test_step_without_gradients_changes_nothing(name, kwargs, backend, device):
    """A step where no parameter has a gradient (none computed yet, or frozen parameters) is a
    no-op, whatever the tensors are (meta tensors too): the state stays as torch leaves it."""
    cls = fused_class(name)
    if device == "cpu":
        require_backend(backend, device)
    params = [torch.randn(2, 3, device=device, requires_grad=True), torch.randn(4, device=device)]
    expected = [p.detach().clone().requires_grad_(p.requires_grad) for p in params]
    fused_opt = cls(params, backend=backend, **copy.deepcopy(kwargs))
    torch_opt = INFOS[name].optim_cls(expected, **torch_kwargs(kwargs))
    before = [p.detach().clone() for p in params]
    for _ in range(2):
        fused_opt.step()
        torch_opt.step()
    if device == "meta":
        assert len(fused_opt.state) == len(torch_opt.state)
        return
    for p, q in zip(params, before):
        assert torch.equal(p.detach(), q)
    assert_same_state(fused_opt, torch_opt, params, expected, rtol=0, atol=0)


def test_every_named_optimizer_is_in_torch_db():
    """The names above are torch's: a rename in torch must not silently drop cases."""
    assert set(INFOS) == set(NAMES)
    for name in NAMES:
        assert configs(name) and INFOS[name].optim_error_inputs_func is not None
