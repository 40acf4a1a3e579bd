"""Memory-layout and dtype facts about tensors, shared by every layer: the dtype policy (what an
update computes in, what its state is stored in, real views of complex tensors) and the launch-row
layout of the multi-tensor optimizer kernels."""

import torch


def is_dense(t):
    """True when ``t``'s elements fill one block of memory exactly once, in some dimension order
    (contiguous, channels_last, transposed...). Such a tensor can be walked as a flat array."""
    if t.is_contiguous() or t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((s, n) for n, s in zip(t.shape, t.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def compute_dtype(dtype):
    """The dtype the math runs in for tensors of ``dtype``: float64 for float64 (and complex128),
    float32 for everything else (16-bit floats are computed in float32 and rounded once)."""
    return torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32


def state_dtype(dtype):
    """The dtype of optimizer state for parameters of ``dtype``: float32 for 16-bit floats, so no
    moment overflows and no ``eps`` flushes to zero; the parameter's own dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def real_dtype(t):
    """The dtype of a tensor's real view: float32 for complex64."""
    return t.real.dtype if t.is_complex() else t.dtype


def real(t):
    """Complex tensors as their real view; others as they are."""
    return torch.view_as_real(t) if t.is_complex() else t


def flat_views(tensors, written):
    """Each tensor as a flat array in its own memory order, plus (tensor, copy) pairs.

    Tensors sharing one dense layout are used in place; otherwise the non-contiguous ones are
    stepped on contiguous copies. The caller keeps every copy alive until the launch is enqueued
    and writes back the pairs whose tensor ``written`` says the kernel changes.
    """
    first = tensors[0]
    same = all(t.is_contiguous() for t in tensors) or (
        is_dense(first) and all(t.stride() == first.stride() for t in tensors)
    )
    if same:
        return list(tensors), []
    flat, copies = [], []
    for t, is_written in zip(tensors, written):
        if t.is_contiguous():
            flat.append(t)
        else:
            copy = t.contiguous()
            flat.append(copy)
            copies.append((t if is_written else None, copy))
    return flat, copies


def write_back(copies):
    for destination, copy in copies:
        if destination is not None:
            destination.copy_(copy)


class LaunchRow:
    """One int64 row per tensor of a multi-tensor optimizer launch: the data addresses of the
    parameter, its gradient and up to MAX_STATE state tensors (0 when absent), its element count
    (real elements) and the address of its float32 counter (step count or first-step flag).

    The C++ plan writes these rows (csrc/optimizer.h, ``launch_row``, exported as
    ``_C.LAUNCH_ROW``), the Triton kernels read them (as constexprs), and the no-compiler
    bookkeeper builds them; tests/test_launch_layout.py checks that all agree.
    """

    WORDS = 8
    PARAM = 0
    GRAD = 1
    STATE = 2
    MAX_STATE = 4
    NUMEL = 6
    COUNTER = 7


#: at most this many float64 kernel scalars and compile-time flags per param group (a spec's fold)
MAX_KERNEL_SCALARS = 8
MAX_KERNEL_FLAGS = 8
