"""Load generation with vlpserve's AsyncClient: closed loop (fixed concurrency) and open
loop (fixed request rate), each with warm-up and a fixed measuring window."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vlpserve.benchmarks.scenarios import Scenario
from vlpserve.benchmarks.soak import stalls, status_of

Send = Callable[[int], Awaitable[int]]


@dataclass
class Point:
    """What one load point measured."""

    mode: str  # "closed" or "open"
    concurrency: int | None
    rate_rps: float | None
    duration_s: float
    requests: int
    items: int
    errors: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)  # gRPC status name -> requests
    replicas: dict[str, float] = field(default_factory=dict)  # url -> share of requests
    triton: dict[str, Any] = field(default_factory=dict)  # per model: triton_stats.delta
    gpu: dict[str, float] = field(default_factory=dict)  # GPU metrics, where a GPU exists
    # per model and phase of a generation engine (triton_stats.engine_delta)
    engine: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.items / self.duration_s if self.duration_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["items_per_s"] = self.items_per_s
        out["requests_per_s"] = self.requests / self.duration_s if self.duration_s else 0.0
        return out


def summarize(latencies_s: list[float]) -> dict[str, float]:
    """p50/p90/p95/p99/p99.9/max/mean latency in milliseconds, and the stalls (requests
    slower than STALL_FACTOR x p50)."""
    if not latencies_s:
        return {}
    ms = np.array(latencies_s) * 1000
    out = {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 95, 99)}
    out["p99.9"] = float(np.percentile(ms, 99.9))
    return out | {
        "max": float(ms.max()),
        "mean": float(ms.mean()),
        "stalls": float(stalls(ms, out["p50"])),
    }


def sender(client: Any, scenario: Scenario, *, timeout_s: float) -> Send:
    """A coroutine function sending request ``i`` of a scenario with ``client`` (an
    AsyncClient of the scenario's family); returns its item count.

    Every request is bounded by ``timeout_s`` (a lost answer is an error, not a hang)."""

    async def bounded(i: int) -> int:
        await asyncio.wait_for(scenario.send(client, i), timeout_s)
        return scenario.items_per_request

    return bounded


@dataclass
class _Tally:
    """What the requests of one load point added up to."""

    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    items: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    _sampled: set[str] = field(default_factory=set)

    async def call(self, send: Send, i: int) -> tuple[str, int]:
        """Send request ``i``: (status, items); a failure is kept as a sample, not raised."""
        try:
            return "OK", await send(i)
        except Exception as exc:  # a failed request is counted, not fatal
            status = status_of(exc)
            if len(self.samples) < 5 or status not in self._sampled:  # one of each status
                self.samples.append(f"{status}: {str(exc)[:300]}")
                self._sampled.add(status)
            return status, 0

    def count(self, status: str, items: int, latency_s: float) -> None:
        self.requests += 1
        self.statuses[status] += 1
        if status == "OK":
            self.latencies.append(latency_s)
            self.items += items
        else:
            self.errors += 1

    def point(self, **where: Any) -> Point:
        return Point(
            **where,
            requests=self.requests,
            items=self.items,
            errors=self.errors,
            latency_ms=summarize(self.latencies),
            error_samples=self.samples,
            statuses=dict(self.statuses),
        )


async def closed_loop(send: Send, concurrency: int, *, warmup_s: float, duration_s: float) -> Point:
    """``concurrency`` workers, each sending its next request when the last one answered."""
    started = time.monotonic()
    measure_from = started + warmup_s
    measure_to = measure_from + duration_s
    tally = _Tally()
    counter = iter(range(10**9))

    async def worker() -> None:
        while (t0 := time.monotonic()) < measure_to:
            status, items = await tally.call(send, next(counter))
            t1 = time.monotonic()
            # Requests that complete inside the window count (throughput = completions per
            # second); ones that started in the warm-up count too, or requests longer than
            # the window would never be counted.
            if measure_from <= t1 <= measure_to:
                tally.count(status, items, t1 - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally.point(mode="closed", concurrency=concurrency, rate_rps=None, duration_s=duration_s)


async def open_loop(send: Send, rate_rps: float, *, warmup_s: float, duration_s: float) -> Point:
    """Requests sent at a fixed rate whatever the answers; latency includes queueing."""
    interval = 1.0 / rate_rps
    started = time.monotonic()
    measure_from = started + warmup_s
    measure_to = measure_from + duration_s
    tally = _Tally()
    tasks = []

    async def one(i: int, t0: float) -> None:
        status, items = await tally.call(send, i)
        if t0 >= measure_from:
            tally.count(status, items, time.monotonic() - t0)

    i = 0
    while (scheduled := started + i * interval) < measure_to:
        await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
        tasks.append(asyncio.create_task(one(i, scheduled)))
        i += 1
    await asyncio.gather(*tasks)
    elapsed = max(time.monotonic() - measure_from, duration_s)
    return tally.point(mode="open", concurrency=None, rate_rps=rate_rps, duration_s=elapsed)
