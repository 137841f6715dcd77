"""``vlpserve bench``: scenarios under closed- and open-loop load against a running server or
one it starts, Triton's own breakdown, and in-process baselines of the same checkpoints."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from vlpserve.benchmarks import baselines, pinning, triton_stats
from vlpserve.benchmarks import report as reports
from vlpserve.benchmarks.load import Point, closed_loop, open_loop, sender
from vlpserve.benchmarks.photos import photo_corpus
from vlpserve.benchmarks.scenarios import PHOTO_SCENARIOS, Scenario, build_scenarios
from vlpserve.errors import ConfigError
from vlpserve.export.checkpoints import Size
from vlpserve.export.common import Precision
from vlpserve.export.report import ExportReport
from vlpserve.layout import ExportFolder
from vlpserve.model_repository.config import Device, Preprocess
from vlpserve.model_repository.placement import Layout

logger = logging.getLogger(__name__)

ALL_SCENARIOS = (
    "clip_text",
    "clip_image",
    "clip_text_openai",
    "clip_image_openai",
    "clip_text_http",
    "clip_image_http",
    "clip_image_tensor",
    "siglip_text",
    "siglip_image",
    "groupvit_segment",
    "blip_caption",
    "blip_caption_beam3",
    "blip_itm",
    "blip_vqa",
    *PHOTO_SCENARIOS,
)
CHECKPOINT_OF = {
    "clip_text": "clip",
    "clip_image": "clip",
    "clip_text_openai": "clip",
    "clip_image_openai": "clip",
    "clip_text_http": "clip",
    "clip_image_http": "clip",
    "clip_image_tensor": "clip",
    "siglip_text": "siglip",
    "siglip_image": "siglip",
    "groupvit_segment": "groupvit",
    "blip_caption": "blip-caption",
    "blip_caption_beam3": "blip-caption",
    "blip_itm": "blip-itm",
    "blip_vqa": "blip-vqa",
    "clip_image_photo": "clip",
    "clip_image_12mpx": "clip",
    "siglip_image_photo": "siglip",
    "groupvit_segment_photo": "groupvit",
    "blip_caption_photo": "blip-caption",
    "blip_itm_photo": "blip-itm",
}


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """What to measure and how long.

    ``url`` names a running server; without it the suite deploys ``size`` checkpoints
    (hub weights where reachable, seeded ones otherwise) in ``workdir`` and serves them.
    """

    scenarios: tuple[str, ...] = ("clip_text", "clip_image")
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    rate_rps: float | None = None
    warmup_s: float = 2.0
    duration_s: float = 10.0
    max_total_s: float = 3600.0
    request_timeout_s: float = 120.0
    url: str | None = None
    metrics_url: str | None = None
    workdir: Path = Path("build/bench")
    out: Path = Path("build/bench/report")
    size: Size = Size.BASE
    # Embedded deployment: "cpu" or "gpu"; default: gpu where ONNX Runtime's CUDA provider works.
    device: str | None = None
    baselines: bool = True
    precision: Precision = Precision.FP32  # of the graphs the embedded deployment exports
    # The embedded deployment's graph instances and their ONNX Runtime threads (repo build's
    # --encoder-instances / --encoder-threads); None: auto, chosen by the server for its CPUs.
    encoder_instances: int | None = None
    encoder_threads: int | None = None
    layout: Path | None = None  # repo build's --layout
    preprocess: str = "host"  # repo build's --preprocess
    decode: str = "exact"  # repo build's --decode
    max_queue_delay_us: int | None = None  # repo build's --max-queue-delay-us
    command: str = ""
    models: dict[str, str] = field(default_factory=dict)
    soak_s: float | None = None  # a soak instead of load points (concurrency: its first)
    soak_window_s: float = 60.0
    server_pid: int | None = None  # with url: a tritonserver on this machine, for its memory
    openai_url: str | None = None  # the front door's base URL (started here when embedded)
    # The embedded server's CPUs: the load generator runs on the others and the in-process
    # baselines on these (empty: everything shares every CPU).
    server_cpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.scenarios) - set(ALL_SCENARIOS)
        if unknown:
            raise ConfigError(f"unknown scenarios {sorted(unknown)}; known: {ALL_SCENARIOS}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError("concurrency values must be >= 1")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.max_total_s <= 0:
            raise ConfigError("durations must be positive")
        if self.rate_rps is not None and self.rate_rps <= 0:
            raise ConfigError("rate_rps must be > 0")
        if self.soak_s is not None and (self.soak_s <= 0 or self.soak_window_s <= 0):
            raise ConfigError("soak_s and soak_window_s must be > 0")
        if self.server_cpus:
            if self.url:
                raise ConfigError("server_cpus pins the server the bench starts: not with url")
            pinning.split(self.server_cpus)  # leaves CPUs to the load generator
            object.__setattr__(self, "server_cpus", tuple(sorted(set(self.server_cpus))))
        object.__setattr__(self, "size", Size(self.size))
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "workdir", Path(self.workdir))
        object.__setattr__(self, "out", Path(self.out))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "platform": platform.platform()}


def versions() -> dict[str, str]:
    from vlpserve.export.common import library_versions

    found = library_versions()
    from importlib.metadata import PackageNotFoundError, version

    for name in ("tritonclient", "nvidia-pytriton", "grpcio"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


async def _points(
    url: str,
    scenario: Scenario,
    options: BenchOptions,
    stats_clients: dict[str, Any],
    deadline: float,
) -> list[Point]:
    """Every load point of a scenario; with several replicas (``url`` a,b,c) the client
    spreads over them and each point says the share every replica served."""
    client = _client(scenario.family, url, options)
    send = sender(client, scenario, timeout_s=options.request_timeout_s)
    points = []
    try:
        loads: list[tuple[str, float]] = [("closed", c) for c in options.concurrency]
        if options.rate_rps:
            loads.append(("open", options.rate_rps))
        for mode, value in loads:
            if time.monotonic() + options.warmup_s + options.duration_s > deadline:
                logger.warning("%s: time budget spent, %s %s skipped", scenario.name, mode, value)
                continue
            before = {
                r: triton_stats.snapshot(c, scenario.stats_models) for r, c in stats_clients.items()
            }
            engine_before = triton_stats.parse_engine_metrics(
                triton_stats.metrics_page(options.metrics_url)
            )
            window_start = time.monotonic()
            if mode == "closed":
                point = await closed_loop(
                    send, int(value), warmup_s=options.warmup_s, duration_s=options.duration_s
                )
            else:
                point = await open_loop(
                    send, value, warmup_s=options.warmup_s, duration_s=options.duration_s
                )
            after = {
                r: triton_stats.snapshot(c, scenario.stats_models) for r, c in stats_clients.items()
            }
            window_s = time.monotonic() - window_start
            deltas = {r: triton_stats.delta(before[r], after[r], window_s) for r in after}
            point.triton = deltas[next(iter(deltas))]
            if len(deltas) > 1:
                served = {
                    r: d.get(scenario.model, {}).get("requests", 0) for r, d in deltas.items()
                }
                total = sum(served.values()) or 1
                point.replicas = {r: n / total for r, n in served.items()}
            page = triton_stats.metrics_page(options.metrics_url)
            point.gpu = triton_stats.parse_gpu_metrics(page)
            engine = triton_stats.engine_delta(
                engine_before, triton_stats.parse_engine_metrics(page), window_s
            )
            point.engine = {m: v for m, v in engine.items() if m in scenario.stats_models}
            points.append(point)
    finally:
        await client.close()
    return points


def _pixel_values(export_dir: Path, photos: dict[str, bytes]) -> np.ndarray:
    from vlpserve.model_repository.runtime.images import ImagePreprocessing

    steps = ImagePreprocessing.from_file(ExportFolder(export_dir).preprocessor_file)
    return np.stack([steps.preprocess(data, i) for i, data in enumerate(photos.values())])


def _baselines(
    wanted: list[str],
    deployed: dict[str, tuple[str, Path]],
    photos: dict[str, bytes],
    corpus: dict[str, bytes] | None = None,
) -> dict[str, dict[str, dict[int, float]]]:
    out: dict[str, dict[str, dict[int, float]]] = {}
    if "clip" in deployed and {"clip_text", "clip_image", "clip_image_tensor"} & set(wanted):
        source, export_dir = deployed["clip"]
        found = baselines.dual_encoder("clip", source, export_dir, photos)
        out |= {k: v for k, v in found.items() if k in wanted}
        if "clip_image_tensor" in wanted:  # pixel values in: the tensor-level baselines
            image = found["clip_image"]
            out["clip_image_tensor"] = {k: v for k, v in image.items() if k != "onnxruntime_e2e"}
    if "siglip" in deployed and {"siglip_text", "siglip_image"} & set(wanted):
        source, export_dir = deployed["siglip"]
        found = baselines.dual_encoder("siglip", source, export_dir, photos)
        out |= {k: v for k, v in found.items() if k in wanted}
    for name, family, only in (
        ("clip_image_photo", "clip", None),
        ("clip_image_12mpx", "clip", "camera_12mpx.jpg"),
        ("siglip_image_photo", "siglip", None),
    ):
        if family in deployed and name in wanted and corpus:
            sent = [corpus[only]] if only else list(corpus.values())
            out[name] = baselines.photo_embedding(*deployed[family], sent)
    if "groupvit" in deployed and "groupvit_segment" in wanted:
        out |= baselines.groupvit_segment(*deployed["groupvit"], photos)
    if "blip-caption" in deployed:
        for name, beams in (("blip_caption", 1), ("blip_caption_beam3", 3)):
            if name in wanted:
                source, export_dir = deployed["blip-caption"]
                out[name] = baselines.blip_generate(
                    "caption", source, photos, max_new_tokens=20, num_beams=beams
                ) | {"onnxruntime": baselines.blip_generate_ort(
                    export_dir, photos, max_new_tokens=20, num_beams=beams
                )}  # fmt: skip
    if "blip-itm" in deployed and "blip_itm" in wanted:
        out["blip_itm"] = baselines.blip_itm(*deployed["blip-itm"], photos)
    if "blip-vqa" in deployed and "blip_vqa" in wanted:
        source, export_dir = deployed["blip-vqa"]
        out["blip_vqa"] = baselines.blip_generate("vqa", source, photos, max_new_tokens=10) | {
            "onnxruntime": baselines.blip_generate_ort(export_dir, photos, max_new_tokens=10)
        }
    return out


def run_bench(
    options: BenchOptions, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run the suite; write JSON, Markdown and PNG plots into ``options.out``.

    Returns:
        The report (as written to ``bench.json``).
    """
    import tritonclient.grpc as grpcclient

    from vlpserve.export.samples import photo_bytes
    from vlpserve.model_repository.prepare import prepare_repository
    from vlpserve.serve import TritonServer

    started = time.monotonic()
    deadline = started + options.max_total_s
    photos = photo_bytes()
    deployed: dict[str, tuple[str, Path]] = {}
    server = None
    url, metrics_url = options.url, options.metrics_url
    if url is None:
        names = tuple(dict.fromkeys(CHECKPOINT_OF[s] for s in options.scenarios))
        progress(f"deploying {', '.join(names)} ({options.size.value})")
        repo, deployed = prepare_repository(
            options.workdir,
            names,
            size=options.size,
            models=options.models,
            device=Device(options.device or _default_device()),
            precision=options.precision,
            encoder_instances=options.encoder_instances,
            encoder_threads=_encoder_threads(options),
            preprocess=Preprocess(options.preprocess),
            max_queue_delay_us=options.max_queue_delay_us,
            decode=options.decode,
            layout=Layout.read(options.layout) if options.layout else None,
        )
        cpus = frozenset(options.server_cpus) or None
        server = TritonServer(repo, startup_timeout_s=600, cpus=cpus).start()
        url, metrics_url = server.grpc_url, server.metrics_url
    options = _with(options, metrics_url=metrics_url)
    pixels = _pixel_values(deployed["clip"][1], photos) if "clip" in deployed else None
    corpus = None
    if set(options.scenarios) & set(PHOTO_SCENARIOS):
        progress("making the photo corpus")
        corpus = photo_corpus()
    known = build_scenarios(photos, pixels, corpus)
    if options.soak_s:
        try:
            return _soak(options, url, known, server, progress)
        finally:
            if server is not None:
                server.stop()
    front_door = None
    wanted = [known[s] for s in options.scenarios if s in known]
    if any(s.front_door for s in wanted) and not options.openai_url and server:
        front_door = FrontDoor(url)
        options = _with(options, openai_url=front_door.url)
    stats_clients = {u: grpcclient.InferenceServerClient(u) for u in url.split(",")}
    stats_client = next(iter(stats_clients.values()))
    result: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "size": options.size.value,
            "concurrency": list(options.concurrency),
            "rate_rps": options.rate_rps,
            "warmup_s": options.warmup_s,
            "duration_s": options.duration_s,
            "command": options.command,
            "device": options.device or _default_device(),
            "precision": options.precision.value if deployed else "as served",
            "encoder_instances": _given(options.encoder_instances, deployed),
            "encoder_threads": _given(_encoder_threads(options), deployed),
            "layout": str(options.layout) if options.layout else _given(None, deployed),
            "placed": dict(server.placed) if server is not None else {},
            "preprocess": options.preprocess if deployed else "as served",
            "max_queue_delay_us": _given(options.max_queue_delay_us, deployed),
            "url": options.url or "embedded tritonserver",
            **pinning.settings(options.server_cpus),
        },
        "graphs": graph_accuracy(deployed),
        "scenarios": {},
        "absent": {},
        "baselines": {},
    }
    load_cpus = pinning.split(options.server_cpus)
    try:
        for name in options.scenarios:
            scenario = known.get(name)
            if scenario is None:
                result["absent"][name] = "its tensors come from a local export: run without url"
                continue
            if not stats_client.is_model_ready(scenario.model):
                result["absent"][name] = f"{scenario.model} not served"
                continue
            if scenario.front_door and not options.openai_url:
                result["absent"][name] = "give the front door's --openai-url"
                continue
            with pinning.pinned(load_cpus):
                progress(f"{name}: concurrency {list(options.concurrency)}")
                points = asyncio.run(_points(url, scenario, options, stats_clients, deadline))
            result["scenarios"][name] = {
                "model": scenario.model,
                "description": scenario.description,
                "points": [p.as_dict() for p in points],
            }
    finally:
        for each in stats_clients.values():
            each.close()
        if front_door is not None:
            front_door.stop()
        if server is not None:
            server.stop()
    if options.baselines and deployed:
        # After the server stops: the baselines then have the machine (CPU and memory) alone.
        with pinning.pinned(options.server_cpus):
            progress("in-process baselines")
            result["baselines"] = _baselines(list(result["scenarios"]), deployed, photos, corpus)
    result["comparisons"] = reports.comparisons(result)
    result["elapsed_s"] = time.monotonic() - started
    files = reports.write(result, options.out)
    result["files"] = {k: str(v) for k, v in files.items()}
    return result


