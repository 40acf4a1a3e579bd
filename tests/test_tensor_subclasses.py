"""Norms and clipping on tensors that are not plain dense tensors: never a crash, torch's results.

DTensor (a gloo world of one process, and one two-process test), FakeTensor, FunctionalTensor,
meta tensors and a generic __torch_dispatch__ subclass (TwoTensor) are routed away from the
kernels before any pointer is read; the kernels' own checks reject them too. (torch.func's
batched and wrapped tensors are covered in test_norm_tracing.py.)
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.testing._internal.two_tensor import TwoTensor

import fused_optim as fo

BACKENDS = ["auto", "cpp", "reference"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mesh():
    """A one-process gloo world and its 1-D CPU mesh."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


PLACEMENTS = {"shard0": [Shard(0)], "shard_last": [Shard(-1)], "replicate": [Replicate()]}


@pytest.mark.parametrize("placement", PLACEMENTS, ids=list(PLACEMENTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_on_dtensor(mesh, placement, backend):
    generator = torch.Generator().manual_seed(0)
    x, dy = torch.randn(6, 4, 8, generator=generator), torch.randn(6, 4, 8, generator=generator)
    weight, bias = torch.rand(8, generator=generator) + 0.5, torch.randn(8, generator=generator)
    dx_ = distribute_tensor(x, mesh, PLACEMENTS[placement]).requires_grad_()
    dw = distribute_tensor(weight, mesh, [Replicate()]).requires_grad_()
    db = distribute_tensor(bias, mesh, [Replicate()]).requires_grad_()
    y = fo.layer_norm(dx_, (8,), dw, db, backend=backend)
    assert isinstance(y, DTensor) and y.placements == dx_.placements
    y.backward(distribute_tensor(dy, mesh, PLACEMENTS[placement]))
    plain = [t.clone().requires_grad_() for t in (x, weight, bias)]
    expected = F.layer_norm(plain[0], (8,), plain[1], plain[2])
    expected.backward(dy)
    torch.testing.assert_close(y.full_tensor(), expected.detach())
    for ours, theirs in zip((dx_, dw, db), plain):
        torch.testing.assert_close(ours.grad.full_tensor(), theirs.grad)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_module_on_dtensor(mesh, training, backend):
    """BatchNorm2d whose parameters, buffers and input are DTensors, as torch.distributed makes them."""
    from torch.distributed.tensor import distribute_module

    ours, theirs = fo.BatchNorm2d(3, backend=backend), torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5), ours.bias.normal_(), ours.running_var.uniform_(0.5, 2)
    theirs.load_state_dict(ours.state_dict())
    ours.train(training), theirs.train(training)
    distribute_module(ours, mesh)
    x = torch.randn(4, 3, 5, 2)
    y = ours(distribute_tensor(x, mesh, [Shard(0)]))
    expected = theirs(x)
    assert isinstance(y, DTensor)
    torch.testing.assert_close(y.full_tensor(), expected)
    y.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(ours.weight.grad.full_tensor(), theirs.weight.grad)
    for name, buffer in theirs.named_buffers():
        torch.testing.assert_close(getattr(ours, name).full_tensor(), buffer, msg=name)


def dtensor_parameters(mesh, seed, placements):
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape, placement in zip([(8, 4), (5,), (3, 7)], placements):
        p = torch.nn.Parameter(distribute_tensor(torch.randn(shape, generator=generator), mesh, placement))
        p.grad = distribute_tensor(torch.randn(shape, generator=generator) * 3, mesh, placement)
        params.append(p)
    return params


def clone_grads(params):
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = p.grad.clone()
        out.append(q)
    return out


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 0.5])
@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_grad_norm_on_dtensors(mesh, norm_type, backend):
    params = dtensor_parameters(mesh, 0, [[Shard(0)], [Replicate()], [Shard(1)]])
    expected_params = clone_grads(params)
    total = fo.clip_grad_norm_(params, 1.0, norm_type, backend=backend)
    expected = torch.nn.utils.clip_grad_norm_(expected_params, 1.0, norm_type)
    assert isinstance(total, DTensor) and total.placements == expected.placements
    torch.testing.assert_close(total.full_tensor(), expected.full_tensor())
    for p, q in zip(params, expected_params):
        assert p.grad.placements == q.grad.placements
        torch.testing.assert_close(p.grad.full_tensor(), q.grad.full_tensor())


