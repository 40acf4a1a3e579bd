"""Drop-ins for torch.nn.utils' gradient clipping: the same arguments and results, computed in one
pass over all gradients (see fused_optim.ops.clip), with no host sync unless
``error_if_nonfinite=True`` asks for one.

``foreach`` chooses among torch's own implementations; it is accepted and unused. ``backend``
(keyword only) chooses fused_optim's: None ($FUSED_OPTIM_BACKEND, else "auto"), "auto",
"reference", "cpp" or "triton".

The total norm is computed from all elements at once in float64 (Triton: float32 partial sums per
chunk, combined in float64) and rounded once to the gradients' promoted dtype; torch rounds each
tensor's norm to that tensor's dtype first, so for float16/bfloat16 gradients the two can differ
in the last bit of the 16-bit result.
"""

import types
import warnings

import torch

from ..ops import clip as ops


@torch.no_grad()
def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None, *, backend=None):
    """The norm of all ``tensors`` together, as if concatenated into one vector (a 0-dim tensor)."""
    return ops.total_norm(ops.as_list(tensors), norm_type, error_if_nonfinite, backend)


@torch.no_grad()
def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None, *, backend=None):
    """Scale the gradients by ``min(max_norm / (total_norm + 1e-6), 1)``, in place."""
    ops.clip_with_norm(ops.grads_of(ops.as_list(parameters)), max_norm, total_norm, backend)


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None, *, backend=None):
    """Clip the gradients' total norm to ``max_norm`` in place; returns the total norm before clipping."""
    is_generator = isinstance(parameters, types.GeneratorType)
    parameters = ops.as_list(parameters)
    if is_generator and not parameters:
        warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=3)
    return ops.total_norm(parameters, norm_type, error_if_nonfinite, backend, max_norm=float(max_norm),
                          use_grads=True)


@torch.no_grad()
def clip_grad_value_(parameters, clip_value, foreach=None, *, backend=None):
    """Clamp the gradients to ``[-clip_value, clip_value]`` in place."""
    ops.clamp_(ops.grads_of(ops.as_list(parameters)), clip_value, backend)
