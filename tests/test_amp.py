"""torch.amp.GradScaler drives fused_optim's optimizers through torch's fused-optimizer protocol:
unscale inside the update, inf/NaN steps skipped with parameters and state untouched."""

import copy
import math

import pytest
import torch

import optim_db
from optim_db import config_id, configs_for, info_id, OPTIMIZERS

CASES = configs_for("amp")
INF_STEPS = {2, 5, 6}  # steps whose gradients hold an inf or NaN: skipped, the scale backs off


def model_and_data(device, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(device)
    x = torch.randn(32, 12, device=device)
    y = torch.randn(32, 3, device=device)
    return model, x, y


def train(make_optimizer, device, steps, clip=None, fused_clip=False):
    model, x, y = model_and_data(device)
    opt = make_optimizer(list(model.parameters()))
    scaler = torch.amp.GradScaler(device, init_scale=1024.0, growth_interval=3)
    scales = []
    for step in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if step in INF_STEPS:
            model[0].weight.grad[1, 2] = math.inf if step % 2 else math.nan
        if clip is not None and not fused_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return model, opt, scales


@pytest.mark.parametrize("clip", [None, 0.05], ids=["no-clip", "clip"])
@pytest.mark.parametrize("config", CASES, ids=config_id)
def test_grad_scaler_loop_matches_torch(config, clip, backend_device):
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("the CPU GradScaler drives the CPU backends; CUDA runs in test_amp_cuda")
    kwargs = dict(backend=backend) if clip is None else dict(backend=backend, max_grad_norm=clip)
    model, opt, scales = train(lambda ps: config.fused(ps, **kwargs, **config.kwargs), device, 9, clip, fused_clip=True)
    torch_model, torch_opt, torch_scales = train(lambda ps: config.torch(ps, foreach=False, **config.kwargs), device, 9,
                                                 clip)
    assert scales == torch_scales
    rtol, atol = optim_db.TORCH_TOLERANCE.get(type(opt).__name__, (1e-5, 1e-6))
    for p, q in zip(model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol)
    for p, q in zip(model.parameters(), torch_model.parameters()):
        for key, value in torch_opt.state[q].items():
            torch.testing.assert_close(opt.state[p][key].cpu(), value.cpu(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("config", CASES, ids=config_id)
def test_skipped_step_changes_nothing(config, backend_device):
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("CPU GradScaler")
    model, x, y = model_and_data(device)
    opt = config.fused(list(model.parameters()), backend=backend, max_grad_norm=1.0, **config.kwargs)
    scaler = torch.amp.GradScaler(device, init_scale=256.0)
    for step in range(3):
        opt.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        if step == 2:
            params_before = [p.detach().clone() for p in model.parameters()]
            state_before = copy.deepcopy(opt.state_dict()["state"])
            model[2].bias.grad[0] = math.nan
        scaler.step(opt)
        scaler.update()
    for p, q in zip(model.parameters(), params_before):
        assert torch.equal(p.detach(), q)
    for index, entries in opt.state_dict()["state"].items():
        for key, value in entries.items():
            assert torch.equal(value, state_before[index][key]), (index, key)
    assert scaler.get_scale() == 128.0


@pytest.mark.parametrize("info", OPTIMIZERS, ids=info_id)
def test_skipped_first_step_creates_empty_state(info, backend_device):
    """As torch's fused optimizers: state exists after a skipped first step, at step 0, and the
    next step is the first update (SGD's momentum buffer starts from that step's gradient)."""
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("CPU GradScaler")
    config = info.configs_for("skipped_first_step")[0]
    p = torch.ones(5, requires_grad=True)
    q = torch.ones(5, requires_grad=True)
    opt, torch_opt = config.fused([p], backend=backend, **config.kwargs), config.torch([q], foreach=False,
                                                                                       **config.kwargs)
    scaler, torch_scaler = torch.amp.GradScaler(device, init_scale=8.0), torch.amp.GradScaler(device, init_scale=8.0)
    for step in range(3):
        for param, optimizer, s in ((p, opt, scaler), (q, torch_opt, torch_scaler)):
            s.scale(torch.ones(()))
            param.grad = torch.full((5,), s.get_scale() * (step + 1.0))
            if step == 0:
                param.grad[0] = math.inf
            s.step(optimizer)
            s.update()
        if step == 0:
            assert torch.equal(p.detach(), torch.ones(5))
            assert all(float(v.sum()) == 0.0 for k, v in opt.state[p].items() if k != "momentum_buffer")
    torch.testing.assert_close(p, q)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("config", CASES, ids=config_id)
def test_amp_cuda(config):
    model, opt, scales = train(lambda ps: config.fused(ps, backend="triton", max_grad_norm=0.05, **config.kwargs), "cuda",
                               9, 0.05, True)
    torch_model, _, torch_scales = train(lambda ps: config.torch(ps, foreach=False, **config.kwargs), "cuda", 9, 0.05)
    assert scales == torch_scales
    for p, q in zip(model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
