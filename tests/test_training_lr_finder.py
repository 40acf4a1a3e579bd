"""fused_optim.training.LRFinder: the sweep, its suggestions, and the exact restoration afterwards."""

import copy
import math
import os
import random
import struct

import numpy as np
import pytest
import torch

import fused_optim as fo
from conftest import HAS_CUDA
from fused_optim.training import LRFinder, LRFinderResult
from fused_optim.training import _digits

pytest.importorskip("sklearn")
CE = torch.nn.functional.cross_entropy


def loader(x, y, batch_size, shuffle=False):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def synthetic_data(n=256, features=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, :classes].argmax(1) + (torch.rand(n, generator=g) < 0.1).long()) % classes
    return x, y


def small_mlp(features=16, classes=4, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(features, 32), torch.nn.Tanh(), torch.nn.Linear(32, classes))


# ----- the suggestions on known curves -------------------------------------------------------

X = np.linspace(-6.0, 0.0, 61)  # log10 of the learning rates, 0.1 apart


def test_minimum_and_valley_on_a_parabola():
    # loss = (x + 1.1)^2 + 0.5: a local quadratic fit reproduces it, so the trend is the curve itself.
    result = LRFinderResult.from_losses(10 ** X, (X + 1.1) ** 2 + 0.5)
    np.testing.assert_allclose(result.trend()[0], (X + 1.1) ** 2 + 0.5, atol=1e-9)
    assert result.suggestion("minimum") == pytest.approx(10 ** -1.1 / 10, rel=1e-9)
    # The fall from 25.0 (at x = -6) to 0.5 (x = -1.1): 25% of the drop is done at (x + 1.1)^2 = 0.75 * 4.9^2,
    # x = -5.34 (the last point above it: -5.4); 75% at (x + 1.1)^2 = 0.25 * 4.9^2, x = -3.55 (the first below: -3.5).
    assert result.suggestion("valley") == pytest.approx(10 ** ((-5.4 - 3.5) / 2), rel=1e-9)
    assert result.suggestion() == result.suggestion("valley")


def test_steepest_on_a_tanh_step():
    # loss = 2 - tanh((x + 3) / 0.4) falls fastest at x = -3; the local slope is symmetric about it.
    result = LRFinderResult.from_losses(10 ** X, 2 - np.tanh((X + 3) / 0.4))
    assert result.suggestion("steepest") == pytest.approx(1e-3, rel=1e-9)
    slopes = result.trend()[1]
    assert slopes.argmin() == 30 and slopes[30] < 0


def test_suggestions_are_floats_and_unknown_method_is_refused():
    result = LRFinderResult.from_losses(10 ** X, (X + 1.1) ** 2 + 0.5)
    suggestions = result.suggestions()
    assert set(suggestions) == {"valley", "steepest", "minimum"}
    assert all(type(v) is float for v in suggestions.values())
    with pytest.raises(ValueError, match="unknown suggestion method 'slide'"):
        result.suggestion("slide")


def test_no_suggestion_without_a_descent_or_with_too_few_points():
    rising = LRFinderResult.from_losses(10 ** X, X + 10)
    with pytest.raises(ValueError, match="did not decrease"):
        rising.suggestion()
    assert rising.suggestions() == {"valley": None, "steepest": None, "minimum": None}
    with pytest.raises(ValueError, match="recorded 3 points"):
        LRFinderResult.from_losses([1e-3, 1e-2, 1e-1], [2.0, 1.0, 3.0]).suggestion()


def test_suggestions_survive_noise():
    """Batch-to-batch noise (5%) on a realistic curve moves no suggestion by more than 2x over 30 draws, and
    the steepest point does better than torch-lr-finder's rule (steepest np.gradient of the EMA-smoothed
    losses, first 10 and last 5 points skipped), whose smoothing lag moves it to larger learning rates."""
    x = np.linspace(-7, 0, 100)
    clean = 0.3 + 2.0 / (1 + np.exp((x + 2) / 0.3)) + np.exp(3 * (x + 0.3))
    base = LRFinderResult.from_losses(10 ** x, clean).suggestions()
    assert 10 ** -2.4 < base["steepest"] < 10 ** -1.6  # the clean curve falls fastest near x = -2
    rng = np.random.default_rng(0)
    ours, ema_rule = [], []
    for _ in range(30):
        result = LRFinderResult.from_losses(10 ** x, clean * (1 + 0.05 * rng.standard_normal(len(x))))
        for method, lr in result.suggestions().items():
            assert 0.5 < lr / base[method] < 2.0, (method, lr, base[method])
        ours.append(abs(math.log10(result.suggestion("steepest")) + 2))
        ema_rule.append(abs(x[10 + np.gradient(np.array(result.losses[10:-5])).argmin()] + 2))
    assert np.mean(ours) < np.mean(ema_rule) / 3, (np.mean(ours), np.mean(ema_rule))


