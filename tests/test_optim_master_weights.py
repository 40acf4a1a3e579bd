"""Training in 16-bit precision without losing updates: master_weights ("fp32", "kahan",
"stochastic") and bfloat16 state (state_dtype), on every optimizer and backend."""

import pytest
import torch

import fused_optim as fo
from fused_optim import _layout
from fused_optim.reference import optim as reference

MASTERS = [None, "fp32", "kahan", "stochastic"]
STATES = [None, torch.bfloat16]
# (class, kwargs): every optimizer, with its options that change the state layout
OPTIMIZERS = [
    ("SGD", fo.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD-plain", fo.SGD, dict(lr=0.05)),
    ("Adam", fo.Adam, dict(lr=0.01, weight_decay=0.05)),
    ("Adam-amsgrad", fo.Adam, dict(lr=0.01, amsgrad=True, maximize=True)),
    ("AdamW", fo.AdamW, dict(lr=0.01)),
    ("RMSprop", fo.RMSprop, dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.01)),
    ("RMSprop-plain", fo.RMSprop, dict(lr=0.01)),
    ("Adagrad", fo.Adagrad, dict(lr=0.05, initial_accumulator_value=0.1, weight_decay=0.01)),
]
BF16_ULP = 2.0**-7
TRITON_CASES = ("SGD", "Adam-amsgrad", "RMSprop", "Adagrad")


def small_params(device, dtype, triton):
    g = torch.Generator().manual_seed(0)
    shapes = [(), (7,), (1023,), (3, 5, 7)] if not triton else [(), (7,), (130,)]
    params = [torch.randn(s, generator=g).to(device, dtype).requires_grad_() for s in shapes]
    params.append(torch.randn(10, 8, generator=g).to(device, dtype).t().detach().requires_grad_())
    return params


def run(params, make, steps, seed=1):
    opt = make(params)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for i, p in enumerate(params):
            p.grad = None if i == 1 and _ % 2 else torch.randn(p.shape, generator=g).to(p.device, p.dtype)
        opt.step()
    return opt


def assert_same(params, expected, opt, reference_opt, exact):
    for p, q in zip(params, expected):
        if exact:
            assert torch.equal(p, q)
        else:
            torch.testing.assert_close(p.float(), q.float(), rtol=BF16_ULP, atol=1e-6)
    for p, q in zip(params, expected):
        state, reference_state = opt.state[p], reference_opt.state[q]
        assert state.keys() == reference_state.keys()
        for key, value in state.items():
            assert value.dtype == reference_state[key].dtype, key
            if exact:
                assert torch.equal(value, reference_state[key]), key
            else:
                tol = BF16_ULP if value.dtype == torch.bfloat16 else 1e-5
                torch.testing.assert_close(value.float(), reference_state[key].float(), rtol=tol, atol=1e-6)


