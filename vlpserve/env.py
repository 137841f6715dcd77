"""``vlpserve env``: what this machine can run, and why not where it cannot.

Versions of the libraries vlpserve uses, the CUDA driver and devices, each ONNX Runtime
execution provider tried on a tiny graph (a provider listed by ONNX Runtime can still fall
back to the CPU at session creation when one of its libraries is missing: the library is
named), and the tritonserver version, asked of a server started on an empty repository.
"""

from __future__ import annotations

import contextlib
import ctypes
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from vlpserve.ort import CPU, CUDA, TENSORRT

PACKAGES = (
    "vlpserve",
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "tensorrt-cu12",
    "tritonclient",
    "nvidia-pytriton",
    "numpy",
    "grpcio",
)
# The shared libraries each provider loads, in the order a missing one is worth naming.
PROVIDER_LIBRARIES = {
    CUDA: (
        "libcuda.so.1",
        "libcudart.so.12",
        "libcublas.so.12",
        "libcublasLt.so.12",
        "libcudnn.so.9",
        "libcufft.so.11",
        "libcurand.so.10",
    ),
    TENSORRT: (
        "libcuda.so.1",
        "libcudart.so.12",
        "libnvinfer.so.10",
        "libnvinfer_plugin.so.10",
        "libnvonnxparser.so.10",
    ),
}
WANTED = (TENSORRT, CUDA, CPU)


@dataclass
class Provider:
    name: str
    works: bool
    why: str = ""  # when it does not


@dataclass
class Environment:
    packages: dict[str, str] = field(default_factory=dict)
    cuda: dict[str, Any] = field(default_factory=dict)
    providers: list[Provider] = field(default_factory=list)
    tritonserver: str = ""
    notes: list[str] = field(default_factory=list)


def packages() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def missing_library(names: tuple[str, ...]) -> str:
    """The first of ``names`` the dynamic loader cannot load, with its reason ("" if none)."""
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError as exc:
            return f"{name} not loadable ({exc})"
    return ""


def _tiny_graph(folder: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [1.0] * 16)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "probe.onnx"
    onnx.save(model, str(path))
    return path


def providers() -> list[Provider]:
    """Each execution provider vlpserve can use, tried on a tiny graph."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as exc:
        return [Provider(name, False, f"onnxruntime not importable: {exc}") for name in WANTED]
    if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels, if any
        with contextlib.suppress(Exception):  # what fails is reported below
            ort.preload_dlls()
    available = set(ort.get_available_providers())
    found = []
    with tempfile.TemporaryDirectory() as folder:
        graph = _tiny_graph(Path(folder))
        for name in WANTED:
            if name not in available:
                build = "onnxruntime-gpu" if name != CPU else "onnxruntime"
                found.append(
                    Provider(name, False, f"not in this ONNX Runtime build (needs {build})")
                )
                continue
            try:
                options = ort.SessionOptions()
                options.log_severity_level = 3
                session = ort.InferenceSession(str(graph), options, providers=[name])
                used = session.get_providers()
                session.run(None, {"x": np.ones((1, 4), np.float32)})
            except Exception as exc:  # the reason is the report
                reason = missing_library(PROVIDER_LIBRARIES.get(name, ())) or str(exc)[:300]
                found.append(Provider(name, False, reason))
                continue
            if name not in used:
                reason = missing_library(PROVIDER_LIBRARIES.get(name, ()))
                found.append(Provider(name, False, reason or f"fell back to {used}"))
            else:
                found.append(Provider(name, True))
    return found


def cuda() -> dict[str, Any]:
    """The driver and devices as torch sees them, or why not."""
    found: dict[str, Any] = {}
    driver = missing_library(("libcuda.so.1",))
    found["driver"] = driver or "loadable"
    try:
        import torch
    except ImportError:
        found["torch"] = "not installed"
        return found
    found["torch_cuda"] = torch.version.cuda or "CPU build"
    found["available"] = bool(torch.cuda.is_available())
    if found["available"]:
        found["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return found


def tritonserver_version(binary: Path | None = None) -> str:
    """The version a tritonserver reports, started on an empty repository (or why not)."""
    from vlpserve.errors import ServeError
    from vlpserve.serve.launcher import TritonServer

    with tempfile.TemporaryDirectory() as repo:
        try:
            with TritonServer(
                Path(repo), tritonserver=binary, supervise=False, startup_timeout_s=60
            ) as server:
                return server.metadata().get("version", "unknown")
        except ServeError as exc:
            return f"not available: {str(exc).splitlines()[0]}"


def collect(*, triton: bool = True) -> Environment:
    env = Environment(packages=packages(), cuda=cuda(), providers=providers())
    if triton:
        env.tritonserver = tritonserver_version()
    if {"onnxruntime", "onnxruntime-gpu"} <= set(env.packages):
        env.notes.append(
            "onnxruntime and onnxruntime-gpu are both installed and share one module: "
            "`pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu`"
        )
    return env


def render(env: Environment) -> str:
    lines = ["packages:"]
    lines += [f"  {name:18} {ver}" for name, ver in env.packages.items()]
    lines.append("cuda:")
    lines += [f"  {key:18} {value}" for key, value in env.cuda.items()]
    lines.append("onnxruntime execution providers:")
    for p in env.providers:
        lines.append(f"  {p.name:28} {'works' if p.works else 'no: ' + p.why}")
    if env.tritonserver:
        lines.append(f"tritonserver:        {env.tritonserver}")
    lines += [f"note: {note}" for note in env.notes]
    return "\n".join(lines)
