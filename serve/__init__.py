"""Serve a model repository with the real tritonserver: ``TritonServer`` (the launcher that
``vlpserve serve``, the tests, the demo and the benchmarks use) and its ``Security``."""

from vlpserve.serve.launcher import TritonServer, free_port
from vlpserve.serve.security import API_KEY_ENV, Security, api_key_from

__all__ = ["API_KEY_ENV", "Security", "TritonServer", "api_key_from", "free_port"]
