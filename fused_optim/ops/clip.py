"""Gradient norms and clipping on any backend.

All tensors on one device go to one implementation in a single pass each way: the C++ backend does
norm, check and scale in one call; the Triton backend in one reduction launch per dtype, one
finalize launch and one scale launch per dtype, with the clip factor kept on the device. Tensors
on several devices, and norms without a power-sum form (order 0 or negative), take the reference.

Only plain tensors reach a kernel (see ``_route``). DTensors and other subclasses take torch's own
per-tensor formulas, so their dispatch gives what torch.nn.utils gives (for DTensors: the global
norm as a DTensor, the gradients scaled shard by shard). Traced calls (torch.compile, torch.export)
on CUDA tensors with the triton backend take the triton_ops (``uses_triton_ops``), whose kernel
launches the trace records; other traced calls take the reference, which is plain torch ops.
"""

import torch

from .. import _backend, _cpp
from ..reference import clip as reference
from . import _route

NONFINITE_MESSAGE = (
    "The total norm of order {} for gradients from `parameters` is non-finite, so it cannot be clipped. To "
    "disable this error and scale the gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
)


def as_list(tensors):
    return [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)


def grads_of(parameters):
    return [p.grad for p in parameters if p.grad is not None]


def _check_finite(total, norm_type):
    if torch.logical_or(total.isnan(), total.isinf()):
        raise RuntimeError(NONFINITE_MESSAGE.format(float(norm_type)))


def _triton_eligible(tensors, norm_type):
    return reference.is_power_norm(norm_type) and all(
        t.layout == torch.strided and (norm_type == 2 or not t.is_complex()) for t in tensors
    )


def _all_plain(tensors):
    return not torch.compiler.is_compiling() and all(_route.is_plain(t) for t in tensors)


def _per_tensor_norm(tensors, norm_type):
    """torch.nn.utils.get_total_norm's formula: the norm of the per-tensor norms."""
    norms = [torch.linalg.vector_norm(t, norm_type) for t in tensors]
    return torch.linalg.vector_norm(torch.stack([n.to(tensors[0].device) for n in norms]), norm_type)


def triton_groups(tensors):
    from ..triton import clip as triton_clip

    by_dtype = {}
    for t in tensors:
        by_dtype.setdefault(t.real.dtype if t.is_complex() else t.dtype, []).append(t)
    return [triton_clip.TensorList(group) for group in by_dtype.values()]


def triton_power_sum_partials(tensor_lists, norm_type, device):
    """The per-chunk power sums of all lists, in one float64 buffer."""
    from ..triton import clip as triton_clip

    partials = torch.empty(sum(t.n_chunks for t in tensor_lists), dtype=torch.float64, device=device)
    offset = 0
    for tensor_list in tensor_lists:
        triton_clip.norm_partials(tensor_list, partials[offset:], norm_type)
        offset += tensor_list.n_chunks
    return partials


def _clip_triton(grads, max_norm, norm_type, error_if_nonfinite):
    from ..triton import clip as triton_clip

    device = grads[0].device
    lists = triton_groups(grads)
    partials = triton_power_sum_partials(lists, norm_type, device)
    total, factor = triton_clip.finalize(partials, norm_type, reference.result_dtype(grads), max_norm)
    if error_if_nonfinite:
        _check_finite(total, norm_type)
    if max_norm is not None:
        for tensor_list in lists:
            triton_clip.scale_(tensor_list, factor)
    return total


# Traced calls (torch.compile, torch.export, FakeTensors) on CUDA tensors whose backend is (or
# resolves to) triton take the triton_ops of fused_optim.triton.clip, so the compiler sees the
# kernel launches. They are registered at import where they can run (CUDA and triton present),
# never inside a trace; a caller tracing FakeTensors on "cuda" without a GPU calls
# ``load_triton_ops()`` first.

_triton_ops = None


def load_triton_ops():
    """Register the triton_ops (importing triton); returns their module."""
    global _triton_ops
    if _triton_ops is None:
        from ..triton import clip as triton_clip

        _triton_ops = triton_clip
    return _triton_ops


def uses_triton_ops(tensors, backend, norm_type=2.0):
    """Whether a call on these tensors, traced, with this backend name runs the triton_ops. An eager
    call is told by its first tensor, so its cost does not grow with the number of tensors."""
    return (_triton_ops is not None and backend in ("auto", "triton") and bool(tensors)
            and _route.route(tensors[0]) == _route.OP and _route.route(*tensors) == _route.OP
            and all(t.device.type == "cuda" for t in tensors)
            and len({t.device for t in tensors}) == 1 and _triton_eligible(tensors, norm_type))


