"""``vlpserve tune`` on the tiny CLIP repository: a real server per layout, within the budget,
and a layout file that ``serve`` accepts (issue 24, parts 2 and 4)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from vlpserve.benchmarks.tune import TuneError, TuneOptions, refinements, run_tune, shapes
from vlpserve.errors import ConfigError
from vlpserve.model_repository.placement import Layout, auto_layout
from vlpserve.serve import TritonServer

BUDGET_S = 60.0


def test_the_search_is_small_and_fills_the_cpus() -> None:
    for cpus in (1, 2, 4, 16, 64):
        found = shapes(cpus)
        assert found[0] == auto_layout(cpus)  # the baseline of the default target
        assert len(found) == len({s.describe() for s in found}) <= 5
        assert all(s.encoder_instances * s.encoder_threads <= cpus for s in found)
    delay, capped = refinements(auto_layout(2))
    assert delay.max_queue_delay_us and capped.max_batch


def test_tune_finishes_within_its_budget_and_serve_takes_its_layout(
    clip_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vlpserve.cli import main
    from vlpserve.client import Client

    out = tmp_path / "layout.json"
    argv = ["tune", str(clip_repo), "--out", str(out), "--scenarios", "clip_text"]
    argv += ["--concurrency", "1,4", "--warmup", "0.3", "--duration", "1.5"]
    started = time.monotonic()
    assert main([*argv, "--budget", str(BUDGET_S)]) == 0
    elapsed = time.monotonic() - started
    assert elapsed <= BUDGET_S * 1.15, elapsed
    printed = capsys.readouterr()
    assert "**chosen**" in printed.out
    assert "tune" in printed.err  # the progress of the search

    layout = Layout.read(out)
    measured = layout.measured
    assert measured["layouts_tried"] >= 2  # the auto layout and at least one other
    assert measured["scenarios"]["clip_text"]["items_per_s"] > 0
    assert measured["target_p99_ms"]["clip_text"] > 0
    report = json.loads(out.with_suffix(".report.json").read_text())
    rows = [t for t in report["trials"] if t["points"]["clip_text"]]
    assert len(rows) == measured["layouts_tried"]
    assert all(set(t["points"]["clip_text"]) == {"1", "4"} for t in rows)  # JSON keys
    assert out.with_suffix(".png").stat().st_size > 0
    with TritonServer(clip_repo, layout=layout) as server:
        assert server.placed
        with Client(server.grpc_url, timeout_s=30) as client:
            assert client.embed_texts(["a photo of a cat"]).shape == (1, 16)


def test_a_target_no_layout_meets_is_an_error(clip_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "layout.json"
    options = TuneOptions(
        repo=clip_repo,
        out=out,
        scenarios=("clip_text",),
        concurrency=(1,),
        latency_p99_ms=0.001,
        budget_s=1.0,  # the first layout only: the others would overrun it
        warmup_s=0.2,
        duration_s=0.5,
    )
    with pytest.raises(TuneError, match=r"no layout met the p99 target clip_text 0\.0 ms"):
        run_tune(options, lambda _: None)
    assert not out.exists()
    assert "Not tried (budget)" in out.with_suffix(".md").read_text()
    with pytest.raises(ConfigError, match="known:"):
        run_tune(TuneOptions(repo=clip_repo, out=out, scenarios=("nope",)), lambda _: None)
