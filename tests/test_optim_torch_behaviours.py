"""torch.optim behaviours beyond the configuration tables: sparse gradients, differentiable steps,
repeated parameters, steps without gradients, tensor subclasses."""

import warnings

import pytest
import torch

import fused_optim as fo

SPARSE = [
    (fo.SGD, torch.optim.SGD, dict(lr=0.1)),
    (fo.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, maximize=True)),
    (fo.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (fo.Adagrad, torch.optim.Adagrad, dict(lr=0.1)),
    (fo.Adagrad, torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2, eps=1e-6,
                                           maximize=True)),
]


def _embedding_pair(seed):
    torch.manual_seed(seed)
    a = torch.nn.Embedding(11, 4, sparse=True)
    dense = torch.nn.Linear(4, 3)
    b = torch.nn.Embedding(11, 4, sparse=True)
    b.load_state_dict(a.state_dict())
    dense_b = torch.nn.Linear(4, 3)
    dense_b.load_state_dict(dense.state_dict())
    return (a, dense), (b, dense_b)


def _loss(modules, step):
    emb, lin = modules
    ids = torch.tensor([[1, 3, 3, 7], [0, 3, 10, 1]]) if step % 2 else torch.tensor([[2, 2, 5, 9]])
    return lin(emb(ids)).pow(2).sum()


