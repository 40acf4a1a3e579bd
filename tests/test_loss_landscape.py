"""loss_landscape and interpolate: the center and the endpoints are the models' own losses,
filter normalization, ignored parameters, evaluation mode, and the model restored bit for bit."""

import pytest
import torch

import fused_optim as fo
from fused_optim.training import interpolate, loss_landscape


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), fo.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))


def loader(n_batches=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 7, 7, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n_batches)]


def trained(seed):
    """A model with its own weights and BatchNorm statistics, left in training mode."""
    model = make_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in loader(seed=seed):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def mean_loss(model, data):
    model.eval()
    with torch.no_grad():
        return sum(torch.nn.functional.cross_entropy(model(x), y).item() for x, y in data) / len(data)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_identical(model, saved):
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_landscape(tmp_path):
    model, data = trained(0), loader()
    saved = snapshot(model)
    checked = []

    def loss_fn(output, target):
        checked.append((torch.is_grad_enabled(), model.training))
        return torch.nn.functional.cross_entropy(output, target)

    land = loss_landscape(model, loss_fn, data, steps=(5, 3), span=(-0.5, 0.5),
                          generator=torch.Generator().manual_seed(3), max_batches=2)
    assert set(checked) == {(False, False)} and len(checked) == 5 * 3 * 2
    assert model.training and all(m.training for m in model.modules())
    assert_identical(model, saved)
    assert land.losses.shape == (5, 3) and land.alphas[2] == 0 and land.betas[1] == 0
    assert land.alphas.tolist() == pytest.approx([-0.5, -0.25, 0, 0.25, 0.5])
    assert land.losses[2, 1].item() == pytest.approx(mean_loss(make_model_like(model, saved), data[:2]), rel=1e-12)
    assert land.losses[0, 0] != land.losses[2, 1]
    params = dict(model.named_parameters())
    for direction in land.directions:
        assert len(direction) == len(params)
        for (name, p), d in zip(params.items(), direction):
            assert d.shape == p.shape
            if name.endswith("bias") or name.startswith("1."):  # ignored: biases and the BatchNorm
                assert torch.count_nonzero(d) == 0, name
            else:
                torch.testing.assert_close(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
    # The same directions again give the same grid; a point off the center is that perturbed model's loss.
    again = loss_landscape(model, torch.nn.functional.cross_entropy, data, directions=land.directions, steps=(5, 3),
                           span=(-0.5, 0.5), max_batches=2)
    assert torch.equal(again.losses, land.losses)
    moved = make_model_like(model, saved)
    with torch.no_grad():
        for p, d1, d2 in zip(moved.parameters(), *land.directions):
            p.add_(d1, alpha=0.25).add_(d2, alpha=-0.5)
    assert land.losses[3, 0].item() == pytest.approx(mean_loss(moved, data[:2]), rel=1e-6)
    land.plot(tmp_path / "contour.png")
    land.plot(tmp_path / "surface.png", kind="surface")
    assert (tmp_path / "contour.png").stat().st_size > 5000 and (tmp_path / "surface.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="kind"):
        land.plot(tmp_path / "x.png", kind="heatmap")


def make_model_like(model, state):
    copy = make_model()
    copy.load_state_dict(state)
    return copy


def test_progress_bar(capsys):
    model, data = trained(0), loader(1)
    loss_landscape(model, torch.nn.functional.cross_entropy, data, steps=(2, 2), progress=True)
    assert "loss landscape" in capsys.readouterr().err
    loss_landscape(model, torch.nn.functional.cross_entropy, data, steps=(2, 2))
    assert "loss landscape" not in capsys.readouterr().err  # short grids: no bar unless asked


def test_layer_and_no_normalization_and_errors():
    model, data = trained(0), loader(1)
    ignore_none = loss_landscape(model, torch.nn.functional.cross_entropy, data, steps=(1, 1), normalize="layer",
                                 ignore=(), generator=torch.Generator().manual_seed(0))
    for p, d in zip(model.parameters(), ignore_none.directions[0]):
        torch.testing.assert_close(d.norm(), p.detach().norm())
    raw = loss_landscape(model, torch.nn.functional.cross_entropy, data, steps=(1, 1), normalize=None,
                         generator=torch.Generator().manual_seed(0))
    assert raw.alphas.tolist() == [-1.0]
    saved = snapshot(model)
    with pytest.raises(ValueError, match="normalize"):
        loss_landscape(model, torch.nn.functional.cross_entropy, data, normalize="global")
    with pytest.raises(ValueError, match="span"):
        loss_landscape(model, torch.nn.functional.cross_entropy, data, span=(1.0, -1.0))
    with pytest.raises(ValueError, match="directions"):
        loss_landscape(model, torch.nn.functional.cross_entropy, data, directions=[raw.directions[0]])

    def failing(output, target):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        loss_landscape(model, failing, data, steps=(3, 3))
    assert_identical(model, saved)
    assert model.training


def test_interpolate(tmp_path):
    a, b, data = trained(0), trained(1), loader()
    saved_a, saved_b = snapshot(a), snapshot(b)
    assert not torch.equal(saved_a["1.running_mean"], saved_b["1.running_mean"])
    line = interpolate(a, b, torch.nn.functional.cross_entropy, data, steps=5)
    assert_identical(a, saved_a)
    assert_identical(b, saved_b)
    assert line.alphas.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert line.losses[0].item() == pytest.approx(mean_loss(make_model_like(a, saved_a), data), rel=1e-12)
    assert line.losses[-1].item() == pytest.approx(mean_loss(make_model_like(b, saved_b), data), rel=1e-12)
    # The midpoint: parameters and BatchNorm statistics both halfway.
    middle = make_model()
    middle.load_state_dict({k: (v + saved_b[k]) / 2 if v.is_floating_point() else v for k, v in saved_a.items()})
    assert line.losses[2].item() == pytest.approx(mean_loss(middle, data), rel=1e-5)
    line.plot(tmp_path / "line.png")
    assert (tmp_path / "line.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="same shapes"):
        interpolate(a, torch.nn.Linear(2, 2), torch.nn.functional.cross_entropy, data)