# ----- the sweep -----------------------------------------------------------------------------

def test_digits_suggestion_trains_to_90_percent():
    torch.manual_seed(0)
    train, val = _digits.digits_loaders(batch_size=64)
    model = _digits.mlp()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    finder = LRFinder(model, fo.Adam(model.parameters(), lr=1e-3), CE)
    result = finder.range_test(train, num_iter=50)
    lr = result.suggestion()
    assert 1e-4 < lr < 0.3, result.suggestions()
    assert all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())

    optimizer = fo.Adam(model.parameters(), lr=lr)
    for _ in range(3):
        for x, y in train:
            optimizer.zero_grad()
            CE(model(x), y).backward()
            optimizer.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in val)
    accuracy = correct / len(val.dataset)
    assert accuracy >= 0.9, (accuracy, lr)


def test_exponential_and_linear_schedules_cycle_the_loader():
    x, y = synthetic_data(96)
    for mode, expected in (("exp", 1e-4 * (1e-1 / 1e-4) ** (np.arange(10) / 9)), ("linear", np.linspace(1e-4, 1e-1, 10))):
        model = small_mlp()
        result = LRFinder(model, torch.optim.SGD(model.parameters(), lr=0.1), CE).range_test(
            loader(x, y, 32), start_lr=1e-4, end_lr=1e-1, num_iter=10, step_mode=mode, smooth_f=0.0)
        assert result.stop_reason == "completed" and len(result.lrs) == 10  # 3 batches, cycled
        np.testing.assert_allclose(result.lrs, expected, rtol=1e-12)
        assert result.losses == result.raw_losses  # smooth_f=0: no smoothing
        assert result.to_dict()["lrs"] == result.lrs


def test_smoothing_is_the_documented_average():
    x, y = synthetic_data(96)
    model = small_mlp()
    result = LRFinder(model, torch.optim.SGD(model.parameters(), lr=0.1), CE).range_test(
        loader(x, y, 32), start_lr=1e-3, end_lr=1e-1, num_iter=8, smooth_f=0.3)
    expected = [result.raw_losses[0]]
    for raw in result.raw_losses[1:]:
        expected.append(0.3 * raw + 0.7 * expected[-1])
    assert result.losses == pytest.approx(expected, rel=1e-12)


def test_divergence_stops_the_sweep_early():
    x, y = synthetic_data(128)
    model = small_mlp()
    result = LRFinder(model, torch.optim.SGD(model.parameters(), lr=0.1), CE).range_test(
        loader(x, y, 32), start_lr=1e-2, end_lr=1e6, num_iter=100, smooth_f=0.5)
    assert result.stop_reason in ("diverged", "nonfinite")
    assert len(result.lrs) < 100
    if result.stop_reason == "diverged":
        best = min(result.losses[:-1])
        assert result.losses[-1] > 4.0 * best and all(v <= 4.0 * b for v, b in zip(result.losses[:-1], np.minimum.accumulate(result.losses[:-1])))