@pytest.mark.parametrize("state_dtype", STATES, ids=str)
@pytest.mark.parametrize("master", MASTERS, ids=str)
@pytest.mark.parametrize("name, cls, kwargs", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_options_match_reference(name, cls, kwargs, master, state_dtype, backend_device):
    """Every option on every optimizer: each backend computes what the reference defines."""
    backend, device = backend_device
    triton = backend == "triton"
    if triton and ((state_dtype is None) != (master is None) or name not in TRITON_CASES):
        pytest.skip("the interpreter runs each option once per optimizer")
    params = small_params(device, torch.bfloat16, triton)
    expected = [p.detach().clone().requires_grad_() for p in params]
    options = dict(kwargs, master_weights=master, state_dtype=state_dtype, seed=123)
    steps = 2 if triton else 5
    opt = run(params, lambda ps: cls(ps, backend=backend, **options), steps)
    reference_opt = run(expected, lambda ps: cls(ps, backend="reference", **options), steps)
    assert_same(params, expected, opt, reference_opt, exact=False)
    keys = set().union(*(s.keys() for s in opt.state.values()))
    assert ("master_param" in keys) == (master == "fp32") and ("kahan_comp" in keys) == (master == "kahan")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_stochastic_rounding_bit_identical(dtype, backend_device):
    """The kernels' stochastic rounding is the reference generator's, bit for bit: SGD's update
    is one multiply-add in float32 on every backend, so every rounded bit must agree (parameter
    and bfloat16 momentum buffer), over steps, tensors and elements, also at float16's subnormals."""
    backend, device = backend_device
    g = torch.Generator().manual_seed(3)
    shapes = [(5000,), (3, 7), ()] if backend != "triton" else [(1500,), (3, 7), ()]
    params = [(torch.randn(s, generator=g) * (1e-5 if i == 1 else 1.0)).to(device, dtype).requires_grad_()
              for i, s in enumerate(shapes)]
    expected = [p.detach().clone().requires_grad_() for p in params]
    options = dict(lr=0.3, momentum=0.9, master_weights="stochastic", state_dtype=torch.bfloat16, seed=2**40 + 7)
    opt = run(params, lambda ps: fo.SGD(ps, backend=backend, **options), 3)
    reference_opt = run(expected, lambda ps: fo.SGD(ps, backend="reference", **options), 3)
    assert_same(params, expected, opt, reference_opt, exact=True)


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("master", [None, "stochastic"], ids=str)
def test_adam_bfloat16_state_bit_identical(master, amsgrad, backend_device):
    """Adam on bfloat16 parameters and state (the C++ loop over pairs of elements): every bit of the
    parameters and state as the reference's, over steps, on odd lengths and odd offsets."""
    backend, device = backend_device
    g = torch.Generator().manual_seed(8)
    sizes = [20_001, 7, 1] if backend != "triton" else [301, 7, 1]
    params = [torch.randn(n + 1, generator=g).to(device, torch.bfloat16)[1:].requires_grad_() for n in sizes]
    expected = [p.detach().clone().requires_grad_() for p in params]
    options = dict(lr=0.01, amsgrad=amsgrad, master_weights=master, state_dtype=torch.bfloat16, seed=9)
    opt = run(params, lambda ps: fo.Adam(ps, backend=backend, **options), 3)
    reference_opt = run(expected, lambda ps: fo.Adam(ps, backend="reference", **options), 3)
    assert_same(params, expected, opt, reference_opt, exact=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_generator_matches_its_definition(dtype):
    """The reference's vectorized hash is _layout's definition, on Python integers: every stream
    (a parameter's, each state's), elements on both sides of 2**32."""
    key = _layout.rounding_step_key(2**63 + 12345, 7)
    elements = [0, 1, 2, 2**31, 2**32 - 1, 2**32 + 5, 2**40 - 1]
    for stream in range(5):
        bits = reference.random_bits(torch.tensor(elements), key, 3, dtype, stream).tolist()
        assert bits == [_layout.rounding_bits(key, 3, e, dtype, stream) for e in elements]
    # the layout: a bfloat16 parameter shares word 0 with state 0; a float16 one has it alone
    assert [_layout.rounding_slot(dtype, s) for s in range(5)] == (
        [(0, 0), (0, 16), (1, 0), (1, 16), (2, 0)] if dtype == torch.bfloat16
        else [(0, 0), (1, 0), (1, 16), (2, 0), (2, 16)])
    assert _layout.rounding_slot(dtype, 4)[0] < _layout.ROUNDING_WORDS


@pytest.mark.parametrize("dtype, start, lr, delta", [
    (torch.bfloat16, 1.0, 1.0, 3 * 2.0**-11),    # 3/16 of an ulp above 1
    (torch.bfloat16, -0.75, 1.0, -2.0**-12),
    (torch.float16, 1.0, 1.0, 5 * 2.0**-14),     # 5/16 of an ulp
    (torch.float16, 0.0, 0.3 * 2.0**-20, 2.0**-4),  # 0.3 of the smallest subnormal
], ids=["bf16", "bf16-negative", "fp16", "fp16-subnormal"])
def test_stochastic_rounding_is_unbiased(dtype, start, lr, delta, backend_device):
    """One SGD step of a tiny update: the mean of the stochastically rounded parameters is the
    exact float32 result within 4 standard errors (plain rounding would not move at all)."""
    backend, device = backend_device
    n = 200_000 if backend != "triton" else 40_000
    p = torch.full((n,), start, dtype=dtype, device=device, requires_grad=True)
    opt = fo.SGD([p], lr=lr, backend=backend, master_weights="stochastic", seed=11)
    p.grad = torch.full_like(p, -delta)
    assert p.grad.float()[0].item() == -delta
    opt.step()
    exact = (torch.tensor(start) + torch.tensor(-lr) * torch.tensor(-delta)).item()  # the float32 update
    values = p.detach().double()
    lo, hi = values.min().item(), values.max().item()
    assert lo <= exact <= hi and hi > lo  # both neighbours occur
    fraction = (exact - lo) / (hi - lo)
    standard_error = (hi - lo) * (fraction * (1 - fraction) / n) ** 0.5
    assert abs(values.mean().item() - exact) < 4 * standard_error


def test_stochastic_rounding_streams_are_independent(backend_device):
    """One Adam step, every element alike: the parameter, exp_avg and exp_avg_sq (bfloat16) each
    round up or down at random, the parameter and exp_avg from the two halves of one random word,
    exp_avg_sq from another; over many elements each pair's directions are independent (the
    fraction rounding both up is the product of the two fractions, within 5 standard errors)."""
    backend, device = backend_device
    n = 200_000 if backend != "triton" else 40_000
    p = torch.ones(n, dtype=torch.bfloat16, device=device, requires_grad=True)
    p.grad = torch.full_like(p, 0.75)
    opt = fo.Adam([p], lr=3 * 2.0**-11, backend=backend, master_weights="stochastic",
                  state_dtype=torch.bfloat16, seed=5)
    opt.step()
    state = opt.state[p]
    up = {}
    for name, values in [("param", p.detach()), ("exp_avg", state["exp_avg"]), ("exp_avg_sq", state["exp_avg_sq"])]:
        values = values.float()
        up[name] = values == values.max()
        assert (values == values.min()).logical_or(up[name]).all()
        assert 0.05 < up[name].double().mean().item() < 0.95, name  # both neighbours occur
    for a, b in [("param", "exp_avg"), ("param", "exp_avg_sq"), ("exp_avg", "exp_avg_sq")]:
        fa, fb = up[a].double().mean().item(), up[b].double().mean().item()
        both = (up[a] & up[b]).double().mean().item()
        standard_error = (fa * fb * (1 - fa * fb) / n) ** 0.5
        assert abs(both - fa * fb) < 5 * standard_error, (a, b, both, fa * fb)


def test_float32_master_weights_follow_the_float32_trajectory(backend_device):
    """master_weights="fp32": the master copy is exactly an fp32 model trained on the same
    gradients (the same optimizer on float32 parameters), and the bfloat16 parameter is its rounding."""
    backend, device = backend_device
    g = torch.Generator().manual_seed(5)
    start = torch.randn(300, generator=g)
    low = start.to(device, torch.bfloat16).requires_grad_()
    wide = low.detach().float().requires_grad_()
    opt = fo.AdamW([low], lr=0.01, weight_decay=0.1, backend=backend, master_weights="fp32")
    wide_opt = fo.AdamW([wide], lr=0.01, weight_decay=0.1, backend=backend)
    for _ in range(6 if backend == "triton" else 20):
        grad = torch.randn(300, generator=g).to(device, torch.bfloat16)
        low.grad, wide.grad = grad, grad.float()
        opt.step()
        wide_opt.step()
    assert torch.equal(opt.state[low]["master_param"], wide.detach())
    assert torch.equal(low.detach(), wide.detach().bfloat16())


def test_kahan_keeps_tiny_updates(backend_device):
    """Many updates each below half a bfloat16 ulp: rounding to nearest never moves the
    parameter; Kahan summation ends within one ulp of the float32 sum."""
    backend, device = backend_device
    steps, update = (30, 2.0**-10) if backend == "triton" else (400, 2.0**-12)
    results = {}
    for master in (None, "kahan"):
        p = torch.ones(64, dtype=torch.bfloat16, device=device, requires_grad=True)
        opt = fo.SGD([p], lr=1.0, backend=backend, master_weights=master)
        for _ in range(steps):
            p.grad = torch.full_like(p, -update)
            opt.step()
        results[master] = p.detach().float()
    exact = 1.0 + steps * update
    assert torch.equal(results[None], torch.ones(64, device=device))
    assert (results["kahan"] - exact).abs().max().item() <= BF16_ULP


def test_bad_options_raise_before_anything_changes():
    p32 = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="torch.float32"):
        fo.Adam([p32], master_weights="kahan")
    with pytest.raises(ValueError, match="torch.float64"):
        fo.SGD([torch.zeros(3, dtype=torch.float64, requires_grad=True)], state_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="master_weights"):
        fo.Adam([torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)], master_weights="fp64")
    with pytest.raises(ValueError, match="state_dtype"):
        fo.Adam([torch.zeros(3, dtype=torch.bfloat16, requires_grad=True)], state_dtype=torch.float16)
    # a float32 group added later, then a step: nothing of the first group is touched
    p16 = torch.ones(3, dtype=torch.bfloat16, requires_grad=True)
    opt = fo.Adam([p16], master_weights="stochastic")
    with pytest.raises(ValueError, match="torch.float32"):
        opt.add_param_group({"params": [p32]})
    opt.param_groups[0]["params"].append(p32)
    p16.grad, p32.grad = torch.ones_like(p16), torch.ones_like(p32)
    with pytest.raises(ValueError, match="torch.float32"):
        opt.step()
    assert torch.equal(p16, torch.ones_like(p16)) and not opt.state


