"""RegularizedLoss against the plain PyTorch formula; the dropout variants; torch's Dropout,
AlphaDropout and spectral_norm with fused_optim's layers."""

import math

import pytest
import torch

import fused_optim as fo
from fused_optim.nn import DropConnect, GaussianDropout, ScheduledDropout
from fused_optim.training import RegularizedLoss


pytestmark = pytest.mark.usefixtures("one_thread")


class Model(torch.nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, dtype=dtype)
        self.bn = fo.BatchNorm2d(3, dtype=dtype)
        self.gain = torch.nn.Parameter(torch.tensor(0.7, dtype=dtype))
        self.fc = torch.nn.Linear(3 * 4 * 5, 7, dtype=dtype)

    def forward(self, x):
        return self.fc((self.bn(self.conv(x)) * self.gain).flatten(1))


@pytest.mark.parametrize("l1,l2", [(0.01, 0.0), (0.0, 0.03), (0.02, 0.05)], ids=["l1", "l2", "both"])
def test_regularized_loss_equals_formula(backend_device, l1, l2):
    backend, device = backend_device
    torch.manual_seed(0)
    model = Model().to(device)
    with torch.no_grad():
        model.fc.weight[0, :4] = 0.0  # sign(0) = 0: the subgradient torch's abs() gives
    x, y = torch.randn(4, 2, 6, 7, device=device), torch.randint(0, 7, (4,), device=device)
    criterion = torch.nn.CrossEntropyLoss()
    loss_fn = RegularizedLoss(criterion, model, l1=l1, l2=l2, backend=backend)
    assert loss_fn.names == ["gain", "conv.weight", "fc.weight"]  # biases and the BatchNorm excluded
    loss = loss_fn(model(x), y)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    included = [model.conv.weight, model.gain, model.fc.weight]
    expected = criterion(model(x), y) + sum(l1 * p.abs().sum() + l2 * p.square().sum() for p in included)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_regularized_loss_exclude_and_errors():
    model = Model(torch.float64)
    loss_fn = RegularizedLoss(torch.nn.MSELoss(), model, l2=0.1, exclude=("fc",))
    assert loss_fn.names == ["gain", "conv.weight", "conv.bias", "bn.weight", "bn.bias"]
    torch.testing.assert_close(loss_fn.penalty(), 0.1 * sum(p.square().sum() for p in
                                                             [model.conv.weight, model.conv.bias, model.bn.weight,
                                                              model.bn.bias, model.gain]))
    assert RegularizedLoss(torch.nn.MSELoss(), model).penalty().item() == 0.0
    for bad in ({"l1": -1.0}, {"l2": math.nan}, {"l1": True}):
        with pytest.raises(ValueError):
            RegularizedLoss(torch.nn.MSELoss(), model, **bad)
    with pytest.raises(ValueError, match="backend"):
        RegularizedLoss(torch.nn.MSELoss(), model, l1=1.0, backend="fast")
    with pytest.raises(TypeError, match="exclude"):
        RegularizedLoss(torch.nn.MSELoss(), model, l1=1.0, exclude=("bias", 3))


def test_gaussian_dropout_mean_and_variance():
    torch.manual_seed(0)
    n, p = 400_000, 0.3
    layer = GaussianDropout(p)
    noise = layer(torch.ones(n))
    variance = p / (1 - p)
    # Standard errors: sqrt(var / n) for the mean, var * sqrt(2 / (n - 1)) for the variance (normal noise).
    assert abs(noise.mean().item() - 1) < 5 * math.sqrt(variance / n)
    assert abs(noise.var().item() - variance) < 5 * variance * math.sqrt(2 / (n - 1))
    layer.eval()
    x = torch.randn(5, 3)
    assert layer(x) is x
    assert GaussianDropout(0.0).train()(x) is x
    for bad in (-0.1, 1.0, "0.5"):
        with pytest.raises(ValueError, match="probability"):
            GaussianDropout(bad)


def test_drop_connect():
    torch.manual_seed(0)
    linear = torch.nn.Linear(200, 300)
    layer = DropConnect(linear, p=0.25)
    x = torch.eye(200)  # row i of the output is column i of the (dropped) weight plus the bias
    out = layer(x)
    dropped = (out - linear.bias).T
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(dropped[kept], (linear.weight / 0.75)[kept])
    out.sum().backward()
    torch.testing.assert_close(linear.weight.grad, kept.float() / 0.75 * 1.0)
    assert not torch.equal(layer(x), out)  # a fresh mask each forward
    layer.eval()
    torch.testing.assert_close(layer(x), linear(x))
    conv = DropConnect(torch.nn.Conv2d(3, 4, 3), p=0.5)
    assert conv(torch.randn(2, 3, 5, 5)).shape == (2, 4, 3, 3)
    with pytest.raises(TypeError, match="weight"):
        DropConnect(torch.nn.ReLU())
    with pytest.raises(ValueError, match="probability"):
        DropConnect(linear, p=1.0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_scheduled_dropout(schedule):
    layer = ScheduledDropout(0.5, 0.1, total_steps=4, schedule=schedule)
    ps = [layer.p] + [layer.step() for _ in range(6)]
    if schedule == "linear":
        assert ps == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1])
    else:
        assert ps == pytest.approx([0.1 + 0.4 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)] + [0.1, 0.1])
    assert ps[4:] == [0.1, 0.1, 0.1]  # exactly p_end from total_steps on
    torch.manual_seed(0)
    out = layer.train()(torch.ones(100_000))
    assert abs((out == 0).float().mean().item() - 0.1) < 0.005
    assert out.unique().tolist() == pytest.approx([0.0, 1 / 0.9])
    restored = ScheduledDropout(0.5, 0.1, total_steps=4, schedule=schedule)
    restored.load_state_dict(ScheduledDropout(0.5, 0.1, 4, schedule).state_dict())
    assert restored.p == 0.5
    middle = ScheduledDropout(0.5, 0.1, 4, schedule)
    middle.step(), middle.step()
    restored.load_state_dict(middle.state_dict())
    assert restored.p == middle.p and restored.steps_taken == 2
    for bad in ({"p_start": 1.5}, {"total_steps": 0}, {"schedule": "step"}):
        with pytest.raises(ValueError):
            ScheduledDropout(**{"p_start": 0.5, "p_end": 0.1, "total_steps": 4, **bad})


def test_torch_dropout_and_spectral_norm_with_our_layers():
    """torch's own modules are the ones to use with fused_optim's layers: the same results as
    with torch's layers, under the same random draws."""
    spectral_norm = torch.nn.utils.parametrizations.spectral_norm

    def build(layer_norm, batch_norm):
        torch.manual_seed(0)
        return torch.nn.Sequential(spectral_norm(torch.nn.Linear(9, 16)), batch_norm(16), torch.nn.SELU(),
                                   torch.nn.AlphaDropout(0.2), spectral_norm(layer_norm(16)),
                                   torch.nn.Dropout(0.3), torch.nn.Linear(16, 4))

    ours, theirs = build(fo.LayerNorm, fo.BatchNorm1d), build(torch.nn.LayerNorm, torch.nn.BatchNorm1d)
    x = torch.randn(32, 9)
    for _ in range(2):
        torch.manual_seed(1)
        out = ours(x)
        out.square().sum().backward()
        torch.manual_seed(1)
        ref = theirs(x)
        ref.square().sum().backward()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
