"""How an optimizer is described to the backends: once, beside its frontend class.

A spec names the optimizer's kernel (the same name on every backend: ``reference.optim.<name>``,
``csrc/<name>.cpp`` registering ``"<name>"``, ``triton/<name>.py``), its per-parameter state
(torch's keys), its counter, and how a param group's hyperparameters fold into the float64
scalars and compile-time flags its kernels take. The frontend (``_base.MultiTensorOptimizer``)
and every backend plan read only this.
"""

import dataclasses
from typing import Callable, Optional, Tuple

import torch

from .._layout import (MASTER_KEYS, MASTER_KINDS, MAX_KERNEL_FLAGS, MAX_KERNEL_SCALARS, rounding_step_key,
                       state_dtype)

#: counter kinds: a float32 step count per parameter (as torch keeps ``state["step"]``), a
#: first-step flag per parameter (SGD's momentum buffer starts as the gradient), or none
STEP = "step"
FIRST = "first"


def zeros_state(group, param, keys):
    """Each state tensor zero, in the group's state dtype, with the parameter's memory format."""
    return {key: torch.zeros_like(param, dtype=group_state_dtype(group, param), memory_format=torch.preserve_format)
            for key in keys}


def group_state_dtype(group, param):
    """The dtype of ``param``'s moment/accumulator state under its group's ``state_dtype`` option."""
    return state_dtype(param.dtype, group.get("state_dtype"))


def master_state(group, param):
    """The master-weight state of a parameter under its group's ``master_weights`` option: a
    float32 copy (``master_param``), a zero compensation (``kahan_comp``), or nothing."""
    master = group.get("master_weights")
    if master == "fp32":
        copy = torch.empty_like(param, dtype=torch.float32, memory_format=torch.preserve_format)
        return {"master_param": copy.copy_(param.detach())}
    if master == "kahan":
        return {"kahan_comp": torch.zeros_like(param, memory_format=torch.preserve_format)}
    return {}


def master_bytes(group, element_size):
    """Bytes per element the group's master weights add to a step: a float32 copy read and
    written ("fp32"), a 16-bit compensation read and written ("kahan"), nothing otherwise."""
    return {"fp32": 8, "kahan": 2 * element_size}.get(group.get("master_weights"), 0)


#: what every spec's fold appends (``low_precision_fold``), and what every kernel reads last
LOW_PRECISION_SCALARS = ("rounding_key",)
LOW_PRECISION_FLAGS = ("master", "state_bf16")


def low_precision_fold(group, scalars, flags):
    """A spec's folded (scalars, flags) with the low-precision options appended: the step key of
    stochastic rounding (32 bits from the group's seed and rounding step, an exact float64), the
    master kind (``_layout.MASTER_KINDS``) and whether the moment state is bfloat16."""
    master = group.get("master_weights")
    key = rounding_step_key(group["seed"], group["rounding_step"]) if master == "stochastic" else 0
    return (tuple(scalars) + (float(key),),
            tuple(flags) + (MASTER_KINDS[master], int(group.get("state_dtype") == torch.bfloat16)))


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    #: kernel name on every backend
    name: str
    #: as torch words it in messages ("Adam does not support ...")
    display_name: str
    #: names of the kernel scalars, in the order ``fold`` returns them (float64 each)
    scalars: Tuple[str, ...]
    #: names of the compile-time flags, in the order ``fold`` returns them
    flags: Tuple[str, ...]
    #: STEP, FIRST or None
    counter: Optional[str]
    #: group -> the state keys besides "step", in the order the kernels read them
    state_keys: Callable
    #: group -> (scalars, flags): tuples of floats and of ints
    fold: Callable
    #: (group, param, keys) -> {key: tensor}: the state created on a parameter's first step
    init_state: Callable = zeros_state
    #: state keys that may be missing in a loaded state_dict: created and marked fresh
    fresh_when_missing: Tuple[str, ...] = ()
    #: sparse gradients accepted (stepped by the reference math, dense ones by the kernels)
    sparse: bool = False
    #: group -> None, or raises when the group's options cannot take a sparse gradient
    check_sparse: Optional[Callable] = None
    #: (group, element_size, state_size) -> bytes moved per element by one update (master weights
    #: included, ``master_bytes``)
    bytes_per_element: Optional[Callable] = None

    def __post_init__(self):
        if len(self.scalars) > MAX_KERNEL_SCALARS or len(self.flags) > MAX_KERNEL_FLAGS:
            raise ValueError(f"{self.name}: at most {MAX_KERNEL_SCALARS} scalars and {MAX_KERNEL_FLAGS} flags")

    def named(self, scalars, flags):
        """The folded values as keyword arguments (the reference math's signature)."""
        return {**dict(zip(self.scalars, scalars)), **{k: int(v) for k, v in zip(self.flags, flags)}}

    def keys(self, group):
        """Every state key of a group besides "step": the optimizer's own (``state_keys``), then
        the master-weight key of the group's ``master_weights`` option, if any. The kernels see
        the state tensors in this order."""
        return tuple(self.state_keys(group)) + MASTER_KEYS[group.get("master_weights")]

    def new_state(self, group, param, keys):
        """The state created on a parameter's first step (``init_state``), plus its master weights."""
        own = tuple(self.state_keys(group))
        state = self.init_state(group, param, own)
        state.update(master_state(group, param))
        return {k: state[k] for k in keys}


def scalar(value):
    """A hyperparameter as a Python float (torch allows 1-element tensors for lr and betas)."""
    return float(value) if isinstance(value, torch.Tensor) else float(value)
