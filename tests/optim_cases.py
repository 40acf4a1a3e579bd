"""Tables of optimizer configurations and of bad inputs, shared by the optimizer tests.

In the spirit of torch's OptimizerInfo: every configuration is run on every backend against
torch.optim, comparing parameters and every state tensor.
"""

import dataclasses

import torch

import fused_optim as fo
from fused_optim._layout import is_dense


@dataclasses.dataclass
class Config:
    id: str
    fused: type
    torch: type
    kwargs: dict
    # per-group overrides: the parameters are split evenly over len(groups) groups
    groups: tuple = ()

    def param_groups(self, params):
        if not self.groups:
            return params
        size = -(-len(params) // len(self.groups))
        return [dict(params=params[i * size:(i + 1) * size], **overrides) for i, overrides in enumerate(self.groups)]


def _sgd(id, groups=(), **kwargs):
    return Config(f"SGD-{id}", fo.SGD, torch.optim.SGD, {"lr": 0.05, **kwargs}, groups)


def _adam(id, groups=(), **kwargs):
    return Config(f"Adam-{id}", fo.Adam, torch.optim.Adam, {"lr": 0.01, **kwargs}, groups)


def _adamw(id, groups=(), **kwargs):
    return Config(f"AdamW-{id}", fo.AdamW, torch.optim.AdamW, {"lr": 0.01, **kwargs}, groups)


CONFIGS = [
    _sgd("plain"),
    _sgd("momentum", momentum=0.9),
    _sgd("dampening", momentum=0.9, dampening=0.3),
    _sgd("nesterov", momentum=0.8, nesterov=True),
    _sgd("weight_decay", momentum=0.9, weight_decay=0.05),
    _sgd("maximize", momentum=0.5, weight_decay=0.01, maximize=True),
    _sgd("nesterov_wd_maximize", momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
    _sgd("groups", momentum=0.9, groups=({}, {"lr": 0.1, "momentum": 0.0}, {"weight_decay": 0.2, "nesterov": True})),
    _adam("default"),
    _adam("weight_decay", weight_decay=0.1),
    _adam("amsgrad", amsgrad=True),
    _adam("maximize", maximize=True),
    _adam("amsgrad_wd_maximize", amsgrad=True, weight_decay=0.05, maximize=True),
    _adam("betas", betas=(0.5, 0.9), eps=1e-6),
    _adam("small_beta1", betas=(0.3, 0.99)),
    _adam("decoupled", weight_decay=0.1, decoupled_weight_decay=True),
    _adam("tensor_lr", lr=torch.tensor(0.02)),
    _adam("groups", groups=({}, {"lr": 0.05, "amsgrad": True}, {"weight_decay": 0.1, "betas": (0.8, 0.95)})),
    _adamw("default"),
    _adamw("no_decay", weight_decay=0.0),
    _adamw("amsgrad", amsgrad=True, weight_decay=0.1),
    _adamw("maximize", maximize=True),
    _adamw("groups", groups=({"weight_decay": 0.0}, {"lr": 0.003, "weight_decay": 0.3}, {"amsgrad": True})),
]


def make_params(device, dtype=torch.float32, seed=0):
    """Parameters of awkward shapes and layouts: 0-dim, 1, 7, 1023, 4097, 3-D, empty,
    transposed (dense, non-contiguous), strided (not dense), and enough elements in all (over
    16K) that the C++ backend splits the step across threads, at a boundary inside a tensor."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    tensors = [
        rand(()),
        rand(1),
        rand(7),
        rand(1023),
        rand(4097),
        rand(3, 5, 7),
        rand(0),
        rand(10, 8).t(),  # dense, transposed
        rand(6, 10)[:, ::2],  # not dense
        rand(2, 0, 3),
        rand(33, 31),
        rand(20011),
    ]
    return [t.to(device).detach().requires_grad_() for t in tensors]


def clone_params(params):
    """Copies with the same values and strides, as fresh leaves."""
    out = []
    for p in params:
        if is_dense(p):
            q = torch.empty_strided(p.size(), p.stride(), dtype=p.dtype, device=p.device)
        else:  # the strided parameter: the same kind of view into a wider buffer
            q = torch.empty(p.shape[0], p.shape[1] * 2, dtype=p.dtype, device=p.device)[:, ::2]
        q.copy_(p.detach())
        out.append(q.detach().requires_grad_())
    return out


def set_grads(param_lists, step, seed=1):
    """The same gradients on every list of parameters; some are None (a different set each step),
    some are laid out differently from their parameter."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    for i, p in enumerate(param_lists[0]):
        none = (step + i) % 4 == 3
        if none:
            values = None
        elif p.dim() == 2 and i % 2 == 0:
            values = torch.randn(p.shape[1], p.shape[0], generator=g, dtype=torch.float64).t()  # transposed grad
        else:
            values = torch.randn(p.shape, generator=g, dtype=torch.float64)
        for params in param_lists:
            q = params[i]
            if values is None:
                q.grad = None
            else:
                grad = torch.empty_strided(values.size(), values.stride(), dtype=q.dtype, device=q.device)
                grad.copy_(values)
                q.grad = grad


def assert_same_state(fused_opt, torch_opt, fused_params, torch_params, rtol=1e-5, atol=1e-6):
    """Parameters and EVERY state tensor agree, with the same state keys."""
    for i, (p, q) in enumerate(zip(fused_params, torch_params)):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=rtol, atol=atol, msg=lambda m: f"param {i}: {m}")
    fused_state = fused_opt.state_dict()["state"]
    torch_state = torch_opt.state_dict()["state"]
    assert fused_state.keys() == torch_state.keys(), "parameters with state differ"
    for index, expected in torch_state.items():
        actual = fused_state[index]
        assert actual.keys() == expected.keys(), f"state keys of param {index}: {actual.keys()} vs {expected.keys()}"
        for key, value in expected.items():
            got = actual[key]
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(got.to(value.device), value.to(got.dtype), rtol=rtol, atol=atol,
                                           msg=lambda m: f"state[{index}][{key!r}]: {m}")
            else:
                assert got == value
