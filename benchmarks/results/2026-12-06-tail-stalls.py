"""The 500 ms stalls of batch-1 requests: how often they happen, with which queue policy,
instance count and model, on tiny CLIP (every stall is Triton's wait, not the model's work).

Run from the repository root after ``make install``:
    .venv/bin/python benchmarks/results/2026-12-06-tail-stalls.py [REQUESTS] [VARIANTS...]

Variants: ``policy`` (a default queue policy: max_queue_size, allow_timeout_override: what
repo build wrote before), ``prefetch`` (no queue policy: Triton's batcher may prepare the
next batch while the instance runs), ``policy-2`` (the policy and two instances). Each runs a
closed loop of REQUESTS per concurrency (1 and 4) against clip_text (one Python model) and
clip_image (the pre-processing and encoder ensemble) with tritonclient, and prints requests
over 200 ms, p50, p99, p99.9 and max.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as pb

from vlpserve.export import ExportOptions, export_clip
from vlpserve.export.checkpoints import build_clip
from vlpserve.export.samples import photo_bytes
from vlpserve.model_repository import RepositoryOptions, build_repository
from vlpserve.model_repository.config import read_config, to_text
from vlpserve.serve import TritonServer

VARIANTS = ("policy", "prefetch", "policy-2")


def repository(work: Path, variant: str) -> Path:
    export = work / "export"
    if not export.exists():
        export_clip(ExportOptions(model=str(build_clip(work / "checkpoint", seed=0)), out=export))
    repo = work / f"repo-{variant}"
    instances = 2 if variant.endswith("-2") else 1
    options = RepositoryOptions(
        export_dir=export, out=repo, encoder_instances=instances, preprocess_instances=instances
    )
    build_repository(options)
    for path in repo.glob("*/config.pbtxt"):
        config = read_config(path)
        batching = config.dynamic_batching
        if variant == "prefetch" and config.HasField("dynamic_batching"):
            batching.ClearField("default_queue_policy")
        elif variant.startswith("policy") and config.HasField("dynamic_batching"):
            policy = batching.default_queue_policy
            policy.timeout_action = pb.ModelQueuePolicy.REJECT
            policy.allow_timeout_override = True
            policy.max_queue_size = 256
        path.write_text(to_text(config))
    return repo


def closed_loop(url: str, model: str, concurrency: int, requests: int) -> np.ndarray:
    photo = photo_bytes()["rocket.jpg"]
    inputs = {
        "clip_text": ("TEXT", np.array([[b"a photo of a cat"]], dtype=object)),
        "clip_image": ("IMAGE", np.array([[photo]], dtype=object)),
    }
    name, value = inputs[model]
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = requests // concurrency

    def run() -> None:
        client = grpcclient.InferenceServerClient(url)
        tensor = grpcclient.InferInput(name, list(value.shape), "BYTES")
        tensor.set_data_from_numpy(value)
        found = []
        for _ in range(per_thread):
            started = time.perf_counter()
            client.infer(model, [tensor])
            found.append(time.perf_counter() - started)
        with lock:
            latencies.extend(found)
        client.close()

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return np.array(latencies) * 1e3


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    variants = sys.argv[2:] or list(VARIANTS)
    work = Path(tempfile.mkdtemp())
    print("| variant | model | c | requests | over 200 ms | p50 ms | p99 ms | p99.9 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant in variants:
        with TritonServer(repository(work, variant)) as server:
            for model in ("clip_text", "clip_image"):
                for concurrency in (1, 4):
                    closed_loop(server.grpc_url, model, concurrency, 40)  # warm-up
                    ms = closed_loop(server.grpc_url, model, concurrency, requests)
                    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
                    print(
                        f"| {variant} | {model} | {concurrency} | {len(ms)} | "
                        f"{int((ms > 200).sum())} | {p50:.2f} | {p99:.2f} | {p999:.1f} | "
                        f"{ms.max():.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
