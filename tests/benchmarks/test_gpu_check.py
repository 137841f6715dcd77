"""`vlpserve gpu-check`: its CPU smoke (the whole plan on tiny models) and its targets read
from known reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlpserve.benchmarks.gpu_check import SCENARIOS, targets
from vlpserve.cli import main


def test_the_check_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "check"
    args = ["gpu-check", "--size", "tiny", "--out", str(out), "--warmup", "0.2"]
    assert main([*args, "--duration", "0.8", "--budget", "120"]) == 0
    found = json.loads((out / "gpu_check.json").read_text())
    assert len(found["targets"]) == 3
    for row in found["targets"]:  # every figure measured here (CPU: fp32 graphs)
        assert row["measured"] is not None and row["measured"] > 0, row
        assert isinstance(row["met"], bool)
    bench = json.loads((out / "bench.json").read_text())
    assert set(bench["scenarios"]) == set(SCENARIOS)
    assert bench["settings"]["precision"] == "fp32" and bench["machine"]["gpu"] is None
    assert "| batch-1 text round trip |" in (out / "gpu_check.md").read_text()


def _closed(concurrency: int, items_per_s: float, p50_ms: float) -> dict[str, Any]:
    return {
        "mode": "closed",
        "concurrency": concurrency,
        "items_per_s": items_per_s,
        "requests": 100,
        "errors": 0,
        "latency_ms": {"p50": p50_ms},
        "window_s": 10.0,
    }


def test_targets_from_known_reports() -> None:
    report = {
        "scenarios": {
            "clip_image_tensor": {"points": [_closed(1, 100.0, 9.0), _closed(32, 900.0, 30.0)]},
            "clip_text": {"points": [_closed(1, 400.0, 2.5), _closed(32, 5000.0, 6.0)]},
            "blip_caption": {"points": [_closed(1, 4.0, 250.0), _closed(32, 40.0, 800.0)]},
        },
        "baselines": {
            "clip_image_tensor": {"onnxruntime": {1: 300.0, 8: 1000.0}},
            "blip_caption": {"hf_eager": {"1": 10.0, "8": 30.0}},  # keys as JSON writes them
        },
    }
    rows = targets(report)
    assert [(round(r["measured"], 2), r["met"]) for r in rows] == [
        (0.9, True),  # 900 / 1000
        (2.5, True),
        (4.0, False),  # 40 / 10
    ]
    report["scenarios"].pop("blip_caption")
    report["baselines"]["clip_image_tensor"] = {}
    rows = targets(report)
    assert [r["met"] for r in rows] == [None, True, None]
    assert rows[0]["measured"] is None and rows[2]["measured"] is None


def test_a_gpu_that_onnx_runtime_cannot_use_is_not_measured(tmp_path: Path) -> None:
    """PyTorch sees a GPU, ONNX Runtime is a CPU build (the lent GPU machines' image): the
    served graphs would run on the CPU, so nothing is run and every target says why."""
    from vlpserve.benchmarks.gpu_check import Hardware, options, run_gpu_check

    found = Hardware(
        gpu="NVIDIA H100 80GB HBM3",
        onnxruntime_cuda=False,
        why_not="not in this ONNX Runtime build (needs onnxruntime-gpu)",
    )
    bench = options(tmp_path / "check", found=found)
    assert (bench.device, bench.precision, bench.preprocess) == ("cpu", "fp32", "host")
    done = run_gpu_check(bench, found=found)
    assert all(row["measured"] is None and row["met"] is None for row in done["targets"])
    assert all("needs onnxruntime-gpu" in row["why_not"] for row in done["targets"])
    text = (tmp_path / "check" / "gpu_check.md").read_text()
    assert "not measured: the served graphs would run on the CPU, not the NVIDIA H100" in text
    assert not (tmp_path / "check" / "bench.json").exists()  # nothing was served
    summary = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    assert summary["hardware"]["onnxruntime_cuda"] is False and summary["versions"]


def test_the_served_device_follows_onnx_runtime() -> None:
    from vlpserve.benchmarks.gpu_check import Hardware, hardware, options

    on_gpu = options(Path("x"), found=Hardware(gpu="NVIDIA H100", onnxruntime_cuda=True))
    assert (on_gpu.device, on_gpu.precision, on_gpu.preprocess) == ("gpu", "fp16", "device")
    here = hardware()  # this machine: no GPU, and ONNX Runtime's CUDA provider says why not
    if here.gpu is None:
        assert not here.unmeasurable and options(Path("x"), found=here).device == "cpu"
    if not here.onnxruntime_cuda:
        assert here.why_not
