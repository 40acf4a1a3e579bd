"""The table of ops that ``fused-optim bench`` times and ``fused-optim check`` verifies.

Each entry of ``OPS`` says how to make an op's inputs from a workload's shapes, the bytes a step
must move, which providers run it (fused_optim per backend, torch's implementations), how to
check each fused_optim backend against the reference, and the targets read off a bench run (the
project's goals, per device type). The optimizers are defined here, clipping in clip_ops, the
normalization layers in norm_ops; a new op is one more entry.
"""

import dataclasses
import functools

import torch

from .. import _backend
from .. import optim as fo_optim
from ..reference.optim import state_dtype
from . import traffic
from .clip_ops import CLIP_OP
from .norm_ops import NORM_OPS
from .core import (FAST_BACKENDS, TOLERANCES, CheckResult, Op, ParamsAndGrads, Provider, Target,  # noqa: F401
                   compare, fused_reason)

# ----- providers -----------------------------------------------------------------------------

TORCH_MODES = {"torch for-loop": dict(foreach=False), "torch foreach": dict(foreach=True), "torch fused": dict(fused=True)}


@functools.lru_cache(maxsize=None)
def _torch_reason(torch_class, mode, device, dtype):
    """Why torch's ``mode`` of ``torch_class`` cannot step ``dtype`` tensors on ``device``, or None.

    Asked of torch itself, on one small tensor: support differs between versions and devices.
    """
    p = torch.zeros(2, device=device, dtype=dtype, requires_grad=True)
    p.grad = torch.ones_like(p)
    try:
        torch_class([p], **TORCH_MODES[mode]).step()
    except Exception as error:  # any refusal (RuntimeError, ValueError) means: not available here
        return f"torch {torch.__version__}: {str(error).strip().splitlines()[0]}"
    return None


def optimizer_providers(fo_class, torch_class, config, device, dtype):
    device = torch.device(device)

    def fused(backend):
        return lambda inputs: fo_class(inputs.clone(), backend=backend, **config).step

    def torch_mode(mode):
        return lambda inputs: torch_class(inputs.clone(), **TORCH_MODES[mode], **config).step

    providers = [Provider(f"fused_optim {b}", "fused_optim", fused(b), fused_reason(b, device.type)) for b in FAST_BACKENDS]
    providers += [
        Provider(mode, "torch", torch_mode(mode), _torch_reason(torch_class, mode, str(device), dtype)) for mode in TORCH_MODES
    ]
    providers.append(Provider("reference", "fused_optim", fused("reference"), None, slow=True))
    return providers


# ----- check ---------------------------------------------------------------------------------

#: awkward shapes: 0-dim, single element, odd sizes around the kernels' block sizes, 3-D, empty;
#: one parameter gets no gradient (every step skips it)
CHECK_SHAPES = [(), (1,), (7,), (1023,), (4097,), (3, 5, 7), (0,), (5,)]
CHECK_STEPS = 3
#: checked separately, so a failure of strided tensors does not hide the result of the others
LAYOUTS = ("contiguous", "non-contiguous")


