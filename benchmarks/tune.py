"""``vlpserve tune``: the layout of a repository for this machine and a latency target.

Triton's own answer, Model Analyzer, needs the NGC SDK container and knows nothing of the
Python-backend models' threads or decode pools. This drives the real server, started by the
launcher with each candidate layout (model_repository.placement), with the bench's scenarios
and load generator, over a small search rather than a grid:

1. shapes: encoder instances x ONNX Runtime threads that fill the CPUs (1 x N, 2 x N/2, ...
   up to 8 instances), with the batcher as built: the lever that moved served throughput
   most on CPU (benchmarks/RESULTS.md, issue 24);
2. batching, around the best shape: a short queue delay (batches form when requests arrive
   a little apart) and a cap on the batch formed from separate requests (bounds the latency
   one batch adds under high concurrency).

Each layout is measured at every concurrency of every scenario. The latency target is the
p99 given, or 3x the scenario's batch-1 p50 under the first layout. A layout's score is, over
the scenarios, the geometric mean of its best throughput at a concurrency whose p99 meets
the target; the best score wins, and its layout file is what ``serve --layout`` and
``repo build --layout`` apply. The search stops before a layout that would overrun
``budget_s`` (the first layout's start, load and stop time is the estimate).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlpserve.benchmarks.load import closed_loop, sender
from vlpserve.benchmarks.report import short_window
from vlpserve.benchmarks.scenarios import Scenario, build_scenarios
from vlpserve.errors import ConfigError, VlpserveError
from vlpserve.model_repository.placement import Layout, auto_layout

logger = logging.getLogger(__name__)

MAX_INSTANCES = 8
QUEUE_DELAY_US = 500  # about a tiny text's batch-1 time on CPU: long enough to pair requests
MAX_BATCH = 8
LATENCY_FACTOR = 3.0  # the default target: p99 within 3x the batch-1 p50


class TuneError(VlpserveError):
    """No layout met the target, or the budget allowed no measurement."""


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    repo: Path
    out: Path  # the layout file; <out>.md and <out>.png beside it
    scenarios: tuple[str, ...] = ()  # default: the text and image scenarios of its families
    concurrency: tuple[int, ...] = (1, 4, 16)
    latency_p99_ms: float | None = None
    budget_s: float = 900.0
    warmup_s: float = 1.0
    duration_s: float = 5.0
    cpus: frozenset[int] | None = None  # the CPUs the server is pinned to (None: all usable)

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError("tune: concurrency values must be >= 1")
        if self.budget_s <= 0 or self.duration_s <= 0 or self.warmup_s < 0:
            raise ConfigError("tune: budget and duration must be > 0, warmup >= 0")
        if self.latency_p99_ms is not None and self.latency_p99_ms <= 0:
            raise ConfigError("tune: --latency-p99-ms must be > 0")


@dataclass
class Trial:
    """One layout, measured: per scenario, per concurrency, items/s and latencies."""

    layout: Layout
    stage: str
    points: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    seconds: float = 0.0

    def best(self, scenario: str, target_ms: float) -> tuple[float, int | None]:
        """The best items/s at a concurrency whose p99 meets ``target_ms``, and that
        concurrency (0.0, None: none met it)."""
        met = [
            (p["items_per_s"], c)
            for c, p in self.points.get(scenario, {}).items()
            if meets(p, target_ms)
        ]
        return max(met) if met else (0.0, None)

    def score(self, targets: dict[str, float]) -> float:
        rates = [self.best(s, t)[0] for s, t in targets.items()]
        if not rates or min(rates) <= 0:
            return 0.0
        return math.exp(sum(math.log(r) for r in rates) / len(rates))


def meets(point: dict[str, float], target_ms: float) -> bool:
    """A point counts when its p99 meets the target, nothing failed, and its window saw at
    least two requests per caller (a shorter one's rate and p99 are too coarse to rank)."""
    return point["p99_ms"] <= target_ms and not point["errors"] and not point.get("short")


def shapes(cpus: int) -> list[Layout]:
    """Stage 1: encoder instances x threads filling ``cpus`` (the auto layout first, the
    baseline of the default target), pre-processing as auto sizes it."""
    auto = auto_layout(cpus)
    found = [auto]
    instances = 1
    while instances <= min(cpus, MAX_INSTANCES):
        shape = dataclasses.replace(
            auto, encoder_instances=instances, encoder_threads=max(1, cpus // instances)
        )
        if shape not in found:
            found.append(shape)
        instances *= 2
    return found


def refinements(best: Layout) -> list[Layout]:
    """Stage 2: the batcher around the best shape."""
    return [
        dataclasses.replace(best, max_queue_delay_us=QUEUE_DELAY_US),
        dataclasses.replace(best, max_batch=MAX_BATCH),
    ]


def default_scenarios(repo: Path, known: dict[str, Scenario]) -> tuple[str, ...]:
    """The text and image scenarios of every family whose models the repository holds."""
    models = {p.parent.name for p in repo.glob("*/config.pbtxt")}
    return tuple(
        name
        for name, scenario in known.items()
        if scenario.model in models and name.endswith(("_text", "_image"))
    )


def _measure(
    url: str, scenarios: list[Scenario], options: TuneOptions, step: Callable[[str], None]
) -> Iterator[tuple[str, int, dict[str, float]]]:
    from vlpserve.client import AsyncClient

    async def one(scenario: Scenario, concurrency: int) -> dict[str, float]:
        client = AsyncClient(url, family=scenario.family, timeout_s=60.0, retries=0)
        try:
            point = await closed_loop(
                sender(client, scenario, timeout_s=60.0),
                concurrency,
                warmup_s=options.warmup_s,
                duration_s=options.duration_s,
            )
        finally:
            await client.close()
        return {
            "items_per_s": point.items_per_s,
            "p50_ms": point.latency_ms.get("p50", 0.0),
            "p99_ms": point.latency_ms.get("p99", float("inf")),
            "errors": float(point.errors),
            "short": float(short_window(point.as_dict())),
        }

    for scenario in scenarios:
        for concurrency in options.concurrency:
            step(f"{scenario.name} c={concurrency}")
            yield scenario.name, concurrency, asyncio.run(one(scenario, concurrency))


def resolve(options: TuneOptions) -> tuple[list[Scenario], int]:
    """The scenarios to load the server with, and the CPUs it may use."""
    from vlpserve.export.samples import photo_bytes
    from vlpserve.ort import usable_cpus

    known = build_scenarios(photo_bytes())
    names = options.scenarios or default_scenarios(options.repo, known)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(
            f"tune: scenarios {unknown or 'none found in the repository'}; "
            f"known: {', '.join(sorted(known))}"
        )
    return [known[n] for n in names], len(options.cpus) if options.cpus else usable_cpus()


def planned_points(options: TuneOptions) -> int:
    """The load points of a full search (the progress bar's length)."""
    scenarios, cpus = resolve(options)
    layouts = len(shapes(cpus)) + len(refinements(auto_layout(cpus)))
    return layouts * len(scenarios) * len(options.concurrency)


def run_tune(options: TuneOptions, progress: Callable[[str], None]) -> dict[str, Any]:
    """Search, write the layout file and its report; returns the report (a dict).
    ``progress`` is called once per load point.

    Raises:
        TuneError: no layout met the latency target (the report is written all the same).
    """
    from vlpserve.serve import TritonServer

    started = time.monotonic()
    deadline = started + options.budget_s
    scenarios, cpus = resolve(options)
    names = [s.name for s in scenarios]
    trials: list[Trial] = []
    targets: dict[str, float] = {}
    skipped: list[str] = []

    def measure(layout: Layout, stage: str) -> None:
        if trials and time.monotonic() + max(t.seconds for t in trials) > deadline:
            skipped.append(layout.describe())
            return
        begun = time.monotonic()
        trial = Trial(layout=layout, stage=stage)
        with TritonServer(options.repo, layout=layout, cpus=options.cpus) as server:
            for name, concurrency, point in _measure(
                server.grpc_url, scenarios, options, lambda s: progress(f"{stage}: {s}")
            ):
                trial.points.setdefault(name, {})[concurrency] = point
        trial.seconds = time.monotonic() - begun
        trials.append(trial)
        if not targets:
            for name in names:
                if options.latency_p99_ms is not None:
                    targets[name] = options.latency_p99_ms
                else:
                    first = trial.points[name][min(options.concurrency)]
                    targets[name] = LATENCY_FACTOR * first["p50_ms"]
        logger.info(
            "%s: %s: score %.2f (%.0f/%.0f s)",
            stage,
            layout.describe(),
            trial.score(targets),
            time.monotonic() - started,
            options.budget_s,
        )

    for layout in shapes(cpus):
        measure(layout, "shape")
    best = max(trials, key=lambda t: t.score(targets))
    for layout in refinements(best.layout):
        measure(layout, "batching")
    chosen = max(trials, key=lambda t: t.score(targets))
    report = _report(options, trials, chosen, targets, cpus, skipped, started)
    if chosen.score(targets) <= 0:
        raise TuneError(
            "no layout met the p99 target "
            + ", ".join(f"{n} {t:.1f} ms" for n, t in targets.items())
            + f" at any concurrency tried; the report: {report['files']['markdown']}"
        )
    measured = {
        "target_p99_ms": targets,
        "score": chosen.score(targets),
        "scenarios": {
            n: dict(zip(("items_per_s", "concurrency"), chosen.best(n, t), strict=True))
            for n, t in targets.items()
        },
        "cpu": report["machine"],
        "layouts_tried": len(trials),
    }
    dataclasses.replace(chosen.layout, cpus=cpus, measured=measured).write(options.out)
    report["files"]["layout"] = str(options.out)
    return report


def _report(
    options: TuneOptions,
    trials: list[Trial],
    chosen: Trial,
    targets: dict[str, float],
    cpus: int,
    skipped: list[str],
    started: float,
) -> dict[str, Any]:
    from vlpserve.benchmarks.suite import machine

    found = machine()
    rows = [
        "| stage | layout | scenario | concurrency | items/s | p50 ms | p99 ms | meets p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for trial in trials:
        for name, points in trial.points.items():
            for concurrency, p in sorted(points.items()):
                mark = " **chosen**" if trial is chosen else ""
                verdict = "yes" if meets(p, targets[name]) else "no"
                if p.get("short"):
                    verdict += " (short window)"
                rows.append(
                    f"| {trial.stage} | {trial.layout.describe()}{mark} | {name} | {concurrency} "
                    f"| {p['items_per_s']:.1f} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} "
                    f"| {verdict} |"
                )
    lines = [
        f"# vlpserve tune: {options.repo}",
        "",
        f"Machine: {found['cpu']} ({found['cores']} cores), server on {cpus} CPU(s); "
        f"{len(trials)} layouts in {time.monotonic() - started:.0f} s of a "
        f"{options.budget_s:.0f} s budget; p99 targets: "
        + ", ".join(f"{n} {t:.1f} ms" for n, t in targets.items()),
        "",
        f"Chosen: {chosen.layout.describe()} (score {chosen.score(targets):.2f}: the geometric "
        "mean over scenarios of the best items/s meeting the target)",
        "",
        *rows,
    ]
    if skipped:
        lines += ["", "Not tried (budget): " + "; ".join(skipped)]
    markdown = options.out.with_suffix(".md")
    markdown.write_text("\n".join(lines) + "\n")
    data = {
        "machine": found["cpu"],
        "cpus": cpus,
        "targets_p99_ms": targets,
        "trials": [
            {
                "stage": t.stage,
                "layout": dataclasses.asdict(t.layout),
                "points": t.points,
                "score": t.score(targets),
            }
            for t in trials
        ],
        "skipped": skipped,
    }
    options.out.with_suffix(".report.json").write_text(json.dumps(data, indent=2) + "\n")
    files = {"markdown": str(markdown), "plot": str(_plot(trials, targets, options.out))}
    return {"machine": found["cpu"], "files": files, **data}


def _plot(trials: list[Trial], targets: dict[str, float], out: Path) -> Path:
    """The throughput/latency front: every point tried, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4), squeeze=False)
    for axis, (name, target) in zip(axes[0], targets.items(), strict=True):
        for number, trial in enumerate(trials):
            points = sorted(trial.points.get(name, {}).items())
            axis.plot(
                [p["p99_ms"] for _, p in points],
                [p["items_per_s"] for _, p in points],
                marker="o",
                color=f"C{number % 10}",
                label=trial.layout.describe()[:60],
            )
        axis.axvline(target, color="grey", linestyle="--", label=f"p99 target {target:.1f} ms")
        axis.set(xlabel="p99 ms", ylabel="items/s", title=name)
        axis.legend(fontsize=6)
    fig.tight_layout()
    path = out.with_suffix(".png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
