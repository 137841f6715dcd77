"""``vlpserve gpu-check``: the one prepared measurement for a session lent a GPU machine for
a few minutes (and, with ``--size tiny``, its CPU smoke in CI).

It is the bench suite with one fixed plan: CLIP ViT-B/32 and BLIP base with seeded weights
(the hub is out of reach there), exported in fp16 and pre-processed on the device
(``--preprocess device``) where CUDA is (fp32 and host on CPU), served by the embedded
tritonserver and measured over gRPC, against Hugging Face PyTorch eager (fp16 on the GPU)
and ONNX Runtime in process on the same graphs (the CUDA provider when
onnxruntime-gpu is installed). It writes the bench's report and ``gpu_check.json`` /
``gpu_check.md``: the issue's three targets, each measured, missed, or not measurable with
what the machine has.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlpserve.benchmarks.report import best_point
from vlpserve.benchmarks.suite import BenchOptions, cuda_available, run_bench
from vlpserve.export.checkpoints import Size
from vlpserve.export.common import Precision

SCENARIOS = ("clip_image_tensor", "clip_text", "blip_caption")
CONCURRENCY = (1, 32)
IMAGES_VS_ORT = 0.8  # served CLIP images (tensor level) against in-process ONNX Runtime
TEXT_ROUND_TRIP_MS = 3.0  # batch-1 text, p50
CAPTIONS_VS_HF = 5.0  # BLIP captions at c=32 against Hugging Face generate at batch 1


def options(
    out: Path,
    *,
    size: Size = Size.BASE,
    workdir: Path | None = None,
    warmup_s: float = 2.0,
    duration_s: float = 8.0,
    budget_s: float = 360.0,
    command: str = "vlpserve gpu-check",
) -> BenchOptions:
    """The bench's options for the check (fp16 graphs where CUDA is)."""
    return BenchOptions(
        scenarios=SCENARIOS,
        concurrency=CONCURRENCY,
        warmup_s=warmup_s,
        duration_s=duration_s,
        max_total_s=budget_s,
        workdir=workdir or out / "work",
        out=out,
        size=size,
        baselines=True,
        precision=Precision.FP16 if cuda_available() else Precision.FP32,
        # BLIP's images resized and normalised on the GPU, next to its vision encoder.
        preprocess="device" if cuda_available() else "host",
        command=command,
    )


def _point(report: dict[str, Any], scenario: str, concurrency: int) -> dict[str, Any] | None:
    points = report.get("scenarios", {}).get(scenario, {}).get("points", [])
    found = [p for p in points if p["mode"] == "closed" and p["concurrency"] == concurrency]
    return found[0] if found else None


def _target(
    name: str, goal: str, value: float | None, passed: bool | None, how: str
) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": value, "met": passed, "how": how}


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's three GPU targets from a bench report; ``met`` is None where a figure is
    missing (a scenario skipped, a baseline absent)."""
    rows = []
    served = report.get("scenarios", {}).get("clip_image_tensor", {}).get("points", [])
    best = best_point(served) if served else None
    ort = report.get("baselines", {}).get("clip_image_tensor", {}).get("onnxruntime", {})
    ratio = best["items_per_s"] / max(ort.values()) if best and ort else None
    rows.append(
        _target(
            "served CLIP images (tensor level) vs in-process ONNX Runtime, same graph",
            f">= {IMAGES_VS_ORT}x",
            ratio,
            None if ratio is None else ratio >= IMAGES_VS_ORT,
            "best served images/s over the best ONNX Runtime batch",
        )
    )
    text = _point(report, "clip_text", 1)
    p50 = text["latency_ms"]["p50"] if text and text["requests"] else None
    rows.append(
        _target(
            "batch-1 text round trip",
            f"<= {TEXT_ROUND_TRIP_MS} ms",
            p50,
            None if p50 is None else p50 <= TEXT_ROUND_TRIP_MS,
            "p50 at concurrency 1, over gRPC",
        )
    )
    captions = _point(report, "blip_caption", 32)
    hf = report.get("baselines", {}).get("blip_caption", {}).get("hf_eager", {})
    hf_batch1 = hf.get(1) or hf.get("1")
    ratio = captions["items_per_s"] / hf_batch1 if captions and hf_batch1 else None
    rows.append(
        _target(
            "BLIP captions at concurrency 32 vs Hugging Face generate at batch 1",
            f">= {CAPTIONS_VS_HF}x",
            ratio,
            None if ratio is None else ratio >= CAPTIONS_VS_HF,
            "served captions/s at c=32 over HF captions/s at batch 1 (20 new tokens, greedy)",
        )
    )
    return rows


def markdown(report: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    machine = report["machine"]
    lines = [
        "# vlpserve gpu-check",
        "",
        f"Machine: {machine['cpu']} ({machine['cores']} cores), GPU: {machine['gpu'] or 'none'}; "
        f"precision {report['settings'].get('precision')}; size {report['settings']['size']}; "
        f"command: `{report['settings']['command']}`. Every figure: bench.md beside this file.",
        "",
        "| target | goal | measured | met | how |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        value = "not measured" if row["measured"] is None else f"{row['measured']:.2f}"
        met = {None: "-", True: "yes", False: "no"}[row["met"]]
        lines.append(f"| {row['target']} | {row['goal']} | {value} | {met} | {row['how']} |")
    return "\n".join(lines) + "\n"


def run_gpu_check(
    bench: BenchOptions, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run the check; returns {"report": the bench report, "targets": rows, "files": ...}."""
    report = run_bench(bench, progress)
    rows = targets(report)
    json_path = bench.out / "gpu_check.json"
    md_path = bench.out / "gpu_check.md"
    json_path.write_text(json.dumps({"targets": rows, "machine": report["machine"]}, indent=2))
    md_path.write_text(markdown(report, rows))
    return {"report": report, "targets": rows, "files": {"json": json_path, "markdown": md_path}}