def _soak(
    options: BenchOptions,
    url: str,
    known: dict[str, Scenario],
    server: Any,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Every chosen scenario at once for ``soak_s`` seconds (see benchmarks.soak)."""
    from vlpserve.benchmarks import soak

    chosen = [
        known[name]
        for name in options.scenarios
        if name in known and (not known[name].front_door or options.openai_url)
    ]
    if not chosen:
        raise ConfigError("none of the soak's scenarios is served")
    concurrency = options.concurrency[0]
    progress(f"soak: {len(chosen)} scenarios, concurrency {concurrency}, {options.soak_s:.0f} s")

    async def run() -> soak.SoakRun:
        clients = {family: _client(family, url, options) for family in {s.family for s in chosen}}
        try:
            pairs = [(scenario, clients[scenario.family]) for scenario in chosen]
            return await soak.soak(
                pairs,
                concurrency=concurrency,
                duration_s=float(options.soak_s or 0),
                timeout_s=options.request_timeout_s,
                memory=_memory_of(server, options.server_pid),
            )
        finally:
            for client in clients.values():
                await client.close()

    started = datetime.now(UTC).isoformat(timespec="seconds")
    found = machine()
    with pinning.pinned(pinning.split(options.server_cpus)):
        run_soak = asyncio.run(run())
    report = soak.summarize(
        run_soak,
        window_s=options.soak_window_s,
        settings={
            "started": started,
            "machine": f"{found['cpu']} ({found['cores']} cores), GPU: {found['gpu'] or 'none'}",
            "concurrency": concurrency,
            "scenarios": [s.name for s in chosen],
            "size": options.size.value,
            "command": options.command,
            "url": options.url or "embedded tritonserver",
            **pinning.settings(options.server_cpus),
        },
    )
    files = soak.write(report, options.out)
    report["files"] = {k: str(v) for k, v in files.items()}
    return report


def _client(family: str, url: str, options: BenchOptions) -> Any:
    """The client a scenario of ``family`` sends with: vlpserve's AsyncClient, or the
    official openai client for the front door. No retries: a failed request is counted as
    an error, not hidden in a longer latency."""
    if family == "openai":
        import openai

        return openai.AsyncOpenAI(
            base_url=options.openai_url, api_key="bench", max_retries=0, timeout=60.0
        )
    if family == "http":
        from vlpserve.benchmarks.http_client import JSONPoster

        assert options.openai_url is not None  # front-door scenarios run only with one
        return JSONPoster(options.openai_url)
    from vlpserve.client import AsyncClient

    # Several replicas (a,b,c): one client spreads over them, failing over as a service would.
    urls = url.split(",")
    return AsyncClient(
        urls if len(urls) > 1 else url,
        family=family,
        timeout_s=options.request_timeout_s,
        retries=0 if len(urls) == 1 else 3,
    )


class FrontDoor:
    """``vlpserve openai`` over ``triton`` in a process of its own (not this one's event loop
    and GIL, which drive the load), up once its health answers."""

    def __init__(self, triton: str, timeout_s: float = 60) -> None:
        import subprocess
        import sys
        import urllib.request

        from vlpserve.serve import free_port

        port = free_port()
        self.url = f"http://127.0.0.1:{port}/v1"
        command = [sys.executable, "-m", "vlpserve", "openai", "--triton", triton]
        self.process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise ConfigError("the OpenAI front door did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def _memory_of(server: Any, pid: int | None) -> Callable[[], dict[str, int]] | None:
    """Where the soak reads the server's memory: the embedded server, or a local pid."""
    from vlpserve.serve.supervisor import memory

    if server is not None:
        return server.memory  # type: ignore[no-any-return]
    return (lambda: memory(pid)) if pid else None


def graph_accuracy(deployed: dict[str, tuple[str, Path]]) -> dict[str, dict[str, Any]]:
    """Per deployed checkpoint and graph: precision and the export's parity against PyTorch
    fp32 (worst cosine and max abs diff over its checks), i.e. what a variant costs in
    accuracy."""
    out: dict[str, dict[str, Any]] = {}
    for name, (_, export_dir) in deployed.items():
        for graph, entry in ExportReport.read(export_dir).graphs.items():
            out.setdefault(name, {})[graph] = {
                "precision": entry.precision,
                "cosine_min": entry.worst_cosine,
                "max_abs_diff": entry.worst_abs_diff,
            }
    return out


def _default_device() -> str:
    """Where the embedded deployment's graphs run by default: the GPU where ONNX Runtime,
    which runs them, can use one (its CUDA provider tried on a tiny graph), else the CPU.
    PyTorch seeing a GPU is not enough: a CPU build of ONNX Runtime would serve on the CPU."""
    from vlpserve.env import providers
    from vlpserve.ort import CUDA

    return "gpu" if any(p.works for p in providers() if p.name == CUDA) else "cpu"


def _encoder_threads(options: BenchOptions) -> int | None:
    """The encoders' threads: as given, or with instances and server CPUs given, those CPUs
    shared between the instances (ORT's default would count the machine's cores); None:
    auto, which the server sizes from the CPUs it is pinned to."""
    if options.encoder_threads is not None or not options.encoder_instances:
        return options.encoder_threads
    if not options.server_cpus:
        return None
    return max(1, len(options.server_cpus) // options.encoder_instances)


def _given(value: object, deployed: object) -> object:
    """A setting of the embedded deployment as the report states it."""
    if not deployed:
        return "as served"
    return "auto" if value is None else value


def _with(options: BenchOptions, **changes: Any) -> BenchOptions:
    import dataclasses

    return dataclasses.replace(options, **changes)
