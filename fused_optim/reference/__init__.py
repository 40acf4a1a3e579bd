"""Plain PyTorch definitions of every op, one tensor at a time: the spec the fast paths are tested against."""