def test_nan_loss_stops_cleanly_and_restores():
    x, y = synthetic_data(64)
    model = small_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def criterion(output, target):
        calls.append(1)
        loss = CE(output, target)
        return loss * float("nan") if len(calls) == 6 else loss

    result = LRFinder(model, fo.AdamW(model.parameters(), lr=1e-3), criterion).range_test(
        loader(x, y, 16), start_lr=1e-4, end_lr=1e-2, num_iter=20)
    assert result.stop_reason == "nonfinite" and len(result.lrs) == 5
    assert all(math.isfinite(v) for v in result.raw_losses)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def state_of(model, optimizer):
    """Every tensor the sweep could change, and the RNG streams, as plain values to compare."""
    return {
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "grads": {k: None if v.grad is None else v.grad.clone() for k, v in model.named_parameters()},
        "buffers": {k: v.clone() for k, v in model.named_buffers()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "training": [m.training for m in model.modules()],
    }


def assert_same_state(a, b):
    for part in ("params", "grads", "buffers"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            if a[part][k] is None or b[part][k] is None:
                assert a[part][k] is None and b[part][k] is None, (part, k)
            else:
                assert a[part][k].dtype == b[part][k].dtype and torch.equal(a[part][k], b[part][k]), (part, k)
    sa, sb = a["optimizer"], b["optimizer"]
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for index in sa["state"]:
        assert sa["state"][index].keys() == sb["state"][index].keys()
        for key, value in sa["state"][index].items():
            other = sb["state"][index][key]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (index, key)
    assert a["training"] == b["training"]


@pytest.mark.parametrize("where", ["memory", "cache_dir"])
@pytest.mark.parametrize("make_optimizer", [
    lambda ps: fo.Adam(ps, lr=1e-3, amsgrad=True),
    lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
], ids=["fused-adam", "torch-sgd"])
def test_restoration_is_bit_exact(where, make_optimizer, tmp_path):
    (x, y), _ = _digits.digits_tensors(image=True)

    def trained():
        """A CNN with BatchNorm after two steps: optimizer state, running statistics and gradients to restore."""
        torch.manual_seed(0)
        model = _digits.cnn(channels=4)
        optimizer = make_optimizer(model.parameters())
        for start in (0, 32):
            optimizer.zero_grad()
            CE(model(x[start:start + 32]), y[start:start + 32]).backward()
            optimizer.step()
        model[1].eval()  # a module in eval mode stays in eval mode
        return model, optimizer

    model, optimizer = trained()
    twin, twin_optimizer = trained()
    before = state_of(model, optimizer)
    assert_same_state(state_of(twin, twin_optimizer), before)
    torch.manual_seed(5)
    torch_rng, python_rng, numpy_rng = torch.get_rng_state(), random.getstate(), np.random.get_state()
    cache_dir = str(tmp_path) if where == "cache_dir" else None

    train = loader(x[:128], y[:128], 32, shuffle=True)
    result = LRFinder(model, optimizer, CE, cache_dir=cache_dir).range_test(train, start_lr=1e-4, end_lr=1.0, num_iter=6)

    assert len(result.lrs) >= 2
    assert_same_state(state_of(model, optimizer), before)
    assert torch.equal(torch.get_rng_state(), torch_rng) and random.getstate() == python_rng
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_rng))
    if cache_dir:
        assert os.listdir(cache_dir) == []  # the saved state is deleted after the restore
    # The restored pair goes on exactly as the untouched twin does.
    for pair in ((model, optimizer), (twin, twin_optimizer)):
        pair[1].zero_grad()
        CE(pair[0](x[64:96]), y[64:96]).backward()
        pair[1].step()
    assert_same_state(state_of(model, optimizer), state_of(twin, twin_optimizer))


def test_restored_after_an_error_in_the_middle():
    x, y = synthetic_data(64)
    model = small_mlp()
    optimizer = fo.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = state_of(model, optimizer)
    calls = []

    def criterion(output, target):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom")
        return CE(output, target)

    with pytest.raises(RuntimeError, match="boom"):
        LRFinder(model, optimizer, criterion).range_test(loader(x, y, 16), num_iter=10)
    assert_same_state(state_of(model, optimizer), before)


def test_param_groups_keep_their_ratios():
    x, y = synthetic_data(64)
    model = small_mlp()
    optimizer = fo.Adam([{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[2].parameters(), "lr": 1e-2}])
    seen = []

    def criterion(output, target):
        seen.append([g["lr"] for g in optimizer.param_groups])
        return CE(output, target)

    result = LRFinder(model, optimizer, criterion).range_test(loader(x, y, 16), start_lr=1e-5, end_lr=1e-1, num_iter=9)
    assert len(seen) == len(result.lrs) == 9
    for (first, second), lr in zip(seen, result.lrs):
        assert first == lr and second == pytest.approx(10 * lr, rel=1e-12)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-2]


def test_accumulation_gives_the_unaccumulated_curve():
    x, y = synthetic_data(256)
    curves = []
    for batch_size, steps in ((64, 1), (16, 4)):
        model = small_mlp()
        result = LRFinder(model, fo.SGD(model.parameters(), lr=0.1, momentum=0.9), CE).range_test(
            loader(x, y, batch_size), start_lr=1e-3, end_lr=1.0, num_iter=10, accumulation_steps=steps)
        curves.append(result)
    assert curves[0].lrs == curves[1].lrs
    np.testing.assert_allclose(curves[1].raw_losses, curves[0].raw_losses, rtol=1e-5)
    assert curves[0].raw_losses[-1] != curves[0].raw_losses[0]  # it trained


