"""Memory-layout facts about tensors, shared by every layer."""


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
