"""Backend-neutral entry points: each op picks the reference, C++ or Triton implementation."""
