"""state_dict compatibility with torch.optim both ways, LR schedulers, and the optimizer's own
bookkeeping (pickling, copies, state reset, parameters changing dtype)."""

import copy
import io
import pickle

import pytest
import torch

from optim_db import OPTIMIZERS, assert_same_state, clone_params, config_id, configs_for, make_params, set_grads


def train(opt, param_lists, steps, start):
    for step in range(start, start + steps):
        set_grads(param_lists, step)
        opt.step()


@pytest.mark.parametrize("config", configs_for("round_trip"), ids=config_id)
def test_torch_to_fused_to_torch(config, backend_device):
    """Train with torch, continue with fused_optim from torch's state_dict, hand back to torch:
    the same parameters and state as torch alone."""
    backend, device = backend_device
    params = make_params(device)
    expected = clone_params(params)
    torch_opt = config.torch(config.param_groups(params), foreach=False, **config.kwargs)
    torch_alone = config.torch(config.param_groups(expected), foreach=False, **config.kwargs)
    for step in range(4):
        set_grads([params, expected], step)
        torch_opt.step()
        torch_alone.step()

    fused_opt = config.fused(config.param_groups(params), backend=backend, **config.kwargs)
    fused_opt.load_state_dict(torch_opt.state_dict())
    for step in range(4, 8):
        set_grads([params, expected], step)
        fused_opt.step()
        torch_alone.step()
    assert_same_state(fused_opt, torch_alone, params, expected)

    back = config.torch(config.param_groups(params), foreach=False, **config.kwargs)
    back.load_state_dict(fused_opt.state_dict())
    for step in range(8, 11):
        set_grads([params, expected], step)
        back.step()
        torch_alone.step()
    assert_same_state(back, torch_alone, params, expected)


@pytest.mark.parametrize("config", configs_for("state"), ids=config_id)
def test_saved_file_loads_with_weights_only(config, backend_device):
    """A fused_optim state_dict is plain tensors and numbers: torch.load(weights_only=True) reads
    it, and training resumed from the file continues exactly as without the round trip."""
    backend, device = backend_device
    params = make_params(device)
    opt = config.fused(params, backend=backend, **config.kwargs)
    train(opt, [params], 3, 0)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin = clone_params(params)
    resumed = config.fused(twin, backend=backend, **config.kwargs)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for step in range(3, 5):
        set_grads([params, twin], step)
        opt.step()
        resumed.step()
    assert_same_state(resumed, opt, twin, params, rtol=0, atol=0)


SCHEDULERS = [
    ("StepLR", lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)),
    ("CosineAnnealingLR", lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8, eta_min=1e-4)),
    # cycling momentum needs a momentum or betas: torch raises otherwise (Adagrad)
    ("OneCycleLR", lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=12, cycle_momentum="momentum" in opt.defaults or "betas" in opt.defaults)),
    ("ReduceLROnPlateau", lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)),
]


@pytest.mark.parametrize("make_scheduler", [s[1] for s in SCHEDULERS], ids=[s[0] for s in SCHEDULERS])
@pytest.mark.parametrize("config", configs_for("schedulers"), ids=config_id)
def test_lr_schedulers_drive_fused_as_torch(config, make_scheduler, backend_device):
    backend, device = backend_device
    params = make_params(device)
    expected = clone_params(params)
    fused_opt = config.fused(config.param_groups(params), backend=backend, **config.kwargs)
    torch_opt = config.torch(config.param_groups(expected), foreach=False, **config.kwargs)
    fused_sched, torch_sched = make_scheduler(fused_opt), make_scheduler(torch_opt)
    losses = [1.0, 0.9, 0.95, 0.97, 0.99, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    for step, loss in enumerate(losses):
        set_grads([params, expected], step)
        fused_opt.step()
        torch_opt.step()
        if isinstance(fused_sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            fused_sched.step(loss)
            torch_sched.step(loss)
        else:
            fused_sched.step()
            torch_sched.step()
        assert [g["lr"] for g in fused_opt.param_groups] == [g["lr"] for g in torch_opt.param_groups]
    assert_same_state(fused_opt, torch_opt, params, expected)


@pytest.mark.parametrize("config", configs_for("pickle"), ids=config_id)
def test_pickle_and_deepcopy_keep_backend_and_state(config, backend_device):
    """A deep copy (parameters and state copied) keeps the backend and steps on its own copies."""
    backend, device = backend_device
    params = make_params(device)
    opt = config.fused(params, backend=backend, **config.kwargs)
    train(opt, [params], 2, 0)
    assert pickle.loads(pickle.dumps(opt)).backend == backend
    twin = copy.deepcopy(opt)
    assert twin.backend == backend
    twin_params = twin.param_groups[0]["params"]
    set_grads([params, twin_params], 2)
    opt.step()
    twin.step()
    assert_same_state(twin, opt, twin_params, params, rtol=0, atol=0)


@pytest.mark.parametrize("config", configs_for("state_reset", [i for i in OPTIMIZERS if not i.state_in_constructor]),
                         ids=config_id)
def test_state_reset_starts_over(config, backend_device):
    """Clearing optimizer.state restarts the state (Adam's moments and steps), as in torch."""
    backend, device = backend_device
    params = make_params(device)
    expected = clone_params(params)
    fused_opt = config.fused(params, backend=backend, **config.kwargs)
    torch_opt = config.torch(expected, foreach=False, **config.kwargs)
    for step in range(6):
        if step == 3:
            fused_opt.state.clear()
            torch_opt.state.clear()
        set_grads([params, expected], step)
        fused_opt.step()
        torch_opt.step()
    assert_same_state(fused_opt, torch_opt, params, expected)


@pytest.mark.parametrize("config", configs_for("state"), ids=config_id)
def test_parameters_converted_before_first_step(config, backend_device):
    """model.half() after building the optimizer but before stepping: state follows the new dtype."""
    backend, device = backend_device
    model = torch.nn.Linear(6, 3).to(device)
    opt = config.fused(model.parameters(), backend=backend, **config.kwargs)
    model.to(torch.bfloat16)
    model(torch.randn(4, 6, device=device, dtype=torch.bfloat16)).sum().backward()
    opt.step()
    for p in model.parameters():
        assert p.dtype == torch.bfloat16
        state = {k: v for k, v in opt.state[p].items() if k != "step"}
        assert state and all(v.dtype == torch.float32 for v in state.values())
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("config", configs_for("steps", [i for i in OPTIMIZERS if i.has_steps]), ids=config_id)
def test_state_step_is_a_float32_cpu_tensor_per_parameter(config, backend_device):
    backend, device = backend_device
    params = make_params(device)
    opt = config.fused(params, backend=backend, **config.kwargs)
    train(opt, [params], 5, 0)
    steps = [opt.state[p]["step"] for p in params if p in opt.state]
    for step in steps:
        assert step.dtype == torch.float32 and step.device.type == "cpu" and step.dim() == 0
    # parameter i had no gradient on steps where (step + i) % 4 == 3
    counts = {i: sum((s + i) % 4 != 3 for s in range(5)) for i in range(len(params))}
    for i, p in enumerate(params):
        assert opt.state[p]["step"].item() == counts[i]
