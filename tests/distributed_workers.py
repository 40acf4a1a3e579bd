"""Worker functions of tests/test_distributed.py (spawned processes import them from here).

Each worker joins a gloo process group on 127.0.0.1, runs one scenario with fused_optim and the
same scenario with torch, and writes what it compares to ``out_dir/rank<r>.pt``; the test process
checks the files.
"""

import os
import sys

import torch
import torch.distributed as dist

import fused_optim as fo

STEPS = 5


def _init(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)


def _finish(results, out_dir, rank):
    """Writes this rank's results, waits for every rank, and leaves without interpreter teardown:
    gloo's worker threads can abort a process while it tears down after its work is done
    ("terminate called without an active exception", SIGABRT), which would fail a test whose
    results were all written and correct. A failure before this point still fails the test."""
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4))


def _batch(rank, step):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(6, 8, generator=g), torch.randn(6, 4, generator=g)


def _train(model, opt, rank, clip):
    norms = []
    for step in range(STEPS):
        x, y = _batch(rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if clip is not None:
            norms.append(clip(model.parameters()))
        opt.step()
    return norms


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def ddp(rank, world, port, out_dir):
    """DDP + fo.AdamW + fo.clip_grad_norm_ against DDP + torch.optim.AdamW + torch's clipping."""
    _init(rank, world, port)
    from torch.nn.parallel import DistributedDataParallel as DDP

    results = {}
    for name, opt_cls, clip in (("fused", fo.AdamW, fo.clip_grad_norm_), ("torch", torch.optim.AdamW,
                                                                          torch.nn.utils.clip_grad_norm_)):
        model = DDP(_mlp())
        opt = opt_cls(model.parameters(), lr=1e-2)
        norms = _train(model, opt, rank, lambda ps: clip(ps, 0.5))
        results[name] = ([p.detach().clone() for p in model.parameters()], torch.stack(norms))
    _finish(results, out_dir, rank)


def zero(rank, world, port, out_dir):
    """ZeroRedundancyOptimizer(optimizer_class=fo.AdamW): training, consolidate_state_dict, resume."""
    _init(rank, world, port)
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    results = {}
    for name, opt_cls in (("fused", fo.AdamW), ("torch", torch.optim.AdamW)):
        model = DDP(_mlp())
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=opt_cls, lr=1e-2)
        _train(model, opt, rank, None)
        opt.consolidate_state_dict(to=0)
        state = opt.state_dict() if rank == 0 else None
        # resume: a fresh model and optimizer from the consolidated state, two more steps
        snapshot = [p.detach().clone() for p in model.parameters()]
        objects = [state]
        dist.broadcast_object_list(objects, src=0)
        states = [s for s in objects[0]["state"].values() if s]
        results[name + "_consolidated_keys"] = (len(states), sorted(states[0].keys()))
        model2 = DDP(_mlp())
        with torch.no_grad():
            for p, q in zip(model2.parameters(), snapshot):
                p.copy_(q)
        opt2 = ZeroRedundancyOptimizer(model2.parameters(), optimizer_class=opt_cls, lr=1e-2)
        opt2.load_state_dict(objects[0])
        for step in range(STEPS, STEPS + 2):
            x, y = _batch(rank, step)
            opt2.zero_grad()
            torch.nn.functional.mse_loss(model2(x), y).backward()
            opt2.step()
        results[name] = [p.detach().clone() for p in model2.parameters()]

    _finish(results, out_dir, rank)


def fsdp2(rank, world, port, out_dir, mode):
    """fully_shard of a small MLP: fo.AdamW with fo.clip_grad_norm_ ("clip") or with fused
    max_grad_norm ("fused_clip"), against torch.optim.AdamW + torch's clip_grad_norm_; then a
    torch.distributed.checkpoint save and load of the fused optimizer's state that resumes
    identically."""
    _init(rank, world, port)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    from torch.distributed.fsdp import fully_shard

    def sharded():
        model = _mlp()
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        return model

    results = {}
    for name in ("fused", "torch"):
        model = sharded()
        if name == "torch":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
            clip = lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.5)  # noqa: E731
        elif mode == "clip":
            opt = fo.AdamW(model.parameters(), lr=1e-2)
            clip = lambda ps: fo.clip_grad_norm_(ps, 0.5)  # noqa: E731
        else:
            opt = fo.AdamW(model.parameters(), lr=1e-2, max_grad_norm=0.5)
            clip = None
        norms = _train(model, opt, rank, clip)
        if clip is None:
            norms = [opt.last_grad_norm]  # the last step's, fused
        results[name] = ([_full(p.detach()).clone() for p in model.parameters()],
                         torch.stack([_full(n).reshape(()).float() for n in norms]))
        results[name + "_state_types"] = sorted({type(v).__name__ for s in opt.state.values() for k, v in s.items()
                                                  if k != "step"})
        if name == "fused":
            ckpt = os.path.join(out_dir, "ckpt")
            dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=ckpt)
            expected = _continue(model, opt, rank)
            model2 = sharded()
            with torch.no_grad():
                for p, q in zip(model2.parameters(), results["fused"][0]):
                    p.copy_(torch.distributed.tensor.distribute_tensor(q, p.device_mesh, p.placements))
            opt2 = fo.AdamW(model2.parameters(), lr=1e-2, **({} if mode == "clip" else {"max_grad_norm": 0.5}))
            state = {"optim": get_optimizer_state_dict(model2, opt2)}
            dcp.load(state, checkpoint_id=ckpt)
            set_optimizer_state_dict(model2, opt2, state["optim"])
            results["resumed"] = (expected, _continue(model2, opt2, rank))
    _finish(results, out_dir, rank)


def _continue(model, opt, rank):
    for step in range(STEPS, STEPS + 2):
        x, y = _batch(rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [_full(p.detach()).clone() for p in model.parameters()]
