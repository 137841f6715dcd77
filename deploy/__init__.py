"""Deployments beyond one machine: Kubernetes manifests and a KServe InferenceService
sized from the repository they serve (``vlpserve deploy kubernetes``)."""

from vlpserve.deploy.kubernetes import DeployOptions, Format, render, write
from vlpserve.deploy.sizing import RepositoryShape, inspect

__all__ = ["DeployOptions", "Format", "RepositoryShape", "inspect", "render", "write"]