@pytest.mark.parametrize("backend", BACKENDS)
def test_total_norm_value_clip_and_clip_with_norm_on_dtensors(mesh, backend):
    params = dtensor_parameters(mesh, 1, [[Shard(0)], [Shard(0)], [Replicate()]])
    grads = [p.grad for p in params]
    total = fo.get_total_norm(grads, backend=backend)
    expected = torch.nn.utils.get_total_norm([g.clone() for g in grads])
    torch.testing.assert_close(total.full_tensor(), expected.full_tensor())
    with pytest.raises(RuntimeError, match="non-finite"):
        bad = clone_grads(params)
        bad[0].grad[0, 0] = float("nan")
        fo.clip_grad_norm_(bad, 1.0, error_if_nonfinite=True, backend=backend)
    expected_params = clone_grads(params)
    fo.clip_grads_with_norm_(params, 2.0, total, backend=backend)
    torch.nn.utils.clip_grads_with_norm_(expected_params, 2.0, expected)
    fo.clip_grad_value_(params, 0.5, backend=backend)
    torch.nn.utils.clip_grad_value_(expected_params, 0.5)
    for p, q in zip(params, expected_params):
        assert isinstance(p.grad, DTensor)
        torch.testing.assert_close(p.grad.full_tensor(), q.grad.full_tensor())


def _two_process_clip(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        params = dtensor_parameters(mesh, 3, [[Shard(0)], [Replicate()], [Shard(1)]])
        expected_params = clone_grads(params)
        total = fo.clip_grad_norm_(params, 1.0)
        expected = torch.nn.utils.clip_grad_norm_(expected_params, 1.0)
        norm = fo.get_total_norm([p.grad for p in params], 3.0)
        expected_norm = torch.nn.utils.get_total_norm([p.grad for p in expected_params], 3.0)
        results[rank] = (total.full_tensor(), expected.full_tensor(), norm.full_tensor(), expected_norm.full_tensor(),
                         [p.grad.full_tensor() for p in params], [p.grad.full_tensor() for p in expected_params])
    finally:
        dist.destroy_process_group()


def test_clip_grad_norm_on_dtensors_across_two_processes():
    """Shards on two gloo ranks: the global norm and the clipped gradients are torch's."""
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_two_process_clip, args=(free_port(), results), nprocs=2, join=True)
    for rank in range(2):
        total, expected, norm, expected_norm, grads, expected_grads = results[rank]
        torch.testing.assert_close(total, expected)
        torch.testing.assert_close(norm, expected_norm)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fake_tensors(backend):
    """Shapes, dtypes and strides under FakeTensorMode are torch's; clip returns a fake norm."""
    with FakeTensorMode():
        x = torch.randn(4, 3, 5, 6).contiguous(memory_format=torch.channels_last)
        w, b = torch.ones(6), torch.zeros(6)
        y = fo.layer_norm(x, (6,), w, b, backend=backend)
        assert y.shape == x.shape and y.dtype == x.dtype
        rm, rv = torch.zeros(3), torch.ones(3)
        z = fo.batch_norm(x, rm, rv, torch.ones(3), torch.zeros(3), training=True, backend=backend)
        expected = F.batch_norm(x, torch.zeros(3), torch.ones(3), torch.ones(3), torch.zeros(3), training=True)
        assert z.shape == expected.shape and z.stride() == expected.stride()
        p = torch.nn.Parameter(torch.randn(4, 3))
        p.grad = torch.randn(4, 3)
        total = fo.clip_grad_norm_([p], 1.0, backend=backend)
        fo.clip_grad_value_([p], 1.0, backend=backend)
        assert total.shape == () and total.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_tensors(backend):
    """torch.func.functionalize: results and the running-statistics update are torch's."""
    x = torch.randn(4, 3, 5)

    def ours(x, rm, rv):
        y = fo.batch_norm(x, rm, rv, training=True, backend=backend)
        return fo.layer_norm(y, (5,), backend=backend)

    def theirs(x, rm, rv):
        return F.layer_norm(F.batch_norm(x, rm, rv, training=True), (5,))

    stats, expected_stats = (torch.zeros(3), torch.ones(3)), (torch.zeros(3), torch.ones(3))
    torch.testing.assert_close(torch.func.functionalize(ours)(x, *stats), theirs(x, *expected_stats))
    for a, e in zip(stats, expected_stats):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_meta_tensors(backend):
    """Shapes on meta tensors (the cpp backend rejects them by name: see test_layer_norm.py)."""
    x = torch.empty(4, 3, 5, device="meta")
    assert fo.layer_norm(x, (5,), torch.empty(5, device="meta"), backend=backend).shape == x.shape
    y = fo.batch_norm(x, torch.empty(3, device="meta"), torch.empty(3, device="meta"), training=True,
                      backend=backend)
    assert y.device.type == "meta" and y.shape == x.shape
    p = torch.nn.Parameter(torch.empty(4, device="meta"))
    p.grad = torch.empty(4, device="meta")
    assert fo.clip_grad_norm_([p], 1.0, backend=backend).device.type == "meta"


