"""fused_optim.batch_norm / BatchNorm1d/2d/3d against torch.nn on every backend.

Float32 results are compared with torch's at 1e-5 over several training steps (outputs, input,
weight and bias gradients, running statistics, num_batches_tracked), then in eval. Float16 and
bfloat16 results are compared with torch's float32 computation on the same inputs, cast to the
low precision: every backend computes in float32 and rounds once, so an element may be one unit
in the last place away where the float32 values differ in their last bits (rtol 2**-7 for
bfloat16, 2**-10 for float16), plus an absolute margin for values that cancel to near zero.
"""

import pytest
import torch
import torch.nn.functional as F

import fused_optim as fo
from fused_optim.nn import BatchNorm1d, BatchNorm2d, BatchNorm3d

LOW_PRECISION_RTOL = {torch.bfloat16: 2**-7, torch.float16: 2**-10}
TORCH_CLASS = {BatchNorm1d: torch.nn.BatchNorm1d, BatchNorm2d: torch.nn.BatchNorm2d, BatchNorm3d: torch.nn.BatchNorm3d}


def assert_matches(actual, expected, dtype, what, atol=1e-5):
    """actual (in dtype) against expected float32 values."""
    assert actual.dtype == dtype, what
    actual = actual.detach().cpu()
    if dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=atol, msg=lambda m: f"{what}: {m}")
    else:
        torch.testing.assert_close(actual.float(), expected.to(dtype).float(), rtol=LOW_PRECISION_RTOL[dtype],
                                   atol=10 * atol, msg=lambda m: f"{what}: {m}")


def channel_offsets(shape, generator):
    """Per-channel offsets and scales, so channels differ and a mix-up of channels shows."""
    view = (1, shape[1]) + (1,) * (len(shape) - 2)
    return (torch.randn(shape[1], generator=generator) * 3).reshape(view), (
        torch.rand(shape[1], generator=generator) + 0.5).reshape(view)


def make_input(layout, dtype, device, seed):
    """(x, dy) with x in the named layout; dy contiguous unless x is channels_last."""
    generator = torch.Generator().manual_seed(seed)
    kind, shape = LAYOUTS[layout]
    offset, scale = channel_offsets(shape, generator)
    x = (torch.randn(shape, generator=generator) * scale + offset).to(dtype).to(device)
    dy = torch.randn(shape, generator=generator).to(dtype).to(device)
    if kind in ("channels_last", "channels_last_3d"):
        memory_format = getattr(torch, kind)
        return x.contiguous(memory_format=memory_format), dy.contiguous(memory_format=memory_format)
    if kind == "channels-inner":  # (N, C, L) whose channels are adjacent in memory: a transposed (N, L, C)
        holder = torch.empty(shape[0], shape[2], shape[1], dtype=dtype, device=device).transpose(1, 2)
    elif kind == "sliced":  # every other element of the last dim: no dense layout at all
        holder = torch.empty(shape[:-1] + (2 * shape[-1],), dtype=dtype, device=device)[..., ::2]
    else:
        return x, dy
    holder.copy_(x)
    return holder, dy


LAYOUTS = {
    "1d-NC": ("contiguous", (8, 5)),
    "1d-NCL": ("contiguous", (4, 3, 7)),
    "1d-NCL-channels-inner": ("channels-inner", (4, 3, 7)),
    "2d": ("contiguous", (3, 4, 5, 6)),
    "2d-channels-last": ("channels_last", (3, 4, 5, 6)),
    "2d-1x1": ("contiguous", (6, 5, 1, 1)),
    "2d-sliced": ("sliced", (2, 3, 4, 5)),
    "3d": ("contiguous", (2, 3, 4, 3, 5)),
    "3d-channels-last": ("channels_last_3d", (2, 3, 4, 3, 5)),
}
MODULE_FOR_RANK = {2: BatchNorm1d, 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d}
DTYPES = [pytest.param(d, id=str(d).replace("torch.", "")) for d in (torch.float32, torch.bfloat16, torch.float16)]


def randomize_parameters(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5 + 1)
        if module.running_mean is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def step(module, x, dy):
    """One forward/backward: (output, input grad, parameter grads)."""
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(dy)
    return y.detach(), x.grad, [p.grad for p in module.parameters()]