def test_sparse_gradients_with_master_weights_raise_before_anything_changes():
    dense = torch.ones(4, dtype=torch.bfloat16, requires_grad=True)
    table = torch.ones(5, 2, dtype=torch.bfloat16, requires_grad=True)
    opt = fo.SGD([dense, table], lr=0.1, master_weights="kahan")
    dense.grad = torch.ones_like(dense)
    table.grad = torch.sparse_coo_tensor([[1]], torch.ones(1, 2, dtype=torch.bfloat16), (5, 2))
    with pytest.raises(RuntimeError, match="dense gradients only"):
        opt.step()
    assert torch.equal(dense, torch.ones_like(dense)) and torch.equal(table, torch.ones_like(table))


@pytest.mark.parametrize("master", ["fp32", "kahan", "stochastic"])
def test_state_dict_round_trip_and_torch_interchange(master):
    """The extra keys save and load (a resumed run continues bit for bit); torch.optim's state
    loads (master weights from the parameters); strip_state_dict's output loads into torch.optim."""
    g = torch.Generator().manual_seed(9)
    grads = [torch.randn(50, generator=g).bfloat16() for _ in range(6)]
    options = dict(lr=0.01, master_weights=master, state_dtype=torch.bfloat16, seed=4)

    def train(p, opt, gs):
        for grad in gs:
            p.grad = grad.clone()
            opt.step()

    p = torch.linspace(-1, 1, 50).bfloat16().requires_grad_()
    opt = fo.Adam([p], **options)
    train(p, opt, grads)
    q = torch.linspace(-1, 1, 50).bfloat16().requires_grad_()
    first = fo.Adam([q], **options)
    train(q, first, grads[:3])
    saved = first.state_dict()
    resumed = fo.Adam([q], **options)
    resumed.load_state_dict(saved)
    train(q, resumed, grads[3:])
    assert torch.equal(p, q)
    for key, value in opt.state[p].items():
        assert torch.equal(value, resumed.state[q][key]), key

    torch_opt = torch.optim.Adam([q], lr=0.01)
    torch_opt.load_state_dict(fo.strip_state_dict(resumed.state_dict()))
    assert set(torch_opt.state[q]) == {"step", "exp_avg", "exp_avg_sq"}
    assert "master_weights" not in torch_opt.param_groups[0]
    train(q, torch_opt, grads[:1])

    from_torch = fo.Adam([q], **options)
    from_torch.load_state_dict(torch_opt.state_dict())
    assert from_torch.param_groups[0]["master_weights"] == master
    train(q, from_torch, grads[:1])
    state = from_torch.state[q]
    assert state["exp_avg"].dtype == torch.bfloat16
    if master == "fp32":
        assert state["master_param"].dtype == torch.float32
        assert torch.equal(state["master_param"].bfloat16(), q.detach())


