"""Triton kernels: every tensor of a step in one launch (CUDA; CPU under TRITON_INTERPRET=1).

Import these modules only after TRITON_INTERPRET is set: triton reads it when kernels are defined.
"""
