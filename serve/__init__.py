"""Serve a model repository with the real tritonserver: ``TritonServer`` (the launcher that
``vlpserve serve``, the tests, the demo and the benchmarks use)."""

from vlpserve.serve.launcher import TritonServer, free_port

__all__ = ["TritonServer", "free_port"]
