"""``vlpserve gpu-check``: the one prepared measurement for a session lent a GPU machine for
a few minutes (and, with ``--size tiny``, its CPU smoke in CI).

It is the bench suite with one fixed plan: CLIP ViT-B/32 and BLIP base with seeded weights
(the hub is out of reach there), exported in fp16 and pre-processed on the device
(``--preprocess device``) where the served graphs run on the GPU (fp32 and host on CPU),
served by the embedded tritonserver and measured over gRPC, against Hugging Face PyTorch
eager (fp16 on the GPU) and ONNX Runtime in process on the same graphs. It writes the bench's
report and ``gpu_check.json`` / ``gpu_check.md``: the issue's three targets, each measured,
missed, or not measured with the reason.

Where the graphs run is decided by what will really run them: ONNX Runtime's CUDA provider,
tried on a tiny graph in this environment (the embedded server's stubs use its Python), not
by whether PyTorch sees a GPU. A machine whose PyTorch sees a GPU while its ONNX Runtime is a
CPU build (the lent GPU machines' image) would serve on the CPU; the check then measures
nothing and says why, rather than label CPU figures as a GPU's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlpserve.benchmarks.report import best_point
from vlpserve.benchmarks.suite import BenchOptions, machine, run_bench, versions
from vlpserve.export.checkpoints import Size
from vlpserve.export.common import Precision

SCENARIOS = ("clip_image_tensor", "clip_text", "blip_caption")
CONCURRENCY = (1, 32)
IMAGES_VS_ORT = 0.8  # served CLIP images (tensor level) against in-process ONNX Runtime
TEXT_ROUND_TRIP_MS = 3.0  # batch-1 text, p50
CAPTIONS_VS_HF = 5.0  # BLIP captions at c=32 against Hugging Face generate at batch 1


@dataclass(frozen=True)
class Hardware:
    """What the served graphs will run on: the GPU PyTorch sees (None: none), and whether
    ONNX Runtime's CUDA provider works here (``why_not`` when it does not)."""

    gpu: str | None
    onnxruntime_cuda: bool
    why_not: str = ""

    @property
    def serves_on_gpu(self) -> bool:
        return self.onnxruntime_cuda

    @property
    def unmeasurable(self) -> str:
        """Why the GPU targets cannot be measured here ("" if they can, or if there is no GPU
        and the check is a CPU smoke)."""
        if self.gpu is None or self.onnxruntime_cuda:
            return ""
        return (
            f"the served graphs would run on the CPU, not the {self.gpu}: ONNX Runtime's "
            f"CUDA provider does not work here ({self.why_not}); install onnxruntime-gpu "
            "(benchmarks/gpu_carry.py carries it to a machine without a network)"
        )


def hardware() -> Hardware:
    """The GPU and ONNX Runtime's CUDA provider, as this environment has them."""
    from vlpserve.env import providers
    from vlpserve.ort import CUDA

    gpu = machine()["gpu"]
    cuda = next(p for p in providers() if p.name == CUDA)
    return Hardware(gpu=gpu, onnxruntime_cuda=cuda.works, why_not=cuda.why)


def options(
    out: Path,
    *,
    size: Size = Size.BASE,
    workdir: Path | None = None,
    warmup_s: float = 2.0,
    duration_s: float = 8.0,
    budget_s: float = 360.0,
    command: str = "vlpserve gpu-check",
    found: Hardware | None = None,
) -> BenchOptions:
    """The bench's options for the check: fp16 graphs and device pre-processing where ONNX
    Runtime runs them on the GPU, fp32 on the CPU otherwise."""
    on_gpu = (found or hardware()).serves_on_gpu
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
        device="gpu" if on_gpu else "cpu",
        precision=Precision.FP16 if on_gpu else Precision.FP32,
        # BLIP's images resized and normalised on the GPU, next to its vision encoder.
        preprocess="device" if on_gpu else "host",
        command=command,
    )


def _point(report: dict[str, Any], scenario: str, concurrency: int) -> dict[str, Any] | None:
    points = report.get("scenarios", {}).get(scenario, {}).get("points", [])
    found = [p for p in points if p["mode"] == "closed" and p["concurrency"] == concurrency]
    return found[0] if found else None


def _target(
    name: str, goal: str, value: float | None, passed: bool | None, how: str
) -> dict[str, Any]:
    row = {"target": name, "goal": goal, "measured": value, "met": passed, "how": how}
    if value is None:
        row["why_not"] = "its scenario or baseline is missing from the report"
    return row


def not_measured(why: str) -> list[dict[str, Any]]:
    """The three targets, each not measured for ``why``."""
    rows = targets({})
    for row in rows:
        row["why_not"] = why
    return rows


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


def markdown(report: dict[str, Any], rows: list[dict[str, Any]], found: Hardware) -> str:
    box = report["machine"]
    settings = report.get("settings", {})
    served = "GPU (ONNX Runtime's CUDA provider)" if found.serves_on_gpu else "CPU"
    lines = [
        "# vlpserve gpu-check",
        "",
        f"Machine: {box['cpu']} ({box['cores']} cores), GPU: {box['gpu'] or 'none'}; "
        f"served graphs on the {served}; precision {settings.get('precision', '-')}; "
        f"size {settings.get('size', '-')}; command: `{settings.get('command', '-')}`. "
        "Every figure: bench.md beside this file.",
        "",
        "| target | goal | measured | met | how |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        value = (
            f"not measured: {row['why_not']}"
            if row["measured"] is None
            else (f"{row['measured']:.2f}")
        )
        met = {None: "-", True: "yes", False: "no"}[row["met"]]
        lines.append(f"| {row['target']} | {row['goal']} | {value} | {met} | {row['how']} |")
    return "\n".join(lines) + "\n"


def run_gpu_check(
    bench: BenchOptions,
    progress: Callable[[str], None] = lambda _: None,
    found: Hardware | None = None,
) -> dict[str, Any]:
    """Run the check; returns {"report": the bench report, "targets": rows, "files": ...}.

    Where a GPU is but ONNX Runtime cannot use it, nothing is run: every target is not
    measured, with the reason."""
    found = found or hardware()
    bench.out.mkdir(parents=True, exist_ok=True)
    if found.unmeasurable:
        progress(f"not measuring: {found.unmeasurable}")
        report: dict[str, Any] = {"machine": machine(), "versions": versions(), "settings": {}}
        rows = not_measured(found.unmeasurable)
    else:
        report = run_bench(bench, progress)
        rows = targets(report)
    json_path = bench.out / "gpu_check.json"
    md_path = bench.out / "gpu_check.md"
    summary = {
        "targets": rows,
        "machine": report["machine"],
        "hardware": asdict(found),
        "versions": report.get("versions", {}),
    }
    json_path.write_text(json.dumps(summary, indent=2))
    md_path.write_text(markdown(report, rows, found))
    return {"report": report, "targets": rows, "files": {"json": json_path, "markdown": md_path}}