def _check_params(device, dtype, seed, layout):
    """Random parameters and CHECK_STEPS sets of gradients: awkward shapes, or transposed ones."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)

    if layout == "contiguous":
        params = [rand(*s) for s in CHECK_SHAPES]
        grads = [[rand(*p.shape) if i < len(params) - 1 else None for i, p in enumerate(params)] for _ in range(CHECK_STEPS)]
    else:
        params = [rand(33, 17).t(), rand(4, 6, 5).transpose(0, 2)]
        grads = [[rand(*reversed(p.shape)).t() if p.dim() == 2 else rand(4, 6, 5).transpose(0, 2) for p in params]
                 for _ in range(CHECK_STEPS)]
    return params, grads


def _run_steps(make_optimizer, params, grads):
    params = [p.clone().requires_grad_(True) for p in params]  # clone() keeps the strides
    optimizer = make_optimizer(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else g.clone()
        optimizer.step()
    tensors = {}
    for index, p in enumerate(params):
        tensors[f"param {index}"] = p.detach()
        for key, value in optimizer.state.get(p, {}).items():
            if key != "step" and isinstance(value, torch.Tensor):
                tensors[f"param {index} {key}"] = value
    return tensors


def check_optimizer(name, fo_class, torch_class, configs, device, dtype, with_torch=True):
    """Every fused_optim backend that runs on ``device`` (and torch.optim, for float32/float64)
    against the reference, over ``configs`` after CHECK_STEPS steps with fresh random gradients."""
    device = torch.device(device)
    dtype_name = str(dtype).replace("torch.", "")
    rows = []
    candidates = []
    for backend in FAST_BACKENDS:
        reason = _backend.unavailable_reason(backend, device.type)
        candidates.append((backend, reason, lambda ps, config, b=backend: fo_class(ps, backend=b, **config)))
    if with_torch:
        torch_reason = None if dtype in (torch.float32, torch.float64) else "torch.optim keeps 16-bit state for 16-bit params; compared in float32 and float64 only"
        candidates.append(("torch.optim", torch_reason, lambda ps, config: torch_class(ps, foreach=False, **config)))
    for label, reason, make in candidates:
        if reason is not None:
            rows.append(CheckResult(name, label, dtype_name, str(device), None, reason=reason))
            continue
        max_abs, max_ratio, problems, runs = 0.0, 0.0, [], 0
        for index, config in enumerate(configs):
            for layout in LAYOUTS:
                params, grads = _check_params(device, dtype, index, layout)
                expected = _run_steps(lambda ps: fo_class(ps, backend="reference", **config), params, grads)
                runs += 1
                try:
                    result = _run_steps(lambda ps: make(ps, config), params, grads)
                except Exception as error:  # a crash is a failed check, reported with the others
                    problems.append(f"{layout} {config}: {type(error).__name__}: {error}")
                    continue
                case_abs, case_ratio, problem = compare(result, expected, dtype)
                max_abs, max_ratio = max(max_abs, case_abs), max(max_ratio, case_ratio)
                if problem or case_ratio > 1.0:
                    problems.append(f"{layout} {config}: {problem or 'outside tolerance'}")
        detail = None
        if problems:
            detail = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        rows.append(CheckResult(name, label, dtype_name, str(device), not problems, max_abs, max_ratio, runs, detail))
    return rows


# ----- the table -----------------------------------------------------------------------------

OPTIMIZER_WORKLOADS = ("large", "small", "resnet50", "gpt2", "1b", "mixed", "tiny")

#: on CUDA, fused_optim's triton step against torch's fastest on real models' parameter lists
STEP_TARGETS = (
    Target("gpt2", "fused_optim triton", "speedup_vs", 1.2, against="torch fused"),
    Target("resnet50", "fused_optim triton", "speedup_vs", 1.2, against="torch fused"),
)
#: Adam/AdamW over 1B float32 parameters: near the memory system's limit
BANDWIDTH_TARGETS = (Target("1b", "fused_optim triton", "pct_of_copy", 90.0),)


def cpu_step_targets(large, against="torch fused"):
    """On the CPU, fused_optim's C++ step against torch's fused (``against`` None: torch's fastest
    provider): ``large`` on one big tensor, 4x on weights and biases, 5x on a thousand small tensors."""
    metric = "speedup_vs" if against else "speedup_vs_torch_best"
    return tuple(Target(w, "fused_optim cpp", metric, x, against=against, device_type="cpu")
                 for w, x in (("large", large), ("mixed", 4.0), ("tiny", 5.0)))


def state_tensors(torch_class, config):
    """The state tensors per parameter that a step of ``torch_class`` with ``config`` reads and
    writes: the optimizers' byte model (see traffic.optimizer_step)."""
    name = torch_class.__name__
    if name == "SGD":
        return 1 if config.get("momentum") else 0
    if name in ("Adam", "AdamW"):
        return 3 if config.get("amsgrad") else 2
    if name == "RMSprop":  # square_avg, momentum_buffer, grad_avg
        return 1 + bool(config.get("momentum")) + bool(config.get("centered"))
    if name == "Adagrad":  # sum
        return 1
    raise ValueError(f"no byte model for {name}")


def optimizer_op(name, summary, fo_class, torch_class, config, check_configs, targets):
    n_state = state_tensors(torch_class, config)

    def memory_per_element(dtype):
        param = traffic.element_size(dtype)
        return 2 * param + n_state * traffic.element_size(state_dtype(dtype))

    return Op(
        name=name,
        summary=summary,
        workloads=OPTIMIZER_WORKLOADS,
        config=dict(config),
        make_inputs=ParamsAndGrads,
        bytes_per_element=lambda dtype: traffic.optimizer_step(dtype, n_state),
        memory_per_element=memory_per_element,
        providers=functools.partial(optimizer_providers, fo_class, torch_class, config),
        check=functools.partial(check_optimizer, name, fo_class, torch_class, check_configs),
        targets=tuple(targets),
    )


def adam_clip_providers(device, dtype):
    """Adam with clipping: fused_optim's max_grad_norm step against clip_grad_norm_ + torch's step."""
    providers = optimizer_providers(fo_optim.Adam, torch.optim.Adam, dict(ADAM_CLIP_CONFIG), device, dtype)
    renamed = []
    for p in providers:
        if p.family == "torch":
            mode = p.name.replace("torch ", "")

            def build(inputs, mode=f"torch {mode}"):
                params = inputs.clone()
                optimizer = torch.optim.Adam(params, lr=ADAM_CLIP_CONFIG["lr"], **TORCH_MODES[mode])

                def step():
                    torch.nn.utils.clip_grad_norm_(params, ADAM_CLIP_CONFIG["max_grad_norm"])
                    optimizer.step()

                return step

            renamed.append(Provider(f"torch clip + {mode}", "torch", build, p.reason))
        else:
            renamed.append(p)
    return renamed


ADAM_CLIP_CONFIG = dict(lr=1e-3, max_grad_norm=1.0)
ADAM_CLIP_CHECKS = [dict(lr=1e-2, max_grad_norm=0.5), dict(lr=1e-2, weight_decay=0.01, amsgrad=True, max_grad_norm=1.0)]


