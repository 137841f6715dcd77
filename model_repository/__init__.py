"""Triton model repository: configs, builder, validator, and the tritonserver launcher."""

from vlpserve.model_repository.builder import RepositoryOptions, build_repository
from vlpserve.model_repository.config import Device, ModelConfig, Runtime
from vlpserve.model_repository.server import TritonServer
from vlpserve.model_repository.validate import ValidationReport, validate_repository

__all__ = [
    "Device",
    "ModelConfig",
    "RepositoryOptions",
    "Runtime",
    "TritonServer",
    "ValidationReport",
    "build_repository",
    "validate_repository",
]
