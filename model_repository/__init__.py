"""Triton model repository: configs, builder, validator, and the deployments the demo and
the benchmarks prepare."""

from vlpserve.model_repository.builder import RepositoryOptions, build_repository
from vlpserve.model_repository.config import Device, ModelConfig, Preprocess, Runtime
from vlpserve.model_repository.validate import ValidationReport, validate_repository

__all__ = [
    "Device",
    "ModelConfig",
    "Preprocess",
    "RepositoryOptions",
    "Runtime",
    "ValidationReport",
    "build_repository",
    "validate_repository",
]