def compare_step(module, expected_module, x, dy, dtype, what):
    y, dx, grads = step(module, x, dy)
    ey, edx, egrads = step(expected_module, x.detach().cpu().float(), dy.detach().cpu().float())
    assert_matches(y, ey, dtype, f"{what} output")
    assert_matches(dx, edx, dtype, f"{what} input grad")
    # Parameter gradients sum over every value of a channel: allow float32 rounding of such sums.
    values = x.numel() // x.shape[1]
    for g, e, p in zip(grads, egrads, module.parameters()):
        assert_matches(g, e, p.dtype, f"{what} parameter grad", atol=1e-5 * values**0.5)
    return y, dx


def check_module(backend, device, module_class, layout, dtype, steps=3, module_dtype=torch.float32, **kwargs):
    torch_class = TORCH_CLASS[module_class]
    expected = torch_class(LAYOUTS[layout][1][1], **kwargs)
    randomize_parameters(expected, seed=1)
    module = module_class(LAYOUTS[layout][1][1], backend=backend, **kwargs)
    module.load_state_dict(expected.state_dict())
    module.to(device=device, dtype=module_dtype)
    low_precision_state = module_dtype != torch.float32
    if low_precision_state:  # the reference sees the module's rounded parameters
        expected.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()})

    def sync_running_stats():
        # With low-precision state, each step is checked from the same (rounded) running statistics.
        if low_precision_state:
            with torch.no_grad():
                for name in ("running_mean", "running_var"):
                    if getattr(module, name) is not None:
                        getattr(expected, name).copy_(getattr(module, name).float())

    for i in range(steps):
        sync_running_stats()
        x, dy = make_input(layout, dtype, device, seed=10 + i)
        y, dx = compare_step(module, expected, x, dy, dtype, f"training step {i}")
        assert y.shape == x.shape and dx.shape == x.shape
        for name in ("running_mean", "running_var"):
            got, want = getattr(module, name), getattr(expected, name)
            if want is None:
                assert got is None
            else:
                assert got.dtype == module_dtype
                assert_matches(got, want, module_dtype, f"{name} after step {i}")
        if expected.num_batches_tracked is not None:
            assert module.num_batches_tracked.item() == expected.num_batches_tracked.item() == i + 1
    module.eval()
    expected.eval()
    sync_running_stats()
    x, dy = make_input(layout, dtype, device, seed=99)
    compare_step(module, expected, x, dy, dtype, "eval")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_module_matches_torch(backend_device, layout, dtype):
    backend, device = backend_device
    module_class = MODULE_FOR_RANK[len(LAYOUTS[layout][1])]
    check_module(backend, device, module_class, layout, dtype)


OPTIONS = {
    "momentum-none": dict(momentum=None),
    "momentum-0.3": dict(momentum=0.3),
    "no-affine": dict(affine=False),
    "no-bias": dict(bias=False),
    "no-running-stats": dict(track_running_stats=False),
    "eps": dict(eps=0.5),
}


@pytest.mark.parametrize("layout", ["2d", "2d-channels-last"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_options(backend_device, option, layout):
    backend, device = backend_device
    check_module(backend, device, BatchNorm2d, layout, torch.float32, **OPTIONS[option])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_low_precision_module(backend_device, dtype):
    """A module converted to the low precision: parameters, gradients and running stats in it."""
    backend, device = backend_device
    check_module(backend, device, BatchNorm2d, "2d-channels-last", dtype, module_dtype=dtype)


def test_channels_last_stays_channels_last(backend_device):
    backend, device = backend_device
    for layout, memory_format in (("2d-channels-last", torch.channels_last),
                                  ("3d-channels-last", torch.channels_last_3d)):
        x, dy = make_input(layout, torch.float32, device, seed=0)
        module = MODULE_FOR_RANK[x.dim()](x.shape[1], backend=backend).to(device)
        x.requires_grad_()
        y = module(x)
        y.backward(dy)
        assert y.is_contiguous(memory_format=memory_format)
        assert x.grad.is_contiguous(memory_format=memory_format)
        module.eval()
        assert module(x).is_contiguous(memory_format=memory_format)


def test_functional_matches_torch(backend_device):
    backend, device = backend_device
    x, dy = make_input("2d", torch.float32, device, seed=3)
    generator = torch.Generator().manual_seed(4)
    weight, bias = torch.randn(4, generator=generator), torch.randn(4, generator=generator)
    for training in (True, False):
        for stats in (True, False):
            if not training and not stats:
                continue
            running = [torch.randn(4, generator=generator), torch.rand(4, generator=generator) + 0.5]
            ours = [t.clone().to(device) for t in running] if stats else [None, None]
            theirs = [t.clone() for t in running] if stats else [None, None]
            y = fo.batch_norm(x, *ours, weight.to(device), bias.to(device), training, 0.2, 1e-4, backend=backend)
            want = F.batch_norm(x.cpu(), *theirs, weight, bias, training, 0.2, 1e-4)
            assert_matches(y, want, torch.float32, f"training={training} stats={stats}")
            for got, expected in zip(ours, theirs):
                if expected is not None:
                    assert_matches(got, expected, torch.float32, "running statistics")


def test_eval_backward_treats_running_stats_as_constants(backend_device):
    backend, device = backend_device
    x, dy = make_input("2d", torch.float32, device, seed=5)
    mean, var = torch.randn(4), torch.rand(4) + 0.5
    weight = torch.randn(4)
    x.requires_grad_()
    y = fo.batch_norm(x, mean.to(device), var.to(device), weight.to(device), None, False, backend=backend)
    (dx,) = torch.autograd.grad(y, x, dy)
    expected = dy.cpu() * (weight / torch.sqrt(var + 1e-5)).reshape(1, 4, 1, 1)
    assert_matches(dx, expected, torch.float32, "eval input grad")


def test_gradcheck(backend_device):
    """The hand-written backward of each backend against numerical derivatives, in float64."""
    backend, device = backend_device
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 4, generator=generator, dtype=torch.float64).to(device).requires_grad_()
    weight = torch.randn(2, generator=generator, dtype=torch.float64).to(device).requires_grad_()
    bias = torch.randn(2, generator=generator, dtype=torch.float64).to(device).requires_grad_()
    mean = torch.randn(2, dtype=torch.float64, device=device)
    var = torch.rand(2, dtype=torch.float64, device=device) + 0.5
    for training in (True, False):
        def f(a, w, b):
            return fo.batch_norm(a, mean.clone(), var.clone(), w, b, training, 0.1, 1e-5, backend=backend)

        assert torch.autograd.gradcheck(f, (x, weight, bias))
    channels_last = x.detach().unsqueeze(-1).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: fo.batch_norm(a, None, None, None, None, True, backend=backend),
                                    (channels_last,))


