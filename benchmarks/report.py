"""The benchmark report: JSON, a Markdown table, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT_JSON = "bench.json"
REPORT_MD = "bench.md"


def short_window(point: dict[str, Any]) -> bool:
    """Whether a closed-loop point completed fewer than 2 requests per concurrent slot: its
    requests are long against the window, so its rate is coarse (lengthen ``--duration``)."""
    return point["mode"] == "closed" and point["requests"] < 2 * (point["concurrency"] or 1)


def best_point(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The closed-loop point of highest throughput, among those whose window was long
    enough when there are any."""
    closed = [p for p in points if p["mode"] == "closed" and p["requests"]]
    sound = [p for p in closed if not short_window(p)] or closed
    return max(sound, key=lambda p: p["items_per_s"]) if sound else None


def comparisons(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Served (best concurrency) against each in-process baseline (best batch, and batch 1)."""
    rows = []
    for name, result in report["scenarios"].items():
        best = best_point(result["points"])
        if best is None:
            continue
        for engine, rates in report.get("baselines", {}).get(name, {}).items():
            if not rates:
                continue
            top_batch, top = max(rates.items(), key=lambda kv: kv[1])
            rows.append(
                {
                    "scenario": name,
                    "baseline": engine,
                    "served_items_per_s": best["items_per_s"],
                    "served_concurrency": best["concurrency"],
                    "baseline_items_per_s": top,
                    "baseline_batch": int(top_batch),
                    "ratio": best["items_per_s"] / top if top else 0.0,
                }
            )
    return rows


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"# vlpserve bench ({report['started']})",
        "",
        f"Machine: {machine['cpu']} ({machine['cores']} cores), GPU: {machine['gpu'] or 'none'}; "
        f"size {report['settings']['size']}; precision {report['settings'].get('precision')}; "
        f"command: `{report['settings']['command']}`{_pinning(report['settings'])}",
        *_placed(report["settings"]),
        "",
        "| scenario | load | items/s | req/s | p50 ms | p90 ms | p95 ms | p99 ms | p99.9 ms "
        "| max ms | stalls | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in report["scenarios"].items():
        for p in result["points"]:
            load = f"c={p['concurrency']}" if p["mode"] == "closed" else f"{p['rate_rps']} req/s"
            if short_window(p):
                load += " (short window)"
            lat = p["latency_ms"]
            keys = ("p50", "p90", "p95", "p99", "p99.9", "max")
            cells = [f"{lat.get(k, 0):.1f}" for k in keys] + [f"{lat.get('stalls', 0):.0f}"]
            failed = {k: v for k, v in p.get("statuses", {}).items() if k != "OK"}
            errors = f"{p['errors']}" + (
                " (" + ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) + ")"
                if failed
                else ""
            )
            lines.append(
                f"| {name} | {load} | {p['items_per_s']:.2f} | {p['requests_per_s']:.2f} | "
                + " | ".join(cells)
                + f" | {errors} |"
            )
    shares = [
        (name, p)
        for name, result in report["scenarios"].items()
        for p in result["points"]
        if p.get("replicas")
    ]
    if shares:
        lines += ["", "Share of the requests each replica served (Triton's statistics):", ""]
        for name, p in shares:
            load = f"c={p['concurrency']}" if p["mode"] == "closed" else f"{p['rate_rps']} req/s"
            parts = ", ".join(f"{url} {share:.0%}" for url, share in p["replicas"].items())
            lines.append(f"- {name} {load}: {parts}")
    if any(short_window(p) for r in report["scenarios"].values() for p in r["points"]):
        lines += [
            "",
            "(short window): fewer than 2 completed requests per concurrent slot in the window;"
            " its rate is coarse and it is not taken as a scenario's best point.",
        ]
    graphs = report.get("graphs", {})
    if graphs:
        lines += [
            "",
            "Graphs served, against PyTorch fp32 (export parity, worst case):",
            "",
            "| checkpoint | graph | precision | min cosine | max abs diff |",
            "|---|---|---|---|---|",
        ]
        for name, entries in graphs.items():
            for graph, g in entries.items():
                cosine = "n/a" if g["cosine_min"] is None else f"{g['cosine_min']:.6f}"
                diff = "n/a" if g["max_abs_diff"] is None else f"{g['max_abs_diff']:.2e}"
                lines.append(f"| {name} | {graph} | {g['precision']} | {cosine} | {diff} |")
    absent = report.get("absent", {})
    if absent:
        lines += ["", "Absent (not served): " + ", ".join(f"{k} ({v})" for k, v in absent.items())]
    rows = comparisons(report)
    if rows:
        lines += [
            "",
            "| scenario | baseline | served items/s (concurrency) | baseline items/s (batch) "
            "| served / baseline |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['scenario']} | {r['baseline']} | {r['served_items_per_s']:.2f} "
                f"(c={r['served_concurrency']}) | {r['baseline_items_per_s']:.2f} "
                f"(b={r['baseline_batch']}) | {r['ratio']:.2f} |"
            )
    baselines = report.get("baselines", {})
    if baselines:
        lines += ["", "| baseline | engine | batch: items/s |", "|---|---|---|"]
        for name, engines in baselines.items():
            for engine, rates in engines.items():
                text = ", ".join(f"{b}: {v:.2f}" for b, v in rates.items())
                lines.append(f"| {name} | {engine} | {text} |")
    breakdown, engine_rows = [], []
    for name, result in report["scenarios"].items():
        best = best_point(result["points"])
        if best is None:
            continue
        where = f"{name} (c={best['concurrency']})"
        for model, s in best.get("triton", {}).items():
            breakdown.append(
                f"| {where} | {model} | {s['queue_ms']:.2f} | "
                f"{s['compute_input_ms']:.2f} | {s['compute_infer_ms']:.2f} | "
                f"{s['compute_output_ms']:.2f} | {s['mean_batch']:.2f} | "
                f"{s['utilization']:.2f} |"
            )
        for model, phases in best.get("engine", {}).items():
            for phase, e in phases.items():
                engine_rows.append(
                    f"| {where} | {model} | {phase} | "
                    f"{e['calls']:.0f} | {e['ms_per_call']:.1f} | {e['rows_per_call']:.2f} | "
                    f"{e['utilization']:.2f} |"
                )
    if breakdown:
        lines += [
            "",
            "Triton's breakdown at the best point (ms per request; mean executed batch; "
            "utilisation: time executing over the point's window, 1.0 per busy instance):",
            "",
            "| scenario | model | queue | compute input | compute infer | compute output | batch "
            "| utilisation |",
            "|---|---|---|---|---|---|---|---|",
            *breakdown,
        ]
    if engine_rows:
        lines += [
            "",
            "Generation engine at the best point (work Triton's statistics do not see: encode "
            "= vision and question encoders per request, first / step = decoder calls):",
            "",
            "| scenario | model | phase | calls | ms per call | rows per call | utilisation |",
            "|---|---|---|---|---|---|---|",
            *engine_rows,
        ]
    return "\n".join(lines) + "\n"


def plots(report: dict[str, Any], out: Path) -> list[Path]:
    """Throughput and latency against concurrency, one PNG per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, result in report["scenarios"].items():
        closed = [p for p in result["points"] if p["mode"] == "closed" and p["requests"]]
        if not closed:
            continue
        xs = [p["concurrency"] for p in closed]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        left.plot(xs, [p["items_per_s"] for p in closed], marker="o", label="served")
        engines = report.get("baselines", {}).get(name, {}).items()
        for number, (engine, rates) in enumerate(engines, start=1):
            if rates:
                left.axhline(
                    max(rates.values()),
                    color=f"C{number}",
                    linestyle=("--", ":", "-.")[number % 3],
                    label=f"{engine} (best batch)",
                )
        left.set(xscale="log", xlabel="concurrency", ylabel="items/s", title=f"{name}: throughput")
        left.legend()
        for q in ("p50", "p90", "p99"):
            right.plot(xs, [p["latency_ms"].get(q, 0) for p in closed], marker="o", label=q)
        right.set(xscale="log", xlabel="concurrency", ylabel="ms", title=f"{name}: latency")
        right.legend()
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def write(report: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / REPORT_MD).write_text(markdown(report))
    files = {"json": out / REPORT_JSON, "markdown": out / REPORT_MD}
    for path in plots(report, out):
        files[path.stem] = path
    return files


def _placed(settings: dict[str, Any]) -> list[str]:
    """The layout the embedded server gave its models (repo build's auto, or a file's)."""
    placed = settings.get("placed") or {}
    if not placed:
        return []
    return ["", "Layout: " + "; ".join(f"{name} {what}" for name, what in placed.items())]


def _pinning(settings: dict[str, Any]) -> str:
    server = settings.get("server_cpus", "all")
    if server == "all":
        return ""
    return (
        f"; server and in-process baselines on CPUs {server}, "
        f"load generator on CPUs {settings['load_cpus']}"
    )
