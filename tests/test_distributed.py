"""fused_optim under torch.distributed on the CPU: DDP, ZeroRedundancyOptimizer, FSDP2 (gloo, two
processes on 127.0.0.1), each against the same run with torch.optim."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

import distributed_workers as workers

WORLD = 2
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(worker, tmp_path, *args):
    mp.spawn(worker, args=(WORLD, _free_port(), str(tmp_path), *args), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _close(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_ddp_adamw_and_clip_grad_norm(tmp_path):
    for result in _run(workers.ddp, tmp_path):
        (fused, fused_norms), (theirs, their_norms) = result["fused"], result["torch"]
        _close(fused, theirs)
        torch.testing.assert_close(fused_norms, their_norms, rtol=1e-5, atol=1e-6)


def test_zero_redundancy_optimizer_consolidate_and_resume(tmp_path):
    for result in _run(workers.zero, tmp_path):
        _close(result["fused"], result["torch"])
        assert result["fused_consolidated_keys"] == result["torch_consolidated_keys"] == (6, ["exp_avg", "exp_avg_sq",
                                                                                              "step"])


@pytest.mark.parametrize("mode", ["clip", "fused_clip"])
def test_fsdp2_adamw_matches_torch_and_resumes_from_a_checkpoint(tmp_path, mode):
    for result in _run(workers.fsdp2, tmp_path, mode):
        (fused, fused_norms), (theirs, their_norms) = result["fused"], result["torch"]
        _close(fused, theirs)
        if mode == "clip":
            torch.testing.assert_close(fused_norms, their_norms, rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(fused_norms[-1], their_norms[-1], rtol=1e-5, atol=1e-6)
        assert result["fused_state_types"] == result["torch_state_types"] == ["DTensor"]
        expected, resumed = result["resumed"]
        _close(resumed, expected)
