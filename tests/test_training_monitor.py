"""TrainingMonitor: its norms against torch's, no host sync between syncs, each finding on a
constructed case and none on a healthy digits run, the files it writes."""

import csv
import json
import math

import pytest
import torch
from sklearn.datasets import load_digits

import fused_optim as fo
from fused_optim.training import Thresholds, TrainingMonitor


pytestmark = pytest.mark.usefixtures("one_thread")


def digits():
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


DIGITS = digits()


def digits_run(lr=1e-2, optimizer="adam", epochs=8, n_train=1400, hidden=64, nan_at=None, loss_scale=1.0,
               per_layer=True, **monitor_args):
    """An MLP on digits, monitored; returns the monitor."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    opt = fo.Adam(model.parameters(), lr=lr) if optimizer == "adam" else fo.SGD(model.parameters(), lr=lr)
    monitor = TrainingMonitor(model, opt, per_layer=per_layer, **monitor_args)
    (x, y), (x_val, y_val) = DIGITS
    x, y = x[:n_train], y[:n_train]
    step = 0
    for epoch in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch)).split(128):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch]) * loss_scale
            loss.backward()
            if step == nan_at:
                model[0].weight.grad[3, 5] = math.nan
            monitor.step(loss)
            opt.step()
            step += 1
            total += loss.item() * len(batch)
        with torch.no_grad():
            val_out, train_out = model(x_val), model(x)
            monitor.log_epoch(train_loss=total / len(y),
                              val_loss=torch.nn.functional.cross_entropy(val_out, y_val),
                              train_acc=(train_out.argmax(1) == y).float().mean(),
                              val_acc=(val_out.argmax(1) == y_val).float().mean())
    return monitor


class Net(torch.nn.Module):
    """Awkward shapes: a conv, a 0-dim scale, a Linear without bias, a LayerNorm of ours."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3)
        self.scale = torch.nn.Parameter(torch.tensor(1.5))
        self.norm = fo.LayerNorm(7)
        self.fc = torch.nn.Linear(5 * 5 * 7, 3, bias=False)
        self.frozen = torch.nn.Parameter(torch.ones(4), requires_grad=False)

    def forward(self, x):
        h = self.norm(self.conv(x) * self.scale)
        return self.fc(h.flatten(1))


def run_net(monitor_args, steps=4, attach=False, with_optimizer=True, groups=False):
    torch.manual_seed(1)
    net = Net()
    params = [{"params": [net.conv.weight, net.conv.bias, net.scale]},
              {"params": [*net.norm.parameters(), net.fc.weight], "lr": 0.05}] if groups else net.parameters()
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    monitor = TrainingMonitor(net, opt if with_optimizer else None, **monitor_args)
    if attach:
        monitor.attach()
    expected = []
    for i in range(steps):
        opt.zero_grad()
        net(torch.randn(2, 3, 7, 9)).square().mean().backward()
        trainable = [p for p in net.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in trainable]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in trainable]).item()
        weight_norm = torch.nn.utils.get_total_norm(before).item()
        layers = {}
        for name, m in (("", net), ("conv", net.conv), ("norm", net.norm), ("fc", net.fc)):
            own = [p for p in m.parameters(recurse=False) if p.requires_grad]
            layers[name] = (torch.nn.utils.get_total_norm([p.grad for p in own]).item(),
                            torch.nn.utils.get_total_norm(own).item())
        if not attach:
            monitor.step()
        opt.step()
        update = torch.nn.utils.get_total_norm([p - b for p, b in zip(trainable, before)]).item()
        expected.append((i, grad_norm, weight_norm, update / weight_norm, layers))
    return monitor, expected


@pytest.mark.parametrize("attach", [False, True], ids=["step", "attached"])
def test_norms_equal_torch(backend_device, attach):
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("the model runs on the CPU")
    monitor, expected = run_net({"per_layer": True, "backend": backend}, attach=attach)
    h = monitor.history
    assert h["step"] == [e[0] for e in expected]
    for i, (_, grad_norm, weight_norm, ratio, layers) in enumerate(expected):
        assert h["grad_norm"][i] == pytest.approx(grad_norm, rel=1e-6)
        assert h["weight_norm"][i] == pytest.approx(weight_norm, rel=1e-6)
        assert h["update_ratio"][i] == pytest.approx(ratio, rel=1e-5)
        assert h["lr"][i] == 0.1
        for name, (g, w) in layers.items():
            key = name or "Net"
            assert h[f"grad_norm/{key}"][i] == pytest.approx(g, rel=1e-5), key
            assert h[f"weight_norm/{key}"][i] == pytest.approx(w, rel=1e-5), key
    assert "grad_norm/frozen" not in h and len(h["grad_norm"]) == 4


def test_every_groups_and_no_optimizer():
    monitor, expected = run_net({"every": 3}, steps=7, groups=True)
    h = monitor.history
    assert h["step"] == [0, 3, 6]
    assert h["lr/0"] == [0.1] * 3 and h["lr/1"] == [0.05] * 3 and h["lr"] == [0.1] * 3
    assert h["grad_norm"] == pytest.approx([expected[i][1] for i in (0, 3, 6)], rel=1e-6)
    assert h["update_ratio"] == pytest.approx([expected[i][3] for i in (0, 3, 6)], rel=1e-5)
    # Without an optimizer: the update is measured at the next step(), or when the history is read.
    monitor, expected = run_net({}, steps=3, with_optimizer=False)
    h = monitor.history
    assert h["update_ratio"] == pytest.approx([e[3] for e in expected], rel=1e-5)
    assert all(math.isnan(v) for v in h["lr"])
    monitor, expected = run_net({"update_ratio": False}, steps=3)
    h = monitor.history
    assert monitor._snapshot is None and all(math.isnan(v) for v in h["update_ratio"])
    assert h["grad_norm"] == pytest.approx([e[1] for e in expected], rel=1e-6)