def test_empty_batch(backend_device):
    backend, device = backend_device
    module = BatchNorm2d(3, backend=backend).to(device)
    x = torch.randn(0, 3, 4, 4, device=device, requires_grad=True)
    y = module(x)
    y.sum().backward()
    assert y.shape == x.shape
    assert torch.equal(module.running_mean.cpu(), torch.zeros(3))
    assert torch.equal(module.running_var.cpu(), torch.ones(3))
    assert torch.equal(module.weight.grad.cpu(), torch.zeros(3))
    assert module.num_batches_tracked.item() == 1  # as torch: the batch counts, the statistics stay


def test_backward_is_deterministic(backend_device):
    backend, device = backend_device
    x, dy = make_input("2d-channels-last", torch.float32, device, seed=7)
    results = [step(BatchNorm2d(4, backend=backend).to(device), x, dy) for _ in range(2)]
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    for a, b in zip(results[0][2], results[1][2]):
        assert torch.equal(a, b)


def test_module_is_a_drop_in():
    for ours, theirs in ((BatchNorm1d, torch.nn.BatchNorm1d), (BatchNorm2d, torch.nn.BatchNorm2d),
                         (BatchNorm3d, torch.nn.BatchNorm3d)):
        module, reference = ours(7, momentum=None, bias=False), theirs(7, momentum=None, bias=False)
        assert isinstance(module, theirs)
        assert list(module.state_dict()) == list(reference.state_dict())
        assert repr(module) == repr(reference)
        randomize_parameters(reference, seed=8)
        reference.num_batches_tracked.fill_(5)
        module.load_state_dict(reference.state_dict())
        for key, value in reference.state_dict().items():
            assert torch.equal(module.state_dict()[key], value)
        reference.load_state_dict(module.state_dict())
    no_stats = BatchNorm2d(3, affine=False, track_running_stats=False)
    assert no_stats.weight is None and no_stats.running_mean is None and list(no_stats.state_dict()) == []


def test_module_backend_choice(monkeypatch):
    assert BatchNorm2d(4).backend == "auto"
    monkeypatch.setenv("FUSED_OPTIM_BACKEND", "reference")
    assert BatchNorm2d(4).backend == "reference"
    with pytest.raises(ValueError, match="unknown"):
        BatchNorm1d(4, backend="fast")


# ----- errors: torch's exception and message, and nothing changed ----------------------------


def assert_same_error(make_call, ours, theirs, error):
    with pytest.raises(error) as expected:
        make_call(theirs)
    with pytest.raises(error) as actual:
        make_call(ours)
    assert str(actual.value) == str(expected.value)


