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
    "numpy",
    "transformers",
    "tritonclient",
    "grpcio",
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "tensorrt-cu12",
    "nvidia-pytriton",
    "tokenizers",
    "sentencepiece",
    "protobuf",
)
# transformers releases `vlpserve export` supports ([export] in pyproject.toml).
TRANSFORMERS_RANGE = ((4, 54), (6, 0))
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
    warnings: list[str] = field(default_factory=list)  # known-bad combinations installed


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


def _release(text: str) -> tuple[int, int, int]:
    """(major, minor, micro) of a version string: "5.0.0rc1" -> (5, 0, 0)."""
    parts = [0, 0, 0]
    for index, piece in enumerate(text.split(".")[:3]):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        parts[index] = int(digits or 0)
    return parts[0], parts[1], parts[2]


def known_bad(found: dict[str, str]) -> list[str]:
    """Installed combinations known not to work, each with what to do about it."""
    bad = []
    numpy = _release(found.get("numpy", "0"))
    if "nvidia-pytriton" in found and numpy >= (2, 0):
        bad.append(
            f"numpy {found['numpy']} with nvidia-pytriton: the embedded tritonserver's Python "
            "backend stub (pybind11 2.10) garbles every tensor under numpy 2 and aborts on "
            "BYTES inputs; serve from an environment with `pip install 'numpy<2'` (the "
            "client itself runs on numpy 2)"
        )
    if "transformers" in found:
        low, high = TRANSFORMERS_RANGE
        if not low <= _release(found["transformers"])[:2] < high:
            bad.append(
                f"transformers {found['transformers']}: vlpserve export supports "
                f">={low[0]}.{low[1]},<{high[0]} (`pip install 'vlpserve[export]'`)"
            )
    sentencepiece = _release(found.get("sentencepiece", "0"))
    if sentencepiece >= (0, 2, 3) and _release(found.get("protobuf", "0")) < (7, 0, 0):
        bad.append(
            f"sentencepiece {found['sentencepiece']} needs protobuf 7 (found "
            f"{found['protobuf']}): `pip install 'sentencepiece<0.2.3'`"
        )
    if {"onnxruntime", "onnxruntime-gpu"} <= set(found):
        bad.append(
            "onnxruntime and onnxruntime-gpu are both installed and share one module: "
            "`pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu`"
        )
    return bad


def collect(*, triton: bool = True) -> Environment:
    env = Environment(packages=packages(), cuda=cuda(), providers=providers())
    if triton:
        env.tritonserver = tritonserver_version()
    env.warnings = known_bad(env.packages)
    if "torchvision" in env.packages and _release(env.packages.get("transformers", "0"))[0] >= 5:
        env.notes.append(
            "transformers 5 with torchvision: Hugging Face's image processors default to their "
            "torchvision backend; vlpserve's pre-processing equals the PIL backend "
            "(backend='pil'), benchmarks/RESULTS.md gives the distance"
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
    lines += [f"warning: {warning}" for warning in env.warnings]
    return "\n".join(lines)