def adam_clip_op():
    op = optimizer_op(
        "adam_clip", "Adam with clipping to norm 1.0: max_grad_norm vs clip_grad_norm_ + step", fo_optim.Adam,
        torch.optim.Adam, ADAM_CLIP_CONFIG, check_configs=ADAM_CLIP_CHECKS,
        targets=(Target("mixed", "fused_optim cpp", "speedup_vs", 3.0, against="torch clip + fused", device_type="cpu"),),
    )
    # torch.optim has no max_grad_norm: the backends are checked against the reference alone
    check = functools.partial(check_optimizer, op.name, fo_optim.Adam, torch.optim.Adam, ADAM_CLIP_CHECKS,
                              with_torch=False)
    return dataclasses.replace(
        op, workloads=("mixed", "resnet50", "gpt2"),
        bytes_per_element=lambda dtype: traffic.clipped_optimizer_step(dtype, state_tensors(torch.optim.Adam, ADAM_CLIP_CONFIG)),
        providers=adam_clip_providers, check=check)


def later_optimizer_ops():
    """RMSprop and Adagrad, once fused_optim has them: plain RMSprop (20 B/element in float32; +8
    with momentum, +8 centered) against torch's fastest (it has no fused one), Adagrad (20 B)
    against torch's fused=True (which runs on the CPU)."""
    ops = []
    if hasattr(fo_optim, "RMSprop"):
        ops.append(optimizer_op(
            "rmsprop", "RMSprop", fo_optim.RMSprop, torch.optim.RMSprop, dict(lr=1e-3),
            check_configs=[
                dict(lr=1e-2),
                dict(lr=1e-2, momentum=0.9, weight_decay=0.01),
                dict(lr=1e-2, alpha=0.9, centered=True, momentum=0.5, maximize=True),
            ],
            targets=cpu_step_targets(1.1, against=None),
        ))
    if hasattr(fo_optim, "Adagrad"):
        ops.append(optimizer_op(
            "adagrad", "Adagrad", fo_optim.Adagrad, torch.optim.Adagrad, dict(lr=1e-2),
            check_configs=[
                dict(lr=1e-2),
                dict(lr=1e-2, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
                dict(lr=1e-2, eps=1e-6, maximize=True),
            ],
            targets=cpu_step_targets(1.1),
        ))
    return ops


OPS = {
    op.name: op
    for op in [
        optimizer_op(
            "sgd", "SGD, momentum 0.9", fo_optim.SGD, torch.optim.SGD, dict(lr=1e-3, momentum=0.9),
            check_configs=[
                dict(lr=0.1),
                dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
                dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
                dict(lr=0.1, momentum=0.5, maximize=True),
            ],
            targets=STEP_TARGETS + cpu_step_targets(1.0),
        ),
        optimizer_op(
            "adam", "Adam", fo_optim.Adam, torch.optim.Adam, dict(lr=1e-3),
            check_configs=[
                dict(lr=1e-2),
                dict(lr=1e-2, weight_decay=0.01, amsgrad=True),
                dict(lr=1e-2, betas=(0.3, 0.99), eps=1e-6, maximize=True),
            ],
            targets=BANDWIDTH_TARGETS + STEP_TARGETS + cpu_step_targets(1.1),
        ),
        optimizer_op(
            "adamw", "AdamW, weight decay 0.01", fo_optim.AdamW, torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.01),
            check_configs=[
                dict(lr=1e-2),
                dict(lr=1e-2, weight_decay=0.1, amsgrad=True),
                dict(lr=1e-2, betas=(0.8, 0.9), maximize=True),
            ],
            targets=BANDWIDTH_TARGETS + STEP_TARGETS + cpu_step_targets(1.1),
        ),
        *later_optimizer_ops(),
        adam_clip_op(),
        CLIP_OP,
        *NORM_OPS,
    ]
}


#: moment tensors of each optimizer op as configured above (its byte model's n_state)
_N_STATE = {"sgd": 1, "adam": 2, "adamw": 2}


def with_low_precision(names, master_weights=None, state_dtype=None):
    """The optimizer ops among ``names`` with fused_optim's low-precision options set on the
    fused_optim providers (torch's run as they are, on the same parameters) and the byte model
    counting what the options move (traffic.low_precision_step). ``bench --master-weights`` and
    ``--state-dtype`` run these in place of the plain ops."""
    replaced = {}
    for name in names:
        op = OPS[name]
        providers = op.providers
        if name not in _N_STATE or not (isinstance(providers, functools.partial) and providers.func is optimizer_providers):
            continue
        fo_class, torch_class, config = providers.args
        n_state = _N_STATE[name]
        options = dict(master_weights=master_weights, state_dtype=state_dtype)
        replaced[name] = dataclasses.replace(
            op,
            config={**op.config, "master_weights": master_weights, "state_dtype": str(state_dtype)},
            bytes_per_element=lambda dtype, n=n_state: traffic.low_precision_step(dtype, n, master_weights, state_dtype),
            providers=functools.partial(optimizer_providers, functools.partial(fo_class, **options), torch_class, config),
        )
    return replaced