def _clip_triton_ops(grads, max_norm, norm_type, error_if_nonfinite):
    total, factor = torch.ops.fused_optim.total_norm_triton(grads, norm_type, max_norm)
    if error_if_nonfinite:
        _check_finite(total, norm_type)
    if max_norm is not None:
        torch.ops.fused_optim.scale_triton_(grads, factor)
    return total


if torch.cuda.is_available() and _backend.unavailable_reason("triton", "cuda") is None:
    load_triton_ops()


def _backend_for(tensors, backend):
    return _backend.resolve(_backend.validate_name(backend), tensors[0].device)


def total_norm(tensors, norm_type, error_if_nonfinite, backend, max_norm=None, use_grads=False):
    """The total norm of ``tensors`` (their gradients with use_grads) and, with max_norm, clip
    them in place by it. Returns a 0-dim tensor on the first tensor's device."""
    norm_type = float(norm_type)
    # The device of the first tensor decides the backend; the C++ path reads the gradients itself,
    # so the Python list of them is built only for the other paths.
    first = next((t.grad for t in tensors if t.grad is not None), None) if use_grads else (
        tensors[0] if tensors else None)
    if first is None:
        return torch.tensor(0.0)
    name = _backend.validate_name(backend)
    plain_first = _all_plain([first])
    if plain_first or (first.is_meta and not torch.compiler.is_compiling()):
        name = _backend.resolve(name, first.device)  # an explicit backend that cannot run them is an error
    if plain_first and name == "cpp" and reference.is_power_norm(norm_type):
        # None when some tensor is not a plain dense CPU float tensor: those take the paths below.
        result = _cpp.get().clip_grad_norm(tensors, use_grads, max_norm, norm_type, error_if_nonfinite)
        if result is not None:
            return result
    selected = grads_of(tensors) if use_grads else tensors
    plain = plain_first and _all_plain(selected)
    if plain and name == "triton" and _triton_eligible(selected, norm_type) and len({t.device for t in selected}) == 1:
        return _clip_triton(selected, max_norm, norm_type, error_if_nonfinite)
    if not plain and uses_triton_ops(selected, name, norm_type):
        return _clip_triton_ops(selected, max_norm, norm_type, error_if_nonfinite)
    if plain or torch.compiler.is_compiling():
        total = reference.total_norm(selected, norm_type)
    else:
        total = _per_tensor_norm(selected, norm_type)
    if error_if_nonfinite:
        _check_finite(total, norm_type)
    if max_norm is not None:
        clip_with_norm(selected, max_norm, total, backend="reference")
    return total


def clip_with_norm(grads, max_norm, total, backend):
    """grads *= min(max_norm / (total + 1e-6), 1), the factor computed on total's device."""
    if not grads:
        return
    factor = reference.clip_coefficient(float(max_norm), total)
    if uses_triton_ops(grads, _backend.validate_name(backend)) and factor.device == grads[0].device:
        torch.ops.fused_optim.scale_triton_(grads, factor.to(torch.float64))
        return
    if not _all_plain(grads) or not _all_plain([factor]):
        reference.scale_(grads, factor)
        return
    name = _backend_for(grads, backend)
    if name == "cpp" and factor.device.type == "cpu":
        if _cpp.get().scale_checked(grads, False, float(factor)):
            return
    if name == "triton" and all(t.device == grads[0].device and t.layout == torch.strided for t in grads):
        from ..triton import clip as triton_clip

        device_factor = factor.to(device=grads[0].device, dtype=torch.float64, non_blocking=True)
        for tensor_list in triton_groups(grads):
            triton_clip.scale_(tensor_list, device_factor)
        return
    reference.scale_(grads, factor)


def clamp_(grads, clip_value, backend):
    """grads = clamp(grads, -clip_value, clip_value) in place."""
    if not grads:
        return
    low, high = -float(clip_value), float(clip_value)
    if uses_triton_ops(grads, _backend.validate_name(backend)):
        torch.ops.fused_optim.clamp_triton_(grads, low, high)
        return
    if not _all_plain(grads):
        reference.clamp_(grads, low, high)
        return
    name = _backend_for(grads, backend)
    if name == "cpp" and _cpp.get().clamp_checked(grads, False, low, high):
        return
    if name == "triton" and all(t.device == grads[0].device and t.layout == torch.strided for t in grads):
        from ..triton import clip as triton_clip

        for tensor_list in triton_groups(grads):
            triton_clip.clamp_(tensor_list, low, high)
        return
    reference.clamp_(grads, low, high)
