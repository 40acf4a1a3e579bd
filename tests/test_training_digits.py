"""A real training run: an MLP on scikit-learn's bundled digits reaches the same accuracy with
fused_optim as with torch.optim, from the same initialization and batches."""

import pytest
import torch
from sklearn.datasets import load_digits

from optim_db import config_id, configs_for


def digits(device):
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    x, y = x[order].to(device), y[order].to(device)
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def train(make_optimizer, device, epochs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).to(device)
    opt = make_optimizer(model.parameters())
    (x, y), (x_test, y_test) = digits(device)
    g = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        loss = torch.nn.functional.cross_entropy(model(x), y).item()
    return accuracy, loss, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("config", configs_for("training"), ids=config_id)
def test_digits_same_accuracy_as_torch(config, backend_device):
    backend, device = backend_device
    epochs = 3 if backend == "triton" and device == "cpu" else 10  # the interpreter is slow
    accuracy, loss, params = train(lambda ps: config.fused(ps, backend=backend, **config.kwargs), device, epochs)
    torch_accuracy, torch_loss, torch_params = train(lambda ps: config.torch(ps, foreach=False, **config.kwargs), device,
                                                     epochs)
    assert accuracy > 0.85, f"{config.id} did not learn: test accuracy {accuracy:.3f}"
    assert abs(accuracy - torch_accuracy) <= 1 / 397, (accuracy, torch_accuracy)  # at most one test digit apart
    assert loss == pytest.approx(torch_loss, rel=1e-3)
    for p, q in zip(params, torch_params):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
