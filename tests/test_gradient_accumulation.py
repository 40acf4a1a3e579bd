"""GradientAccumulator: k micro-batches give the parameters of one k times larger batch, in one
process and under DDP (gloo, 2 processes), where only the last micro-batch all-reduces."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

import fused_optim as fo
from fused_optim.training import GradientAccumulator


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(13, 17), torch.nn.Tanh(), torch.nn.Linear(17, 3)).double()


def data(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 13, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def loss_fn(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


def large_batch_reference(batches, max_grad_norm, lr=0.1):
    """One optimizer step per large batch, clipped like the accumulator clips."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for x, y in batches:
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("max_grad_norm", [None, 0.05], ids=["no-clip", "clip"])
@pytest.mark.parametrize("steps", [1, 3])
def test_equals_large_batch(steps, max_grad_norm):
    x, y = data(4 * 6 * steps)
    large = list(zip(x.split(6 * steps), y.split(6 * steps)))
    expected = large_batch_reference(large, max_grad_norm)
    model = make_model()
    opt = fo.SGD(model.parameters(), lr=0.1, momentum=0.9)
    acc = GradientAccumulator(model, opt, steps, max_grad_norm=max_grad_norm)
    stepped = []
    for xb, yb in zip(x.split(6), y.split(6)):
        acc.backward(loss_fn(model, xb, yb))
        stepped.append(acc.step())
    assert stepped == ([False] * (steps - 1) + [True]) * 4
    assert all(p.grad is None for p in model.parameters())
    for p, q in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-12)


def test_scaler_and_errors():
    x, y = data(12)
    expected = large_batch_reference([(x, y)], 0.05)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    acc = GradientAccumulator(model, opt, 2, max_grad_norm=0.05, scaler=scaler)
    acc.backward(loss_fn(model, x[:6], y[:6]))
    assert not acc.step()
    with pytest.raises(RuntimeError, match="call step"):
        acc.micro_batches = 2  # as after a backward without the step() that should follow
        acc.backward(loss_fn(model, x[6:], y[6:]))
    acc.micro_batches = 1
    acc.backward(loss_fn(model, x[6:], y[6:]))
    assert acc.step()
    for p, q in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-12)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            GradientAccumulator(model, opt, bad)
    with pytest.raises(ValueError, match="max_grad_norm"):
        GradientAccumulator(model, opt, 2, max_grad_norm=-1.0)
    with pytest.raises(ValueError, match="backend"):
        GradientAccumulator(model, opt, 2, backend="fast")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORLD, STEPS, MICRO, OPT_STEPS = 2, 3, 4, 2


def _ddp_worker(rank, port, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        x, y = data(WORLD * STEPS * MICRO * OPT_STEPS)
        per_step = WORLD * STEPS * MICRO
        large = [(x[i:i + per_step], y[i:i + per_step]) for i in range(0, len(y), per_step)]
        expected = large_batch_reference(large, 0.05)
        model = torch.nn.parallel.DistributedDataParallel(make_model(seed=rank))  # DDP broadcasts rank 0's
        all_reduces = []

        def counting_hook(state, bucket):
            all_reduces.append(acc.micro_batches)
            return allreduce_hook(None, bucket)

        model.register_comm_hook(None, counting_hook)
        opt = fo.SGD(model.parameters(), lr=0.1, momentum=0.9)
        acc = GradientAccumulator(model, opt, STEPS, max_grad_norm=0.05)
        stepped = []
        for xs, ys in large:
            # This rank's share of the large batch, in STEPS micro-batches.
            mine = slice(rank * STEPS * MICRO, (rank + 1) * STEPS * MICRO)
            for xb, yb in zip(xs[mine].split(MICRO), ys[mine].split(MICRO)):
                acc.backward(loss_fn(model, xb, yb))
                stepped.append(acc.step())
        assert stepped == ([False] * (STEPS - 1) + [True]) * OPT_STEPS
        # Every all-reduce ran in the backward of a step's last micro-batch (one bucket per step here).
        assert all_reduces == [STEPS - 1] * OPT_STEPS, all_reduces
        for p, q in zip(model.module.parameters(), expected):
            torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-12)
        results[rank] = True
    finally:
        dist.destroy_process_group()


def test_equals_large_batch_under_ddp():
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(_free_port(), results), nprocs=WORLD, join=True)
    assert dict(results) == {0: True, 1: True}