def test_cpp_backend_rejects_meta_tensors_by_name():
    x = torch.empty(4, 3, 5, device="meta")
    p = torch.nn.Parameter(torch.empty(4, device="meta"))
    p.grad = torch.empty(4, device="meta")
    for call in (lambda: fo.layer_norm(x, (5,), backend="cpp"),
                 lambda: fo.batch_norm(x, None, None, training=True, backend="cpp"),
                 lambda: fo.clip_grad_norm_([p], 1.0, backend="cpp")):
        with pytest.raises(RuntimeError, match="cannot run meta tensors"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_dispatch_subclass(backend):
    """TwoTensor (two tensors computed side by side): each half gets torch's result."""
    a, b = torch.randn(4, 6), torch.randn(4, 6) * 2
    y = fo.layer_norm(TwoTensor(a, b), (6,), backend=backend)
    torch.testing.assert_close(y.a, F.layer_norm(a, (6,)))
    torch.testing.assert_close(y.b, F.layer_norm(b, (6,)))
    z = fo.batch_norm(TwoTensor(a, b), None, None, training=True, backend=backend)
    torch.testing.assert_close(z.b, F.batch_norm(b, None, None, training=True))
    p = torch.nn.Parameter(torch.zeros(4, 6))
    p.grad = TwoTensor(a.clone(), b.clone())
    total = fo.clip_grad_norm_([p], 1.0, backend=backend)
    torch.testing.assert_close(total.b, torch.linalg.vector_norm(b))
    torch.testing.assert_close(p.grad.b, b * (1.0 / (torch.linalg.vector_norm(b) + 1e-6)))


def test_kernels_reject_subclasses_themselves():
    """The C++ entry points check their tensors before reading memory: an error, never a crash."""
    from fused_optim import _cpp

    extension = _cpp.get()
    with FakeTensorMode():
        fake = torch.randn(4, 6)
    two = TwoTensor(torch.randn(4, 6), torch.randn(4, 6))
    for bad in (fake, two):
        with pytest.raises(RuntimeError, match="plain dense CPU"):
            extension.layer_norm_forward(bad, None, None, 1e-5)
        with pytest.raises(RuntimeError, match="plain dense CPU"):
            extension.batch_norm_forward(bad.reshape(4, 6, 1), False, None, None, None, None, True, 0.1, 1e-5)
        assert extension.clip_grad_norm([bad], False, 1.0, 2.0, False) is None
        assert not extension.scale_checked([bad], False, 0.5)
        assert not extension.clamp_checked([bad], False, -1.0, 1.0)
