"""Served CLIP ViT-B/32 texts against infinity-emb on the same machine, in one run (issue 24,
part 5): vlpserve fp32 and int8 repositories built with no layout option, then infinity-emb
(PyTorch fp32 on CPU, its own batching) on the same seeded checkpoint, each loaded by the same
closed-loop generator with one text of the bench's per request, at each concurrency.

    .venv/bin/python benchmarks/results/2026-12-07-peer-texts.py

infinity-emb runs from its own virtual environment ($INFINITY_VENV, default /tmp/venv-inf:
``pip install torch==2.13.0 'infinity-emb[torch,server]==0.0.78' 'transformers<5' 'numpy<2'``),
on loopback, stopped by its pid. The exports come from an earlier ``vlpserve bench --size
base`` (build/bench/export-clip, export-clip-int8).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from vlpserve.benchmarks.http_client import JSONPoster
from vlpserve.benchmarks.load import closed_loop, sender
from vlpserve.benchmarks.scenarios import build_scenarios
from vlpserve.client import AsyncClient
from vlpserve.export.samples import photo_bytes
from vlpserve.model_repository import RepositoryOptions, build_repository
from vlpserve.serve import TritonServer, free_port

WORK = Path("build/bench")
CONCURRENCY = (16, 32, 64)
WARMUP_S, DURATION_S = 3.0, 10.0
INFINITY = Path(os.environ.get("INFINITY_VENV", "/tmp/venv-inf")) / "bin" / "infinity_emb"
CHECKPOINT = WORK / "clip-vit-base-patch32-seeded-base"
SCENARIOS = build_scenarios(photo_bytes())


def load(make: Any, scenario: str) -> dict[int, dict[str, float]]:
    async def point(concurrency: int) -> dict[str, float]:
        client = make()
        try:
            found = await closed_loop(
                sender(client, SCENARIOS[scenario], timeout_s=120),
                concurrency,
                warmup_s=WARMUP_S,
                duration_s=DURATION_S,
            )
        finally:
            await client.close()
        return {
            "texts_per_s": found.items_per_s,
            "p50_ms": found.latency_ms.get("p50", 0.0),
            "p99_ms": found.latency_ms.get("p99", 0.0),
            "errors": found.errors,
        }

    return {c: asyncio.run(point(c)) for c in CONCURRENCY}


def served(precision: str) -> tuple[dict[int, dict[str, float]], dict[str, str]]:
    export = WORK / ("export-clip-int8" if precision == "int8" else "export-clip")
    repo = WORK / f"peer-{precision}"
    build_repository(RepositoryOptions(export_dir=export, out=repo))
    with TritonServer(repo, startup_timeout_s=600) as server:
        found = load(lambda: AsyncClient(server.grpc_url, retries=0, timeout_s=120), "clip_text")
        return found, dict(server.placed)


def infinity() -> dict[int, dict[str, float]]:
    port = free_port()
    command = [str(INFINITY), "v2", "--model-id", str(CHECKPOINT.resolve())]
    command += ["--served-model-name", "clip", "--engine", "torch", "--device", "cpu"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1"]
    log = open(WORK / "infinity.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((WORK / "infinity.log").read_text()[-3000:]) from None
                time.sleep(1)
        return load(lambda: JSONPoster(f"http://127.0.0.1:{port}/v1"), "clip_text_http")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def main() -> int:
    results: dict[str, Any] = {}
    for precision in ("fp32", "int8"):
        results[f"vlpserve {precision}"], placed = served(precision)
        results[f"layout {precision}"] = placed
    results["infinity-emb fp32"] = infinity()
    print(json.dumps(results, indent=2))
    peer = max(p["texts_per_s"] for p in results["infinity-emb fp32"].values())
    for precision in ("fp32", "int8"):
        best = max(p["texts_per_s"] for p in results[f"vlpserve {precision}"].values())
        print(
            f"{precision}: best {best:.1f} texts/s against infinity-emb {peer:.1f}: "
            f"{best / peer:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
