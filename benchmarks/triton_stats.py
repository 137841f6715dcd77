"""Triton's own figures around a load point: per-model statistics deltas (queue, compute
input / infer / output, batch sizes actually executed) and GPU metrics where a GPU exists."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

_METRIC = re.compile(r"^(nv_gpu_utilization|nv_gpu_memory_used_bytes)\{[^}]*\} ([0-9.eE+-]+)$")
_ENGINE = re.compile(r"^vlpserve_generation_(seconds|calls|rows)_total\{([^}]*)\} ([0-9.eE+-]+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def snapshot(client: Any, models: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Cumulative statistics of those of ``models`` the server has (tritonclient.grpc)."""
    from tritonclient.utils import InferenceServerException

    out = {}
    for model in models:
        try:
            stats = client.get_inference_statistics(model, as_json=True)
        except InferenceServerException:
            continue  # not in this repository (the other runtime's layout)
        entries = stats.get("model_stats", [])
        if entries:
            out[model] = entries[0]
    return out


def _ns(entry: dict[str, Any], key: str) -> tuple[int, int]:
    value = entry.get("inference_stats", {}).get(key, {})
    return int(value.get("count", 0)), int(value.get("ns", 0))


def delta(
    before: dict[str, Any], after: dict[str, Any], window_s: float
) -> dict[str, dict[str, Any]]:
    """Per model that served requests: requests, executions, mean batch, mean ms per request
    of each phase, the batch sizes executed (size -> executions), the time spent executing
    them (busy_s) and that time over the ``window_s`` between the snapshots (utilization: 1.0
    per instance busy all the time)."""
    out: dict[str, dict[str, Any]] = {}
    for model, end in after.items():
        start = before.get(model, {})
        phases = {}
        for phase in ("queue", "compute_input", "compute_infer", "compute_output", "success"):
            count = _ns(end, phase)[0] - _ns(start, phase)[0]
            ns = _ns(end, phase)[1] - _ns(start, phase)[1]
            phases[f"{phase}_ms"] = ns / count / 1e6 if count else 0.0
        executions = int(end.get("execution_count", 0)) - int(start.get("execution_count", 0))
        if executions == 0 and _ns(end, "success")[0] == _ns(start, "success")[0]:
            continue  # not on this scenario's path (a runtime's unused model)
        inferences = int(end.get("inference_count", 0)) - int(start.get("inference_count", 0))
        sizes: dict[int, int] = {}
        busy_ns = 0
        earlier = {int(b["batch_size"]): b for b in start.get("batch_stats", [])}
        for batch in end.get("batch_stats", []):
            size = int(batch["batch_size"])
            count = int(batch.get("compute_infer", {}).get("count", 0))
            count -= int(earlier.get(size, {}).get("compute_infer", {}).get("count", 0))
            if count:
                sizes[size] = count
            for phase in ("compute_input", "compute_infer", "compute_output"):
                busy_ns += int(batch.get(phase, {}).get("ns", 0))
                busy_ns -= int(earlier.get(size, {}).get(phase, {}).get("ns", 0))
        out[model] = {
            "requests": _ns(end, "success")[0] - _ns(start, "success")[0],
            "executions": executions,
            "mean_batch": inferences / executions if executions else 0.0,
            "batch_sizes": sizes,
            "busy_s": busy_ns / 1e9,
            "utilization": busy_ns / 1e9 / window_s if window_s > 0 else 0.0,
        } | phases
    return out


def metrics_page(metrics_url: str | None) -> str:
    """Triton's Prometheus metrics text, or "" where there is none to read."""
    if not metrics_url:
        return ""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def gpu_metrics(metrics_url: str | None) -> dict[str, float]:
    """GPU utilisation (0..1) and memory used (bytes) from Triton's metrics endpoint; empty
    where no GPU is reported."""
    return parse_gpu_metrics(metrics_page(metrics_url))


def parse_engine_metrics(text: str) -> dict[tuple[str, str, str], float]:
    """The generation engines' counters: (model, phase, seconds|calls|rows) -> value."""
    found: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        match = _ENGINE.match(line)
        if match:
            labels = dict(_LABEL.findall(match.group(2)))
            key = (labels.get("model", ""), labels.get("phase", ""), match.group(1))
            found[key] = float(match.group(3))
    return found


def engine_delta(
    before: dict[tuple[str, str, str], float],
    after: dict[tuple[str, str, str], float],
    window_s: float,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and phase of a generation engine, over a point: calls, ms per call, rows
    per call (batch rows) and utilisation (time in that phase over the window)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model, phase in sorted({(m, p) for m, p, _ in after}):
        value = {
            name: after.get((model, phase, name), 0.0) - before.get((model, phase, name), 0.0)
            for name in ("seconds", "calls", "rows")
        }
        if value["calls"] <= 0:
            continue
        out.setdefault(model, {})[phase] = {
            "calls": value["calls"],
            "ms_per_call": value["seconds"] * 1000 / value["calls"],
            "rows_per_call": value["rows"] / value["calls"],
            "utilization": value["seconds"] / window_s if window_s > 0 else 0.0,
        }
    return out


def parse_gpu_metrics(text: str) -> dict[str, float]:
    """Sum of ``nv_gpu_utilization`` and ``nv_gpu_memory_used_bytes`` over the GPUs in a
    Prometheus text page."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match:
            found[match.group(1)] = found.get(match.group(1), 0.0) + float(match.group(2))
    return found