def test_no_host_sync_between_syncs(monkeypatch):
    """Host copies happen only every sync_every recorded steps: count every way a tensor's value
    reaches Python while the monitor runs, with the loss passed as a tensor and per-layer norms."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(576, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, foreach=False)
    monitor = TrainingMonitor(model, opt, sync_every=50, per_layer=True, backend="cpp")
    calls = []
    current = [None]
    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls.append((current[0], _name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    x, y = torch.randn(8, 1, 14, 14), torch.randint(0, 10, (8,))
    for step in range(120):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        current[0] = step
        monitor.step(loss)
        opt.step()
        current[0] = None
    monkeypatch.undo()
    # The 51st and the 101st calls copy the 50 records before them, in one tolist() each.
    assert calls == [(50, "tolist"), (100, "tolist")]
    assert len(monitor.history["grad_norm"]) == 120


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_on_cuda():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).cuda()
    monitor = TrainingMonitor(model, sync_every=1000, per_layer=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 64, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        torch.cuda.set_sync_debug_mode("error")
        try:
            monitor.step(loss)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        opt.step()
    assert len(monitor.history["grad_norm"]) == 20


def kinds(monitor, **overrides):
    return {f.kind for f in monitor.detect_issues(**overrides)}


def test_healthy_digits_run_has_no_findings(tmp_path):
    monitor = digits_run()
    assert monitor.detect_issues() == []
    h = monitor.history
    assert h["val_acc"][-1] > 0.9 and len(h["train_loss"]) == 8 and len(h["grad_norm"]) == 8 * 11
    monitor.plot(tmp_path / "monitor.png")
    assert (tmp_path / "monitor.png").stat().st_size > 10_000


def test_huge_learning_rate_explodes_and_diverges():
    findings = {f.kind: f for f in digits_run(lr=50.0, optimizer="sgd", epochs=2).detect_issues()}
    assert {"exploding_gradients", "loss_diverging"} <= set(findings)
    exploding = findings["exploding_gradients"]
    assert exploding.value > exploding.threshold and exploding.step is not None
    assert "non_finite" not in findings and "overfitting" not in findings


def test_nan_is_non_finite():
    findings = [f for f in digits_run(lr=1e-3, epochs=2, nan_at=15).detect_issues() if f.kind == "non_finite"]
    first = min(findings, key=lambda f: f.step if f.step is not None else math.inf)
    assert first.step == 15 and first.key in ("grad_norm", "grad_norm/0") and math.isnan(first.value)
    assert any(f.epoch == 2 and f.key == "train_loss" for f in findings)


def test_memorizing_model_overfits():
    monitor = digits_run(lr=1e-2, n_train=40, epochs=25, hidden=256)
    finding = next(f for f in monitor.detect_issues() if f.kind == "overfitting")
    assert finding.value > finding.threshold == 0.1 and finding.epoch > 1
    h = monitor.history
    assert h["val_loss"][finding.epoch - 1] > min(h["val_loss"][: finding.epoch - 1])
    assert kinds(monitor, overfitting_rise=1e9) == kinds(monitor) - {"overfitting"}


def test_zero_learning_rate_plateaus():
    monitor = digits_run(lr=0.0, epochs=7)
    assert kinds(monitor) == {"plateau"}
    finding = monitor.detect_issues()[0]
    assert finding.epoch == 6 and finding.value < finding.threshold
    assert kinds(monitor, plateau_patience=7) == set()


def test_tiny_gradients_vanish():
    monitor = digits_run(lr=1e-3, epochs=1, loss_scale=1e-9, per_layer=False)
    assert kinds(monitor) == {"vanishing_gradients"}
    finding = monitor.detect_issues()[0]
    assert finding.step == 0 and finding.value < 1e-7 and finding.count == 11
    monitor.thresholds.vanishing_grad_norm = 1e-12
    assert monitor.detect_issues() == []


def test_files_and_arguments(tmp_path):
    monitor = digits_run(epochs=2, per_layer=False, every=5)
    monitor.to_csv(tmp_path / "h.csv")
    monitor.to_json(tmp_path / "h.json")
    rows = list(csv.DictReader(open(tmp_path / "h.csv")))
    steps = [r for r in rows if r["scope"] == "step"]
    epochs = [r for r in rows if r["scope"] == "epoch"]
    h = monitor.history
    assert [int(r["index"]) for r in steps] == h["step"] == list(range(0, 22, 5))
    assert [float(r["grad_norm"]) for r in steps] == h["grad_norm"]
    assert [float(r["val_acc"]) for r in epochs] == h["val_acc"] and len(epochs) == 2
    data = json.load(open(tmp_path / "h.json"))
    assert data["update_ratio"] == h["update_ratio"] and data["train_loss"] == h["train_loss"]
    with pytest.raises(ValueError, match="every"):
        TrainingMonitor(torch.nn.Linear(2, 2), every=0)
    with pytest.raises(ValueError, match="sync_every"):
        TrainingMonitor(torch.nn.Linear(2, 2), sync_every=1.5)
    with pytest.raises(TypeError, match="Thresholds"):
        TrainingMonitor(torch.nn.Linear(2, 2), thresholds={"exploding_ratio": 3})
    with pytest.raises(RuntimeError, match="optimizer"):
        TrainingMonitor(torch.nn.Linear(2, 2)).attach()
    with pytest.raises(ValueError, match="backend"):
        TrainingMonitor(torch.nn.Linear(2, 2), backend="fast")
    with pytest.raises(TypeError):
        monitor.detect_issues(no_such_threshold=1)
    assert Thresholds().exploding_ratio == 100.0
