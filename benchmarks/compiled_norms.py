"""fwd+bwd time of three small models under torch.compile (default mode) on the CPU: fused_optim's
layers compiled against the eager fused_optim model, torch.nn's layers compiled and eager; all
interleaved in one process, medians of 25 steps after 3 of warm-up.

    PYTHONPATH=. python benchmarks/compiled_norms.py [THREADS]

Also times inductor's compiled ``x <= 0`` against eager (the boolean mask a compiled ReLU saves
for its backward), which decides the Conv-BN-ReLU rows on CPUs where inductor's vectorized
boolean store is slow.
"""
import copy
import statistics
import sys
import time

import torch
import fused_optim as fo
torch.manual_seed(0)
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)

def conv_bn_relu(norm):
    return torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1, bias=False), norm(32), torch.nn.ReLU())

def linear_ln(norm):
    return torch.nn.Sequential(torch.nn.Linear(512, 512), norm(512))

def conv_bn(norm):
    return torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1, bias=False), norm(32))

cases = {"conv-bn-relu": (conv_bn_relu, fo.BatchNorm2d, torch.nn.BatchNorm2d, (16, 32, 28, 28)),
         "conv-bn": (conv_bn, fo.BatchNorm2d, torch.nn.BatchNorm2d, (16, 32, 28, 28)),
         "linear-ln": (linear_ln, fo.LayerNorm, torch.nn.LayerNorm, (4096, 512))}
for name, (make, ours, theirs, shape) in cases.items():
    fo_model = make(ours)
    torch_model = make(theirs)
    torch_model.load_state_dict(fo_model.state_dict())
    models = {"fo eager": fo_model, "fo compiled": torch.compile(copy.deepcopy(fo_model)),
              "torch eager": torch_model, "torch compiled": torch.compile(copy.deepcopy(torch_model))}
    x = torch.randn(shape, requires_grad=True)
    dy = torch.randn(shape[:1] + (32, 28, 28) if name.startswith("conv") else shape)
    steps = {}
    for k, m in models.items():
        params = [x] + list(m.parameters())
        steps[k] = (lambda m=m, params=params: torch.autograd.grad(m(x), params, dy))
    for f in steps.values():
        for _ in range(3):
            f()
    times = {k: [] for k in steps}
    for _ in range(25):
        for k, f in steps.items():
            t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(name, f"threads={threads}", " ".join(f"{k}={v:.2f}ms" for k, v in med.items()))
    print(f"  fo compiled speedup vs fo eager: {med['fo eager'] / med['fo compiled']:.2f}x, "
          f"vs torch compiled: {med['torch compiled'] / med['fo compiled']:.2f}x, "
          f"fo eager vs torch eager: {med['torch eager'] / med['fo eager']:.2f}x")

x = torch.randn(16, 32, 28, 28)
compiled_mask = torch.compile(lambda t: t <= 0)
for _ in range(3):
    compiled_mask(x)
times = {"compiled": [], "eager": []}
for _ in range(25):
    for k, f in (("compiled", compiled_mask), ("eager", lambda t: t <= 0)):
        t = time.perf_counter(); f(x); times[k].append(time.perf_counter() - t)
print(f"x <= 0 on {tuple(x.shape)}: compiled {statistics.median(times['compiled']) * 1e3:.2f} ms, "
      f"eager {statistics.median(times['eager']) * 1e3:.2f} ms")
