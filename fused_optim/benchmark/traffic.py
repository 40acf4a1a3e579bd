"""The bytes each op must move through memory per step: the one byte model behind GB/s.

Counts are for fused_optim's layout (float32 state for 16-bit parameters) and are applied to
every provider of an op, so GB/s compares providers doing the same work. torch keeps 16-bit
state for 16-bit parameters and so moves fewer bytes than counted there.
"""

import torch

from .._layout import state_dtype as layout_state_dtype
from ..reference.optim import state_dtype


def element_size(dtype):
    return torch.empty((), dtype=dtype).element_size()


def optimizer_step(param_dtype, n_state):
    """Per parameter element: read param, grad and each state tensor; write param and each state.

    float32: SGD with momentum (1 state tensor) 20 B, without 12 B; Adam/AdamW (2) 28 B, with
    amsgrad (3) 36 B; RMSprop (square_avg; + momentum_buffer; + grad_avg when centered) 20, 28,
    36 B; Adagrad (sum) 20 B."""
    param = element_size(param_dtype)
    state = element_size(state_dtype(param_dtype))
    return 3 * param + 2 * n_state * state


def low_precision_step(param_dtype, n_state, master_weights=None, requested_state=None):
    """An optimizer step under fused_optim's low-precision options: param, grad and ``n_state``
    moments as optimizer_step, the moments in ``state_dtype``; "fp32" master weights add a float32
    copy read and written (8 B), "kahan" a 16-bit compensation read and written, "stochastic"
    nothing. bfloat16 Adam with bfloat16 state and stochastic rounding: 14 B (fp32 Adam: 28)."""
    param = element_size(param_dtype)
    state = element_size(layout_state_dtype(param_dtype, requested_state))
    extra = {None: 0, "stochastic": 0, "fp32": 2 * 4, "kahan": 2 * param}[master_weights]
    return 3 * param + 2 * n_state * state + extra


def copy(nbytes):
    """A device-to-device copy reads and writes every byte once."""
    return 2 * nbytes


def clip(grad_dtype):
    """clip_grad_norm_: read every gradient for the norm, then read and write it to scale (float32: 12 B)."""
    return 3 * element_size(grad_dtype)


def clipped_optimizer_step(param_dtype, n_state):
    """An optimizer step with clipping fused in: the norm's read of the gradient, then the step."""
    return element_size(param_dtype) + optimizer_step(param_dtype, n_state)


def layer_norm(dtype):
    """LayerNorm forward + backward: read x, write y; read dy and x, write dx (float32: 20 B)."""
    return 5 * element_size(dtype)


def layer_norm_forward(dtype):
    """LayerNorm forward: read x, write y (float32: 8 B)."""
    return 2 * element_size(dtype)


def batch_norm(dtype):
    """BatchNorm forward + backward in training: statistics (read x), normalize (read x, write y),
    the two per-channel sums (read dy, x), the input gradient (read dy, x, write dx): 32 B in float32."""
    return 8 * element_size(dtype)


def batch_norm_forward(dtype):
    """BatchNorm forward in training: statistics (read x), normalize (read x, write y): 12 B in float32."""
    return 3 * element_size(dtype)