def test_state_bytes():
    """Bytes of state per parameter: 8 (fp32 moments), 4 (bf16), +4 with an fp32 master, +2 Kahan."""
    n = 1000
    expected = {(None, None): 8, (None, torch.bfloat16): 4, ("fp32", torch.bfloat16): 8,
                ("kahan", torch.bfloat16): 6, ("stochastic", torch.bfloat16): 4, ("kahan", None): 10}
    for (master, state_dtype), per_param in expected.items():
        p = torch.zeros(n, dtype=torch.bfloat16, requires_grad=True)
        opt = fo.Adam([p], master_weights=master, state_dtype=state_dtype)
        p.grad = torch.ones_like(p)
        opt.step()
        assert opt.state_bytes() == per_param * n + 4  # + the float32 step count


def train_linear_regression(master, dtype=torch.bfloat16, steps=2000, lr=1e-3, backend="cpp"):
    """Adam on a 32-weight linear regression (targets in [0.5, 1), noise 0.25), weights starting at
    zero: per-step updates of about lr = 1e-3 are below half a bfloat16 ulp once a weight passes
    0.5, so rounding to nearest stalls there. Returns the training loss of every step."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=g)
    target = 0.5 + 0.5 * torch.rand(32, generator=g)
    y = x @ target + 0.25 * torch.randn(512, generator=g)
    w = torch.zeros(32, dtype=dtype, requires_grad=True)
    opt = fo.Adam([w], lr=lr, backend=backend, master_weights=master, seed=0)
    losses = []
    for _ in range(steps):
        loss = ((x @ w.float() - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_bfloat16_training_reaches_the_float32_loss():
    """Plain rounding stalls far above the float32 model's loss; fp32 master weights, Kahan
    summation and stochastic rounding end within a few percent of it (benchmarks/results/
    low_precision_training.png plots the curves)."""
    def final(losses):
        return sum(losses[-100:]) / 100

    reference_loss = final(train_linear_regression(None, torch.float32))
    plain = final(train_linear_regression(None))
    assert plain > 3 * reference_loss
    for master in ("fp32", "kahan", "stochastic"):
        assert abs(final(train_linear_regression(master)) / reference_loss - 1) < 0.05, master