@pytest.mark.parametrize("module_class,bad_shape", [(BatchNorm1d, (2, 3, 4, 5)), (BatchNorm1d, (3,)),
                                                     (BatchNorm2d, (2, 3, 4)), (BatchNorm3d, (2, 3, 4, 5))])
def test_wrong_rank(module_class, bad_shape):
    ours, theirs = module_class(3), TORCH_CLASS[module_class](3)
    assert_same_error(lambda m: m(torch.randn(bad_shape)), ours, theirs, ValueError)
    assert ours.num_batches_tracked.item() == 0


def test_one_value_per_channel_in_training(backend_device):
    backend, device = backend_device
    module = BatchNorm1d(3, backend=backend).to(device)
    randomize_parameters(module, seed=9)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training, got input size"):
        module(torch.randn(1, 3, device=device))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        BatchNorm2d(3, backend=backend).to(device)(torch.randn(1, 3, 1, 1, device=device))
    # Checked before anything changes (torch counts the rejected batch in num_batches_tracked).
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key
    module.eval()
    assert module(torch.randn(1, 3, device=device)).shape == (1, 3)


def test_functional_errors_match_torch():
    x = torch.randn(4, 3)
    calls = [
        lambda f: f(x, torch.zeros(2), torch.ones(3), training=True),
        lambda f: f(x, torch.zeros(3), torch.ones(5), training=True),
        lambda f: f(x, torch.zeros(3), torch.ones(3), torch.ones(4), training=True),
        lambda f: f(x, None, None, training=False),
    ]
    for call in calls:
        assert_same_error(call, fo.batch_norm, F.batch_norm, RuntimeError)
    running_mean = torch.zeros(3)
    with pytest.raises(RuntimeError):
        fo.batch_norm(x, running_mean, torch.ones(4), training=True)
    assert torch.equal(running_mean, torch.zeros(3))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fo.batch_norm(torch.randn(4), None, None, training=True)
    with pytest.raises(RuntimeError, match="floating-point"):
        fo.batch_norm(torch.ones(4, 3, dtype=torch.int64), None, None, training=True)
    with pytest.raises(RuntimeError, match="cannot run meta tensors"):
        fo.batch_norm(torch.randn(4, 3, device="meta"), None, None, training=True, backend="cpp")


# ----- a model trained with the fused layers ----------------------------------------------------


def digits_model(norm, channels_last):
    """Conv + BatchNorm2d, Linear + BatchNorm1d, Linear + LayerNorm, on 8x8 digit images."""
    torch.manual_seed(0)
    layers = [
        torch.nn.Conv2d(1, 8, 3, padding=1), norm.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(8 * 8 * 8, 64), norm.BatchNorm1d(64), torch.nn.ReLU(),
        torch.nn.Linear(64, 64), norm.LayerNorm(64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
    ]
    model = torch.nn.Sequential(*layers)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def train_and_score(model, images, labels, device, epochs=5):
    split = 1400
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(split, generator=order).split(64):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images[batch].to(device)), labels[batch].to(device))
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = model(images[split:].to(device)).argmax(dim=1).cpu()
    return (predictions == labels[split:]).float().mean().item()


@pytest.mark.parametrize("backend,channels_last", [
    pytest.param("cpp", False, id="cpp-nchw"),
    pytest.param("cpp", True, id="cpp-channels-last"),
    pytest.param("reference", False, id="reference-nchw"),
    pytest.param("triton", True, id="triton-channels-last", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="trains too slowly under TRITON_INTERPRET; runs on CUDA")]),
])
def test_digits_model_trains_like_torch(backend, channels_last, monkeypatch):
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    permutation = torch.randperm(len(digits.target), generator=torch.Generator().manual_seed(2))
    images = (torch.tensor(digits.images, dtype=torch.float32) / 16).unsqueeze(1)[permutation]
    labels = torch.tensor(digits.target)[permutation]
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    device = "cuda" if backend == "triton" else "cpu"
    monkeypatch.setenv("FUSED_OPTIM_BACKEND", backend)
    fused = digits_model(fo, channels_last)
    plain = digits_model(torch.nn, channels_last)
    fused.load_state_dict(plain.state_dict())
    assert any(isinstance(m, fo.BatchNorm2d) and m.backend == backend for m in fused.modules())
    torch_accuracy = train_and_score(plain, images, labels, device)
    fused_accuracy = train_and_score(fused, images, labels, device)
    assert torch_accuracy > 0.93
    # Training from the same start on the same batches: float32 rounding differences only.
    assert abs(fused_accuracy - torch_accuracy) <= 0.02, (fused_accuracy, torch_accuracy)
