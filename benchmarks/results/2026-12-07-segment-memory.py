"""GroupViT segmentation's memory on photo-sized inputs (issue 19, part 4): the resident
memory of tritonserver and every stub, above idle, while one and then eight 40 Mpx requests
with 64 labels are served (repo build's defaults), sampled every 20 ms, and each request's
latency. The label map's cost does not depend on the encoder's size, so a tiny seeded
GroupViT stands for any.

Run from the repository root:
    .venv/bin/python benchmarks/results/2026-12-07-segment-memory.py
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from vlpserve.client import Client
from vlpserve.export import ExportOptions, export_groupvit
from vlpserve.export.checkpoints import build_groupvit
from vlpserve.model_repository import RepositoryOptions, build_repository
from vlpserve.serve import TritonServer

MIB = 2**20


def peak_growth(server: TritonServer, work: Callable[[], None]) -> tuple[int, float]:
    idle = sum(server.memory().values())
    peak, done = idle, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(server.memory().values()))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return peak - idle, time.perf_counter() - started


def main() -> None:
    image = Image.new("L", (7300, 5479), 128)  # 40.0 Mpx
    image.paste(255, (0, 0, 3650, 5479))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    photo = buffer.getvalue()
    labels = [f"label {i}" for i in range(64)]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        checkpoint = build_groupvit(root / "checkpoint", seed=0)
        export_groupvit(ExportOptions(model=str(checkpoint), out=root / "export"))
        build_repository(RepositoryOptions(export_dir=root / "export", out=root / "repo"))
        with TritonServer(root / "repo") as server:

            def one() -> None:
                with Client(server.grpc_url, family="groupvit", timeout_s=600) as client:
                    client.segment(photo, labels)

            print("| requests at once | peak above idle (MiB) | wall time (s) |")
            print("|---|---|---|")
            grew, took = peak_growth(server, one)  # the stubs' shared-memory regions grow
            print(f"| 1, the first | {grew / MIB:.0f} | {took:.1f} |", flush=True)
            for count in (1, 8):

                def work(count: int = count) -> None:
                    with ThreadPoolExecutor(count) as pool:
                        list(pool.map(lambda _: one(), range(count)))

                grew, took = peak_growth(server, work)
                print(f"| {count} | {grew / MIB:.0f} | {took:.1f} |", flush=True)


if __name__ == "__main__":
    main()
