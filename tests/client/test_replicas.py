"""One client over several servers: three real tritonservers on loopback. Calls spread (by
Triton's own statistics), a SIGKILLed replica costs no call, and once it is back it takes
traffic again within seconds; the same for AsyncClient and for dns:/// names."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vlpserve.client import AsyncClient, Client
from vlpserve.serve import TritonServer, free_port


def _served(server: TritonServer, model: str = "clip_text") -> int:
    """Requests ``model`` has answered on this server, by Triton's statistics."""
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        entry = stats.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(entry.get("inference_stats", {}).get("success", {}).get("count", 0))
    finally:
        stats.close()


@pytest.fixture(scope="module")
def ports() -> list[dict[str, int]]:
    return [
        {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
        for _ in range(3)
    ]


@pytest.fixture(scope="module")
def replicas(clip_repo: Path, ports) -> Iterator[list[TritonServer]]:
    servers = [TritonServer(clip_repo, **p) for p in ports]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda s: s.start(), servers))
    yield servers
    for server in servers:
        server.stop()


def _spread(servers: list[TritonServer], before: list[int]) -> list[float]:
    counts = [_served(s) - b for s, b in zip(servers, before, strict=True)]
    return [c / sum(counts) for c in counts]


def test_calls_spread_over_the_replicas(replicas) -> None:
    before = [_served(s) for s in replicas]
    with (
        Client([s.grpc_url for s in replicas], timeout_s=30) as client,
        ThreadPoolExecutor(6) as pool,
    ):
        list(pool.map(lambda i: client.embed_texts([f"text {i}"]), range(120)))
        calls = [r.calls for r in client.replicas.replicas]
    shares = _spread(replicas, before)
    assert all(share >= 0.25 for share in shares), shares
    assert sum(calls) >= 120 and min(calls) > 0


def test_async_calls_spread_over_the_replicas(replicas) -> None:
    before = [_served(s) for s in replicas]

    async def body() -> None:
        async with AsyncClient([s.grpc_url for s in replicas], timeout_s=30) as client:
            await asyncio.gather(*(client.embed_texts([f"text {i}"]) for i in range(90)))

    asyncio.run(body())
    assert all(share >= 0.25 for share in _spread(replicas, before))


def test_a_killed_replica_costs_no_call_and_comes_back(replicas, clip_repo: Path, ports) -> None:
    victim = replicas[1]
    failures: list[BaseException] = []
    done = 0
    stop = threading.Event()
    client = Client([s.grpc_url for s in replicas], timeout_s=30, retries=3)

    def load() -> None:
        nonlocal done
        while not stop.is_set():
            try:
                client.embed_texts(["spread me"])
                done += 1
            except Exception as exc:  # any failure fails the test
                failures.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        time.sleep(2.0)
        victim.stop()
        at_kill = done
        replacement = TritonServer(clip_repo, **ports[1]).start()
        replicas[1] = replacement  # the fixture stops it at the end
        back = time.monotonic()
        before = _served(replacement)
        while _served(replacement) == before:
            assert time.monotonic() - back < 5.0, "the restarted replica takes no traffic"
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        client.close()
    assert not failures, failures[:3]
    assert at_kill > 0 and done > at_kill


def test_a_dns_name_resolves_to_every_address(replicas) -> None:
    """``localhost`` may resolve to 127.0.0.1 and ::1; the server listens on the first
    only: the other is ejected and every call is answered."""
    port = replicas[0].grpc_port
    with Client(f"dns:///localhost:{port}", timeout_s=30) as client:
        targets = [r.target for r in client.replicas.replicas]
        assert f"127.0.0.1:{port}" in targets
        rows = np.concatenate([client.embed_texts([f"via dns {i}"]) for i in range(10)])
    assert rows.shape == (10, 16)


def test_bench_drives_replicas_and_reports_each_share(replicas, tmp_path: Path) -> None:
    from vlpserve.benchmarks import BenchOptions, run_bench

    report = run_bench(
        BenchOptions(
            url=",".join(s.grpc_url for s in replicas),
            scenarios=("clip_text",),
            concurrency=(6,),
            warmup_s=0.5,
            duration_s=3.0,
            baselines=False,
            out=tmp_path,
        )
    )
    (point,) = report["scenarios"]["clip_text"]["points"]
    assert point["errors"] == 0 and set(point["replicas"]) == {s.grpc_url for s in replicas}
    assert all(share >= 0.2 for share in point["replicas"].values()), point["replicas"]
    assert "Share of the requests each replica served" in (tmp_path / "bench.md").read_text()


def test_ejection_stays_bounded_after_many_failures() -> None:
    """Thousands of failures in a row (a server down for hours) keep the wait at its cap;
    the doubling once overflowed a float after 1,024 failures and broke every call."""
    from vlpserve.client.replicas import EJECT_MAX_S, Replicas

    clock = [100.0]
    replicas = Replicas(["127.0.0.1:1"], now=lambda: clock[0])
    (replica,) = replicas.replicas
    for _ in range(2_000):
        replicas.failed(replica)
    assert replica.ejected_until == pytest.approx(100.0 + EJECT_MAX_S)
    replicas.succeeded(replica)
    assert (replica.failures, replica.ejected_until) == (0, 0.0)
