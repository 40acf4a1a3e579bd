"""Memory-layout facts about tensors, shared by every layer."""

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
