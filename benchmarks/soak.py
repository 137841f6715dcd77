"""``vlpserve bench --soak SECONDS``: every served task at once, at a fixed concurrency, for a
long time; what changes over the run is the finding.

The report gives the errors by status code, p50 and p99 latency per window (a minute by
default), and the resident memory of tritonserver and of each stub sampled through the run,
with the targets checked: no error, memory growth after the first window under 5%, every
window's p99 within 1.5x of the first one's. It writes ``soak.json``, ``soak.md`` and
``soak.png``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlpserve.benchmarks.scenarios import Scenario
from vlpserve.errors import (
    AuthenticationError,
    ConnectionSecurityError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotReady,
    Overloaded,
    ServerUnavailable,
)

STATUS_OF: tuple[tuple[type[Exception], str], ...] = (
    (InvalidInput, "INVALID_ARGUMENT"),
    (DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (Overloaded, "RESOURCE_EXHAUSTED"),
    (ServerUnavailable, "UNAVAILABLE"),
    (ModelNotReady, "NOT_FOUND"),
    (AuthenticationError, "UNAUTHENTICATED"),
    (ConnectionSecurityError, "UNAVAILABLE"),
    (TimeoutError, "DEADLINE_EXCEEDED"),
)
MEMORY_GROWTH_TARGET = 0.05
P99_TARGET = 1.5


# A request slower than this many times its point's (or window's) median is a stall: far
# beyond what the work and the queue behind busy instances explain (issue 22: 500 ms waits
# at a 1-15 ms p50). The bench's points and the soak's windows both count them.
STALL_FACTOR = 10


def stalls(ms: np.ndarray, p50: float) -> int:
    """Requests slower than STALL_FACTOR x ``p50``."""
    return int((np.asarray(ms) > STALL_FACTOR * p50).sum())


def status_of(exc: BaseException | None) -> str:
    """The gRPC status name a failed request stands for ("OK" for none); through the
    front door, the HTTP status ("HTTP 429")."""
    if exc is None:
        return "OK"
    http_status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    if isinstance(http_status, int):  # openai.APIStatusError, the bench's HTTPStatusError
        return f"HTTP {http_status}"
    for kind, name in STATUS_OF:
        if isinstance(exc, kind):
            return name
    return "INTERNAL"


@dataclass
class SoakRun:
    """What a soak records: each request (start, scenario, latency, status) and the
    memory samples (time, {process: bytes})."""

    started: float
    requests: list[tuple[float, str, float, str]] = field(default_factory=list)
    memory: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # the first error messages


async def soak(
    scenarios: list[tuple[Scenario, Any]],
    *,
    concurrency: int,
    duration_s: float,
    timeout_s: float,
    memory: Callable[[], dict[str, int]] | None,
    sample_every_s: float = 5.0,
) -> SoakRun:
    """``concurrency`` workers sending back to back until ``duration_s`` has passed,
    worker ``i``'s ``k``-th request going to scenario ``(i + k * concurrency) mod n`` (each
    scenario with its own client): every scenario is sent even with fewer workers than
    scenarios, and with as many workers the mix is one worker per scenario as before."""
    run = SoakRun(started=time.monotonic())
    end = run.started + duration_s
    counter = iter(range(10**12))

    async def worker(slot: int) -> None:
        turn = slot
        while (started := time.monotonic()) < end:
            scenario, client = scenarios[turn % len(scenarios)]
            turn += concurrency
            error: BaseException | None = None
            try:
                await asyncio.wait_for(scenario.send(client, next(counter)), timeout_s)
            except Exception as exc:  # counted by status, never fatal to the soak
                error = exc
                if len(run.samples) < 10:
                    run.samples.append(f"{scenario.name}: {str(exc)[:200]}")
            run.requests.append(
                (started - run.started, scenario.name, time.monotonic() - started, status_of(error))
            )

    async def sampler() -> None:
        while memory is not None and time.monotonic() < end:
            run.memory.append((time.monotonic() - run.started, memory()))
            await asyncio.sleep(sample_every_s)

    await asyncio.gather(sampler(), *(worker(slot) for slot in range(concurrency)))
    if memory is not None:
        run.memory.append((time.monotonic() - run.started, memory()))
    return run


def _process(name: str) -> str:
    """A stub's memory key without its pid (``clip_text 1234`` -> ``clip_text``): a
    reloaded model keeps its line."""
    return name.rsplit(" ", 1)[0] if name.rsplit(" ", 1)[-1].isdigit() else name


def summarize(run: SoakRun, *, window_s: float, settings: dict[str, Any]) -> dict[str, Any]:
    """The soak's report: status counts, latency per window, memory, and the targets."""
    duration = max((r[0] for r in run.requests), default=0.0)
    windows: list[dict[str, Any]] = []
    count = max(1, int(np.ceil(duration / window_s))) if run.requests else 0
    for index in range(count):
        inside = [r for r in run.requests if index * window_s <= r[0] < (index + 1) * window_s]
        ok = [r[2] * 1000 for r in inside if r[3] == "OK"]
        p50 = float(np.percentile(ok, 50)) if ok else None
        windows.append(
            {
                "window": index,
                "from_s": index * window_s,
                "requests": len(inside),
                "errors": sum(r[3] != "OK" for r in inside),
                "p50_ms": p50,
                "p99_ms": float(np.percentile(ok, 99)) if ok else None,
                "p99_9_ms": float(np.percentile(ok, 99.9)) if ok else None,
                "max_ms": float(max(ok)) if ok else None,
                # requests slower than STALL_FACTOR x the window's p50
                "stalls": stalls(np.array(ok), p50) if p50 else 0,
            }
        )
    memory: dict[str, list[tuple[float, int]]] = {}
    for at, sample in run.memory:
        totals: Counter[str] = Counter()
        for name, value in sample.items():
            totals[_process(name)] += value
        for name, value in totals.items():
            memory.setdefault(name, []).append((at, value))
        memory.setdefault("total", []).append((at, sum(sample.values())))
    growth = {}
    for name, series in memory.items():
        after_first = [v for at, v in series if at >= window_s] or [v for _, v in series]
        base = after_first[0] if after_first else 0
        growth[name] = (series[-1][1] - base) / base if base else 0.0
    statuses = Counter(r[3] for r in run.requests)
    first_p99 = windows[0]["p99_ms"] if windows else None
    complete = [w for w in windows if w["from_s"] + window_s <= duration + 1e-9] or windows
    worst_ratio = max((w["p99_ms"] or 0) / first_p99 for w in complete) if first_p99 else None
    targets = {
        "zero_errors": statuses.get("OK", 0) == len(run.requests) and bool(run.requests),
        "memory_growth_below_5pct": growth.get("total", 0.0) < MEMORY_GROWTH_TARGET
        if memory
        else None,
        "p99_within_1_5x_of_first_window": worst_ratio is not None and worst_ratio <= P99_TARGET,
    }
    return {
        "settings": settings | {"window_s": window_s},
        "duration_s": duration,
        "requests": len(run.requests),
        "statuses": dict(statuses),
        "per_scenario": dict(Counter(r[1] for r in run.requests)),
        "error_samples": run.samples,
        "windows": windows,
        "p99_worst_over_first": worst_ratio,
        "memory_bytes": {name: series for name, series in memory.items()},
        "memory_growth_after_first_window": growth,
        "targets": targets,
    }


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"# vlpserve soak ({settings.get('started', '')})",
        "",
        f"Machine: {settings.get('machine', '')}; {settings['concurrency']} concurrent "
        f"requests over {', '.join(settings['scenarios'])}; {report['duration_s']:.0f} s; "
        f"command: `{settings.get('command', '')}`",
        "",
        f"Requests: {report['requests']}; by status: "
        + ", ".join(f"{k} {v}" for k, v in sorted(report["statuses"].items())),
        "",
        "| window (from s) | requests | errors | p50 ms | p99 ms | p99.9 ms | max ms | stalls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in report["windows"]:
        cells = [
            f"{w[key]:.1f}" if w.get(key) is not None else "-"
            for key in ("p50_ms", "p99_ms", "p99_9_ms", "max_ms")
        ]
        lines.append(
            f"| {w['from_s']:.0f} | {w['requests']} | {w['errors']} | "
            + " | ".join(cells)
            + f" | {w['stalls']} |"
        )
    lines += [
        "",
        "| process | first MB | last MB | growth after the first window |",
        "|---|---|---|---|",
    ]
    for name, series in sorted(report["memory_bytes"].items()):
        growth = report["memory_growth_after_first_window"][name]
        lines.append(
            f"| {name} | {series[0][1] / 2**20:.0f} | {series[-1][1] / 2**20:.0f} | {growth:+.1%} |"
        )
    lines += ["", "Targets: " + ", ".join(f"{k} {v}" for k, v in report["targets"].items())]
    if report["error_samples"]:
        lines += ["", "First errors:", *[f"- {s}" for s in report["error_samples"]]]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Memory of each process, and p99 per window, over the run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for name, series in sorted(report["memory_bytes"].items()):
        top.plot([t for t, _ in series], [v / 2**20 for _, v in series], label=name)
    top.set_ylabel("resident MB")
    top.legend(fontsize=6, ncol=3)
    windows = [w for w in report["windows"] if w["p99_ms"] is not None]
    bottom.plot([w["from_s"] for w in windows], [w["p99_ms"] for w in windows], "o-", label="p99")
    bottom.plot([w["from_s"] for w in windows], [w["p50_ms"] for w in windows], "o-", label="p50")
    bottom.set_xlabel("seconds into the soak")
    bottom.set_ylabel("latency ms")
    bottom.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def write(report: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "soak.json", "markdown": out / "soak.md"}
    files["json"].write_text(json.dumps(report, indent=2) + "\n")
    files["markdown"].write_text(markdown(report))
    image = plot(report, out / "soak.png")
    if image is not None:
        files["plot"] = image
    return files
