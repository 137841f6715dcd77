"""ONNX Runtime sessions, built one way: the export's parity checks, the served models and
the benchmarks' baselines all run graphs through ``session``.

``spin`` keeps ORT's default (intra-op threads busy-wait between parallel sections). Turning
it off, so that the tokenizer, image decoder and gRPC frontend sharing the cores get them,
was measured on the 2-core CPU machine (CLIP text and image at concurrency 1 and 32, three
interleaved runs each) and was no better, within that machine's run-to-run noise; a process
that runs two graphs at once (BLIP generation: vision encoder and decoder) turns it off.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def providers(
    available: Sequence[str],
    *,
    on_gpu: bool = False,
    device_id: int = 0,
    tensorrt: Mapping[str, str] | None = None,
    engine_cache: Path | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """The execution providers of a session, first choice first: TensorRT when ``tensorrt``
    options are given (its engines and timing cache kept in ``engine_cache``), then CUDA,
    both on ``device_id`` and only ``on_gpu`` and where ``available``; CPU last, always."""
    chosen: list[tuple[str, dict[str, str]]] = []
    device = {"device_id": str(device_id)}
    if on_gpu and tensorrt is not None:
        if TENSORRT in available:
            options = device | dict(tensorrt)
            if engine_cache is not None:
                cache = str(engine_cache)
                options |= {
                    "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": cache,
                    "trt_timing_cache_enable": "True",
                    "trt_timing_cache_path": cache,
                }
            chosen.append((TENSORRT, options))
        else:  # ``vlpserve env`` says which library is missing
            logger.warning("TensorRT was asked for but ONNX Runtime has no %s", TENSORRT)
    if on_gpu and CUDA in available:
        chosen.append((CUDA, device))
    chosen.append((CPU, {}))
    return chosen


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a cpuset, ``taskset``, a pinned
    server) where the platform has one, else all of them, and no more than its cgroup's CPU
    quota allows (a Kubernetes CPU limit without the static CPU manager), rounded up."""
    found = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    found = found or os.cpu_count() or 1
    quota = cpu_quota()
    return min(found, quota) if quota else found


def cpu_quota(
    root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")
) -> int | None:
    """The CPUs this process's cgroup may use per period, rounded up; None: no quota.

    cgroup v2 writes ``<quota> <period>`` (or ``max <period>``) in ``cpu.max``; v1 has
    ``cpu.cfs_quota_us`` (-1: none) and ``cpu.cfs_period_us``."""
    candidates: list[tuple[Path, bool]] = []
    try:
        for line in own.read_text().splitlines():
            number, controllers, path = line.split(":", 2)
            relative = path.lstrip("/")
            if number == "0" and not controllers:
                candidates.append((root / relative / "cpu.max", True))
            elif "cpu" in controllers.split(","):
                candidates.append((root / "cpu" / relative, False))
    except (OSError, ValueError):
        pass
    candidates += [(root / "cpu.max", True), (root / "cpu", False)]
    for place, unified in candidates:
        try:
            if unified:
                quota, period = place.read_text().split()[:2]
                if quota == "max":
                    return None
            else:
                quota = (place / "cpu.cfs_quota_us").read_text().strip()
                period = (place / "cpu.cfs_period_us").read_text().strip()
                if int(quota) < 0:
                    return None
            return max(1, math.ceil(int(quota) / int(period)))
        except (OSError, ValueError, ZeroDivisionError):
            continue
    return None


def session(
    path: Path | str | bytes,
    *,
    on_gpu: bool = False,
    device_id: int = 0,
    threads: int = 0,
    spin: bool = True,
    tensorrt: Mapping[str, str] | None = None,
    engine_cache: Path | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` over ``path`` (or a serialized graph) with every
    graph optimization, on the ``providers`` above; on CPU with ``threads`` intra-op
    threads (0: ORT's default, or one per usable CPU in a process pinned to fewer than the
    machine has: ORT's default counts the machine's cores, and its threads would then share
    the few CPUs and spin against each other)."""
    import onnxruntime as ort

    usable = usable_cpus()
    if not threads and usable < (os.cpu_count() or 1):
        threads = usable
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    chosen = providers(
        ort.get_available_providers(),
        on_gpu=on_gpu,
        device_id=device_id,
        tensorrt=tensorrt,
        engine_cache=engine_cache,
    )
    if engine_cache is not None and chosen[0][0] == TENSORRT:
        engine_cache.mkdir(parents=True, exist_ok=True)
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(
        model,
        options,
        providers=[name for name, _ in chosen],
        provider_options=[opts for _, opts in chosen],
    )