def test_val_loader_records_the_validation_loss():
    x, y = synthetic_data(128)
    model = small_mlp()
    val = loader(x[96:], y[96:], 16)
    result = LRFinder(model, torch.optim.SGD(model.parameters(), lr=0.1), CE).range_test(
        loader(x[:96], y[:96], 32), start_lr=1e-3, end_lr=1e-2, num_iter=3, val_loader=val)
    # After the last step the parameters are restored, so re-run the first step by hand and compare.
    reference = small_mlp()
    sgd = torch.optim.SGD(reference.parameters(), lr=1e-3)
    xb, yb = x[:32], y[:32]
    CE(reference(xb), yb).backward()
    sgd.step()
    with torch.no_grad():
        expected = CE(reference(x[96:]), y[96:]).item()
    assert result.raw_losses[0] == pytest.approx(expected, rel=1e-5)


def test_bfloat16_autocast_on_cpu():
    x, y = synthetic_data(64)
    model = small_mlp()
    result = LRFinder(model, fo.Adam(model.parameters()), CE).range_test(
        loader(x, y, 16), start_lr=1e-4, end_lr=1e-1, num_iter=6, amp_dtype=torch.bfloat16)
    assert len(result.lrs) == 6 and all(math.isfinite(v) for v in result.raw_losses)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("amp_dtype", [None, torch.float16, torch.bfloat16])
def test_cuda_with_amp(amp_dtype):
    x, y = synthetic_data(128)
    model = small_mlp().cuda()
    optimizer = fo.AdamW(model.parameters())
    before = state_of(model, optimizer)
    result = LRFinder(model, optimizer, CE).range_test(loader(x, y, 32), start_lr=1e-5, end_lr=1.0, num_iter=20,
                                                       amp_dtype=amp_dtype)
    assert len(result.lrs) >= 5 and all(math.isfinite(v) for v in result.raw_losses)
    assert_same_state(state_of(model, optimizer), before)


@pytest.mark.parametrize("kwargs, message", [
    ({"start_lr": 0}, "start_lr must be a positive number"),
    ({"end_lr": 1e-8}, "end_lr must be a number above start_lr"),
    ({"num_iter": 1}, "num_iter must be a whole number of at least 2"),
    ({"step_mode": "cos"}, "step_mode must be one of exp, linear"),
    ({"smooth_f": 1.5}, "smooth_f must be in"),
    ({"diverge_th": 1.0}, "diverge_th must be a number above 1"),
    ({"accumulation_steps": 0}, "accumulation_steps must be a whole number"),
    ({"amp_dtype": torch.float64}, "amp_dtype must be None"),
])
def test_bad_arguments_change_nothing(kwargs, message):
    x, y = synthetic_data(32)
    model = small_mlp()
    optimizer = fo.Adam(model.parameters())
    before = state_of(model, optimizer)
    with pytest.raises(ValueError, match=message):
        LRFinder(model, optimizer, CE).range_test(loader(x, y, 16), **kwargs)
    assert_same_state(state_of(model, optimizer), before)


def test_bad_loaders_and_constructor_arguments():
    model = small_mlp()
    optimizer = fo.Adam(model.parameters())
    finder = LRFinder(model, optimizer, CE)
    with pytest.raises(ValueError, match="train_loader is empty"):
        finder.range_test([])
    with pytest.raises(TypeError, match=r"must yield \(inputs, targets\) pairs"):
        finder.range_test([torch.zeros(2, 16)], num_iter=3)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        LRFinder(model, "adam", CE)
    with pytest.raises(ValueError, match="is not an existing folder"):
        LRFinder(model, optimizer, CE, cache_dir="/nonexistent-folder")


def png_size(path):
    data = open(path, "rb").read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_marks_the_suggestions(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    result = LRFinderResult.from_losses(10 ** X, (X + 1.1) ** 2 + 0.5)
    ax = result.plot(tmp_path / "lr.png")
    width, height = png_size(tmp_path / "lr.png")
    assert 500 < width < 900 and 300 < height < 600
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("valley: ") for label in labels) and any(label.startswith("minimum: ") for label in labels)
    assert ax.get_xscale() == "log"