@pytest.mark.parametrize("fused_cls, torch_cls, kwargs", SPARSE, ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_sparse_gradients_match_torch(fused_cls, torch_cls, kwargs, backend_device):
    """nn.Embedding(sparse=True) beside a dense layer in one group: the same parameters and state
    as torch.optim after several steps (repeated indices included)."""
    backend, device = backend_device
    ours, theirs = _embedding_pair(0)
    params_a = [p for m in ours for p in m.parameters()]
    params_b = [p for m in theirs for p in m.parameters()]
    if device != "cpu":
        pytest.skip("sparse embedding case runs on the CPU")
    opt_a = fused_cls(params_a, backend=backend, **kwargs)
    opt_b = torch_cls(params_b, foreach=False, **kwargs)
    for step in range(4):
        for opt, modules in ((opt_a, ours), (opt_b, theirs)):
            opt.zero_grad()
            _loss(modules, step).backward()
            opt.step()
    assert params_a[0].grad.is_sparse
    for p, q in zip(params_a, params_b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for key, value in opt_b.state[q].items():
            got = opt_a.state[p][key]
            value = value.to_dense() if value.is_sparse else value
            torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("cls", [fo.SGD, fo.Adagrad])
def test_sparse_with_weight_decay_is_rejected_before_any_change(cls):
    emb = torch.nn.Embedding(5, 2, sparse=True)
    lin = torch.nn.Linear(2, 2)
    opt = cls([{"params": lin.parameters()}, {"params": emb.parameters(), "weight_decay": 0.1}], lr=0.1)
    lin(emb(torch.tensor([1, 2]))).sum().backward()
    before = [p.detach().clone() for p in list(lin.parameters()) + list(emb.parameters())]
    state_before = [{k: v.clone() for k, v in opt.state[p].items()} for p in lin.parameters()]
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    after = [p.detach() for p in list(lin.parameters()) + list(emb.parameters())]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert [set(opt.state[p]) for p in lin.parameters()] == [set(s) for s in state_before]
    assert all(torch.equal(opt.state[p][k], v) for p, s in zip(lin.parameters(), state_before) for k, v in s.items())


@pytest.mark.parametrize("cls", [fo.Adam, fo.AdamW, fo.RMSprop])
def test_sparse_rejected_like_torch(cls):
    emb = torch.nn.Embedding(5, 2, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        cls(emb.parameters()).step()


DIFFERENTIABLE = [
    (fo.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
    (fo.Adam, torch.optim.Adam, dict(lr=0.1, amsgrad=True, weight_decay=0.1)),
    (fo.AdamW, torch.optim.AdamW, dict(lr=0.1)),
    (fo.RMSprop, torch.optim.RMSprop, dict(lr=0.1, momentum=0.5, weight_decay=0.1)),
    (fo.RMSprop, torch.optim.RMSprop, dict(lr=0.1, centered=True)),
    (fo.Adagrad, torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.1)),
]


@pytest.mark.parametrize("fused_cls, torch_cls, kwargs", DIFFERENTIABLE,
                         ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_differentiable_step_matches_torch(fused_cls, torch_cls, kwargs):
    """Gradients flow through the update: d(updated params)/d(initial params, gradient) as torch's."""
    torch.manual_seed(0)
    init = torch.randn(6, dtype=torch.float64, requires_grad=True)
    # torch's centered RMSprop and amsgrad Adam cannot be differentiated through two steps (an
    # in-place write overwrites a tensor the first step's graph saved): one step there
    grads = [torch.randn(6, dtype=torch.float64, requires_grad=True)
             for _ in range(1 if kwargs.get("centered") or kwargs.get("amsgrad") else 2)]

    def run(cls, **extra):
        p = init.clone()
        opt = cls([p], differentiable=True, **kwargs, **extra)
        for g in grads:
            p.grad = g
            opt.step()
        return p

    ours, theirs = run(fused_cls, backend="cpp"), run(torch_cls)
    # torch's differentiable Adam computes its bias corrections from the float32 step tensor, in
    # float32; fused_optim computes them in float64: they differ near float32 precision.
    tolerance = dict(rtol=1e-5, atol=1e-7) if fused_cls in (fo.Adam, fo.AdamW) else {}
    torch.testing.assert_close(ours, theirs, **tolerance)
    weights = torch.linspace(-1, 1, 6, dtype=torch.float64)
    got = torch.autograd.grad((ours * weights).sum(), [init, *grads], allow_unused=True)
    want = torch.autograd.grad((theirs * weights).sum(), [init, *grads], allow_unused=True)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)  # torch's SGD starts its momentum from a detached gradient
        if a is not None:
            torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize("cls", [fo.SGD, fo.Adam, fo.RMSprop, fo.Adagrad])
def test_repeated_parameter_stepped_once_per_occurrence(cls):
    """torch warns and steps a parameter listed twice twice per step (its step count too)."""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))
    a2, b2 = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())
    torch_cls = getattr(torch.optim, cls.__name__)
    kwargs = dict(lr=0.1, momentum=0.9) if cls is fo.SGD else dict(lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ours = cls([a, b, a], **kwargs)
        theirs = torch_cls([a2, b2, a2], foreach=False, **kwargs)
    for step in range(5):
        for p, q in ((a, a2), (b, b2)):
            g = torch.randn(p.shape)
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(a, a2)
    torch.testing.assert_close(b, b2)
    if "step" in theirs.state[a2]:
        assert float(ours.state[a]["step"]) == float(theirs.state[a2]["step"]) == 10.0


@pytest.mark.parametrize("backend", ["cpp", "reference", None])
@pytest.mark.parametrize("cls", [fo.SGD, fo.Adam, fo.AdamW, fo.RMSprop, fo.Adagrad])
def test_step_without_gradients_is_a_noop(cls, backend):
    """Parameters on the meta device (or any device a backend cannot run) without gradients: no error."""
    params = [torch.nn.Parameter(torch.empty(4, 3, device="meta")), torch.nn.Parameter(torch.randn(2))]
    opt = cls([{"params": params[:1]}, {"params": params[1:]}], backend=backend)
    opt.step()
    opt.step()
    assert torch.equal(params[1], params[1])  # untouched and still usable


class _Tagged(torch.Tensor):
    """A trivial tensor subclass: dispatches like a tensor, but is not one to take pointers of."""


@pytest.mark.parametrize("cls", [fo.SGD, fo.Adam, fo.RMSprop, fo.Adagrad])
def test_tensor_subclass_parameters_take_a_correct_path(cls):
    torch.manual_seed(0)
    plain = torch.randn(7)
    p = torch.nn.Parameter(plain.clone().as_subclass(_Tagged))
    q = torch.nn.Parameter(plain.clone())
    torch_cls = getattr(torch.optim, cls.__name__)
    ours, theirs = cls([p], lr=0.1, backend="cpp"), torch_cls([q], lr=0.1, foreach=False)
    for _ in range(3):
        g = torch.randn(7)
        p.grad, q.grad = g.clone().as_subclass(_Tagged), g.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(p.as_subclass(torch.Tensor), q.detach())


def test_compiled_training_step(backend_device):
    """torch.compile of a training step that calls opt.step(): the same parameters as eager, and
    no more graph breaks than the same step with torch.optim."""
    backend, device = backend_device
    if backend == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter is not for compiled code")
    import torch._dynamo as dynamo

    def build(cls, **kwargs):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(device)
        return model, cls(model.parameters(), lr=1e-2, **kwargs)

    def step_fn(model, opt):
        def train_step(x):
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss
        return train_step

    x = torch.randn(4, 8, device=device)
    breaks = {}
    for name, cls, kwargs in (("torch", torch.optim.AdamW, {}), ("fused", fo.AdamW, {"backend": backend})):
        dynamo.reset()
        model, opt = build(cls, **kwargs)
        breaks[name] = dynamo.explain(step_fn(model, opt))(x).graph_break_count
    assert breaks["fused"] <= breaks["torch"]

    dynamo.reset()
    eager_model, eager_opt = build(fo.AdamW, backend=backend)
    compiled_model, compiled_opt = build(fo.AdamW, backend=backend)
    eager, compiled = step_fn(eager_model, eager_opt), torch.compile(step_fn(compiled_model, compiled_opt))
    for _ in range(3):
        torch.testing.assert_close(compiled(x), eager(x))
    for p, q in zip(compiled_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q)


def _count_uploads(monkeypatch):
    import fused_optim.triton.optim as triton_optim

    copies = []
    original = triton_optim.upload

    def counting(table, device):
        copies.append(table.numel())
        return original(table, device)

    monkeypatch.setattr(triton_optim, "upload", counting)
    return copies


@pytest.mark.parametrize("cls, kwargs", [(fo.Adam, dict(amsgrad=True)), (fo.SGD, dict(momentum=0.9)),
                                         (fo.AdamW, dict(max_grad_norm=1.0))], ids=["Adam", "SGD", "AdamW-clip"])
def test_triton_steady_state_copies_nothing_to_the_device(cls, kwargs, monkeypatch):
    """The launch table stays on the device: after the first step, steps with the same gradient
    buffers and hyperparameters copy nothing; a scheduler's new lr rewrites only the header."""
    from conftest import TRITON_DEVICE, require_backend

    require_backend("triton", TRITON_DEVICE)
    copies = _count_uploads(monkeypatch)
    params = [torch.nn.Parameter(torch.randn(n, device=TRITON_DEVICE)) for n in (300, 7)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = cls(params, lr=0.01, backend="triton", **kwargs)
    opt.step()
    first = len(copies)
    for _ in range(3):
        for p in params:
            p.grad.copy_(torch.randn_like(p))  # the same buffers, new values
        opt.step()
    assert len(copies) == first
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    scheduler.step()
    opt.step()
    assert copies[first:] == [8]  # the header's 8 words, nothing else


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls, kwargs", [(fo.Adam, {}), (fo.SGD, dict(momentum=0.9)), (fo.RMSprop, dict(centered=True))],
                         ids=["Adam", "SGD", "RMSprop"])
def test_cuda_graph_capture_of_the_step(cls, kwargs):
    """capturable=True: the step captured with torch.cuda.graph and replayed gives the eager results."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (70000, 4096, 3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    grads = [[torch.randn_like(p) for p in params] for _ in range(4)]
    for p, q, g in zip(params, twins, grads[0]):
        p.grad, q.grad = g.clone(), g.clone()
    opt = cls(params, lr=0.01, capturable=True, **kwargs) if cls is not fo.SGD else cls(params, lr=0.01, **kwargs)
    eager = cls(twins, lr=0.01, **kwargs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up: kernels compiled, state created, tables on the device
            opt.step()
            eager.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for step_grads in grads:
        for p, q, g in zip(params, twins, step_grads):
            p.grad.copy_(g)
            q.grad.copy_(g)
        graph.replay()
        eager.step()
    torch.cuda.synchronize()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q)
