"""The 500 ms stalls of batch-1 requests: how often they happen, with which queue policy,
instance count and model (every stall is Triton's wait, not the model's work).

Run from the repository root after ``make install``:
    .venv/bin/python benchmarks/results/2026-12-06-tail-stalls.py [--size tiny|base]
        [--requests N] [--seconds S] [VARIANTS...]

Variants: ``policy`` (a queue policy: max_queue_size 256 and allow_timeout_override, what
repo build wrote before), ``prefetch`` (no queue policy: repo build's default now),
``policy-2`` (the policy and two instances of every model). Each runs closed loops at
concurrency 1 and 4 against every served task of CLIP, GroupViT and BLIP (tiny: N requests
per point; base: S seconds per point, CLIP only, concurrency 1, 4 and 16) with vlpserve's
Client, and prints requests over 200 ms, p50, p99, p99.9 and max, and items/s.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vlpserve.client import Client
from vlpserve.export import ExportOptions, export_blip, export_clip, export_groupvit
from vlpserve.export.checkpoints import Size, build_blip, build_clip, build_groupvit
from vlpserve.export.common import Precision
from vlpserve.export.samples import photo_bytes
from vlpserve.model_repository import RepositoryOptions, build_repository
from vlpserve.model_repository.config import read_config
from vlpserve.serve import TritonServer

VARIANTS = ("policy", "prefetch", "policy-2")
PHOTO = photo_bytes()["rocket.jpg"]
TASKS: dict[str, tuple[str, Callable[[Client], object]]] = {
    "clip_text": ("clip", lambda c: c.embed_texts(["a photo of a cat"])),
    "clip_image": ("clip", lambda c: c.embed_images([PHOTO])),
    "groupvit_segment": ("groupvit", lambda c: c.segment(PHOTO, ["a rocket", "sky", "grass"])),
    "blip_itm": ("clip", lambda c: c.match([PHOTO], ["a rocket"])),
    "blip_caption": ("clip", lambda c: c.caption([PHOTO], max_new_tokens=8)),
}


def exports(work: Path, size: Size, precision: Precision) -> list[Path]:
    found = [work / "export-clip"]
    if not found[0].exists():
        checkpoint = build_clip(work / "clip", size=size, seed=0)
        export_clip(ExportOptions(model=str(checkpoint), out=found[0], precision=precision))
    if size is Size.BASE:
        return found
    for name, build, export in (
        ("groupvit", build_groupvit, export_groupvit),
        ("blip-caption", lambda out, seed: build_blip(out, kind="caption", seed=seed), export_blip),
        ("blip-itm", lambda out, seed: build_blip(out, kind="itm", seed=seed), export_blip),
    ):
        out = work / f"export-{name}"
        if not out.exists():
            export(ExportOptions(model=str(build(work / name, seed=0)), out=out))
        found.append(out)
    return found


def repository(work: Path, variant: str, sources: list[Path]) -> Path:
    repo = work / f"repo-{variant}"
    instances = 2 if variant.endswith("-2") else 1
    for source in sources:
        options = RepositoryOptions(
            export_dir=source,
            out=repo,
            encoder_instances=instances,
            preprocess_instances=instances,
            max_queue_size=256 if variant.startswith("policy") else 0,
        )
        build_repository(options)
    for path in repo.glob("*/config.pbtxt"):  # every batched model, as the builder wrote it
        config = read_config(path)
        if config.HasField("dynamic_batching"):
            policy = config.dynamic_batching.HasField("default_queue_policy")
            assert policy == variant.startswith("policy"), path
    return repo


def closed_loop(
    url: str, task: str, concurrency: int, *, requests: int = 0, seconds: float = 0.0
) -> tuple[np.ndarray, float]:
    family, call = TASKS[task]
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def run() -> None:
        found: list[float] = []
        with Client(url, family=family, timeout_s=120, retries=0) as client:
            while (
                (len(found) < requests // concurrency) if requests else (time.perf_counter() < stop)
            ):
                started = time.perf_counter()
                call(client)
                found.append(time.perf_counter() - started)
        with lock:
            latencies.extend(found)

    started = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return np.array(latencies) * 1e3, len(latencies) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--size", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    parser.add_argument("--requests", type=int, default=1000, help="per point (tiny)")
    parser.add_argument("--seconds", type=float, default=60.0, help="per point (base)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    size = Size(args.size)
    work = Path(args.workdir or tempfile.mkdtemp())
    sources = exports(work, size, Precision(args.precision))
    tasks = ["clip_text", "clip_image"] if size is Size.BASE else list(TASKS)
    levels = (1, 4, 16) if size is Size.BASE else (1, 4)
    print(
        "| variant | task | c | requests | over 200 ms | p50 ms | p99 ms | p99.9 ms | max ms |"
        " items/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for variant in args.variants:
        with TritonServer(repository(work, variant, sources), startup_timeout_s=600) as server:
            for task in tasks:
                for concurrency in levels if task.startswith("clip") else (1,):
                    closed_loop(server.grpc_url, task, concurrency, requests=4 * concurrency)
                    if size is Size.BASE:
                        ms, rate = closed_loop(
                            server.grpc_url, task, concurrency, seconds=args.seconds
                        )
                    else:
                        count = args.requests if task.startswith("clip") else args.requests // 4
                        ms, rate = closed_loop(server.grpc_url, task, concurrency, requests=count)
                    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
                    print(
                        f"| {variant} | {task} | {concurrency} | {len(ms)} | "
                        f"{int((ms > 200).sum())} | {p50:.2f} | {p99:.2f} | {p999:.1f} | "
                        f"{ms.max():.1f} | {rate:.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
