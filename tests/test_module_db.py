"""torch's own module database (torch.testing._internal.common_modules.module_db) driven through
fused_optim's LayerNorm and BatchNorm1d/2d/3d on every backend.

For each of torch's inputs, in training and eval: output, input and parameter gradients and
buffers equal torch.nn's (computed in float64, so that torch's own float32 rounding of sums over
many rows does not enter the tolerance); torch's gradcheck and gradgradcheck (with the batched-gradient check, as
torch's test_modules.py runs them) pass; each error input raises torch's error type and message.
The Triton interpreter is slow, so triton runs the first input of each module only.
"""

import pytest
import torch
from torch.testing._internal.common_modules import module_db
from torch.testing._internal.common_utils import gradcheck, gradgradcheck

import fused_optim as fo

from conftest import BACKEND_DEVICES, backend_device_id, require_backend

OURS = {torch.nn.LayerNorm: fo.LayerNorm, torch.nn.BatchNorm1d: fo.BatchNorm1d, torch.nn.BatchNorm2d: fo.BatchNorm2d,
        torch.nn.BatchNorm3d: fo.BatchNorm3d}
INFOS = [info for info in module_db if info.module_cls in OURS]
assert len(INFOS) == 4


def module_inputs(info, dtype, requires_grad, training, backend):
    inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=requires_grad, training=training)
    return inputs[:1] if backend == "triton" else inputs


def build(info, module_input, backend, device, training, dtype):
    """(ours, torch's) built from one ModuleInput's constructor arguments, with equal random state."""
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    theirs = info.module_cls(*args, **kwargs).to(device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in list(theirs.named_parameters()) + list(theirs.named_buffers()):
            if t.is_floating_point():
                values = torch.rand(t.shape, generator=generator) + 0.5
                t.copy_(values if "var" in name or name == "weight" else values - 1.0)
    ours = OURS[info.module_cls](*args, backend=backend, **kwargs).to(device=device, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours.train(training), theirs.train(training)


def cases():
    return [pytest.param(info, training, pair,
                         id=f"{info.name}-{'train' if training else 'eval'}-{backend_device_id(pair)}")
            for info in INFOS for training in (True, False) for pair in BACKEND_DEVICES]


@pytest.mark.parametrize("info,training,backend_device", cases())
def test_module_inputs_match_torch(info, training, backend_device):
    backend, device = backend_device
    require_backend(backend, device)
    for module_input in module_inputs(info, torch.float32, True, training, backend):
        ours, theirs = build(info, module_input, backend, device, training, torch.float32)
        (x,) = module_input.forward_input.args
        results = []
        for model, dtype in ((ours, torch.float32), (theirs.double(), torch.float64)):
            xi = x.detach().to(device=device, dtype=dtype).requires_grad_()
            y = model(xi)
            y.backward(torch.linspace(-1, 1, y.numel(), device=device, dtype=dtype).reshape(y.shape))
            results.append([y.detach(), xi.grad] + [p.grad for p in model.parameters()] + list(model.buffers()))
        for a, e in zip(*results, strict=True):
            assert a.dtype == (torch.float32 if e.is_floating_point() else e.dtype)
            torch.testing.assert_close(a.to(e.dtype), e, rtol=1e-5, atol=1e-5,
                                       msg=lambda m: f"{module_input.desc}: {m}")


@pytest.mark.parametrize("info,training,backend_device", cases())
def test_grad_and_gradgrad(info, training, backend_device):
    """torch's test_grad and test_gradgrad: float64 gradcheck over the input and the parameters."""
    backend, device = backend_device
    require_backend(backend, device)
    for module_input in module_inputs(info, torch.float64, True, training, backend):
        ours, _ = build(info, module_input, backend, device, training, torch.float64)
        (x,) = module_input.forward_input.args
        names = [name for name, _ in ours.named_parameters()]
        params = [p.detach().requires_grad_() for p in ours.parameters()]
        if x.numel() == 0:
            continue  # nothing to perturb: torch's tests skip empty inputs the same way

        def f(x, *p):
            return torch.func.functional_call(ours, dict(zip(names, p)), (x,))

        inputs = (x.detach().to(device).requires_grad_(), *params)
        assert gradcheck(f, inputs, check_batched_grad=True), module_input.desc
        assert gradgradcheck(f, inputs, check_batched_grad=backend != "triton"), module_input.desc


@pytest.mark.parametrize("info", [i for i in INFOS if i.module_error_inputs_func], ids=lambda i: i.name)
@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_error_inputs(info, backend):
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=False,
                                           training=True)
    assert errors
    for error in errors:
        module_input = error.module_error_input
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        ours = OURS[info.module_cls](*args, backend=backend, **kwargs)
        before = [b.clone() for b in ours.buffers()]
        with pytest.raises(error.error_type, match=error.error_regex):
            ours(*module_input.forward_input.args)
        assert all(torch.equal(a, b) for a, b in zip(before, ours.buffers())), "a rejected call changed the buffers"


@pytest.mark.parametrize("module_class,shape", [(fo.BatchNorm1d, (4, 3)), (fo.BatchNorm2d, (2, 3, 2, 2))])
@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_batch_norm_eps_errors_match_torch(module_class, shape, backend):
    """eps <= 0 in training and eps < 0 in eval: torch's ValueError and message; eps = 0 in eval runs."""
    x = torch.randn(shape)
    for eps, training in ((0.0, True), (-1e-3, True), (-1e-3, False)):
        torch_class = torch.nn.BatchNorm1d if module_class is fo.BatchNorm1d else torch.nn.BatchNorm2d
        with pytest.raises(ValueError) as expected:
            torch_class(3, eps=eps).train(training)(x)
        with pytest.raises(ValueError) as raised:
            module_class(3, eps=eps, backend=backend).train(training)(x)
        assert str(raised.value) == str(expected.value)
        with pytest.raises(ValueError, match=str(expected.value)):
            fo.batch_norm(x, torch.zeros(3), torch.ones(3), training=training, eps=eps, backend=backend)
    torch.testing.assert_close(module_class(3, eps=0.0, backend=backend).eval()(x),
                               torch_class(3, eps=0.0).eval()(x))
