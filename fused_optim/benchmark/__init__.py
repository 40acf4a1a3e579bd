"""Benchmark and self-check machinery behind the ``fused-optim`` command and ``benchmarks/``.

``ops.OPS`` is the table of benchmarked ops; ``workloads.WORKLOADS`` the tensor shapes they run
on; ``traffic`` the bytes each op must move; ``timing`` how steps are timed; ``runner`` runs the
bench and the check; ``report`` prints and writes their results.
"""
