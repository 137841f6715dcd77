"""The benchmark suite works and its report is well-formed (a seconds-long smoke run; no
speed threshold: speed belongs in benchmarks, not in tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import has_cuda
from vlpserve.benchmarks import ALL_SCENARIOS, BenchOptions, run_bench
from vlpserve.benchmarks.pinning import cpu_list
from vlpserve.benchmarks.scenarios import PHOTO_SCENARIOS
from vlpserve.benchmarks.triton_stats import delta, parse_gpu_metrics
from vlpserve.errors import ConfigError
from vlpserve.export import hf
from vlpserve.serve.supervisor import children, in_group

PNG = b"\x89PNG\r\n\x1a\n"

EVERYDAY = tuple(s for s in ALL_SCENARIOS if s not in PHOTO_SCENARIOS)


@pytest.fixture(scope="module")
def front_door(triton):
    from vlpserve.gateway.app import GatewayOptions
    from vlpserve.gateway.server import GatewayThread
    from vlpserve.serve import free_port

    thread = GatewayThread(GatewayOptions(triton=triton.grpc_url), "127.0.0.1", free_port())
    yield thread.start()
    thread.stop()


def test_smoke_every_scenario(triton, front_door, tmp_path: Path) -> None:
    report = run_bench(
        BenchOptions(
            url=triton.grpc_url,
            metrics_url=triton.metrics_url,
            openai_url=front_door.url,
            scenarios=EVERYDAY,
            concurrency=(1, 2),
            rate_rps=4.0,
            warmup_s=0.2,
            duration_s=0.8,
            baselines=False,
            out=tmp_path,
            command="pytest smoke",
        )
    )
    # clip_image_tensor needs a local export to build its tensors: absent with a remote url.
    assert set(report["scenarios"]) == set(EVERYDAY) - {"clip_image_tensor"}
    for name, result in report["scenarios"].items():
        modes = [(p["mode"], p["concurrency"] or p["rate_rps"]) for p in result["points"]]
        assert modes == [("closed", 1), ("closed", 2), ("open", 4.0)], name
        for point in result["points"]:
            assert point["requests"] > 0 and point["errors"] == 0, (name, point)
            assert point["items_per_s"] > 0
            latency = point["latency_ms"]
            assert set(latency) == {"p50", "p90", "p95", "p99", "p99.9", "max", "mean", "stalls"}
            assert latency["p50"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
            stats = point["triton"]
            assert stats, name  # Triton's breakdown of the models behind the scenario
            assert any(s["executions"] > 0 and s["compute_infer_ms"] > 0 for s in stats.values())
            assert all(0 <= s["utilization"] <= 1.5 for s in stats.values()), stats
            assert all(s["busy_s"] >= 0 for s in stats.values())
        gpu = result["points"][0]["gpu"]  # GPU metrics exactly where a GPU is
        assert ("nv_gpu_utilization" in gpu) == has_cuda(), gpu
        if name.startswith("blip_caption") or name == "blip_vqa":
            engine = result["points"][0]["engine"][result["model"]]
            assert {"encode", "first", "step"} <= set(engine), name
            assert engine["step"]["calls"] > 0 and engine["step"]["rows_per_call"] >= 1
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["machine"]["cores"] >= 1 and written["versions"]["onnxruntime"]
    markdown = (tmp_path / "bench.md").read_text()
    assert "| clip_text | c=1 |" in markdown and "Triton's breakdown" in markdown
    assert "Generation engine at the best point" in markdown
    for name in report["scenarios"]:
        assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG)


def test_smoke_photo_scenarios(triton, tmp_path: Path) -> None:
    """The corpus scenarios (a 12 Mpx segmentation takes over a second here: longer points),
    with the server's decoding in the pre-processing model's share of the breakdown."""
    report = run_bench(
        BenchOptions(
            url=triton.grpc_url,
            metrics_url=triton.metrics_url,
            scenarios=PHOTO_SCENARIOS,
            concurrency=(2,),
            warmup_s=0.5,
            duration_s=4.0,
            baselines=False,
            out=tmp_path,
            command="pytest smoke photos",
        )
    )
    assert set(report["scenarios"]) == set(PHOTO_SCENARIOS)
    for name, result in report["scenarios"].items():
        (point,) = result["points"]
        assert point["requests"] > 0 and point["errors"] == 0, (name, point)
    decode = report["scenarios"]["clip_image_photo"]["points"][0]["triton"]
    assert decode["clip_image_preprocessor"]["compute_infer_ms"] > 0, decode


def test_the_bare_http_client_keeps_its_connection_and_reports_statuses(front_door) -> None:
    """The bench's HTTP client (the *_http scenarios): answers on one kept-alive connection,
    refusals counted by their HTTP status, the connection kept after one."""
    import asyncio

    from vlpserve.benchmarks.http_client import HTTPStatusError, JSONPoster
    from vlpserve.benchmarks.soak import status_of

    async def body() -> tuple[list[Any], list[BaseException]]:
        client = JSONPoster(front_door.url)
        answers: list[Any] = []
        errors: list[BaseException] = []
        try:
            for model in ("clip", "no-such-model", "clip"):
                try:
                    answers.append(await client.post("/embeddings", {"model": model, "input": "a"}))
                except HTTPStatusError as exc:
                    errors.append(exc)
            assert len(client._idle) == 1  # one connection for the three requests
        finally:
            await client.close()
        return answers, errors

    answers, errors = asyncio.run(body())
    assert [a["object"] for a in answers] == ["list", "list"]
    assert len(answers[0]["data"][0]["embedding"]) > 0
    assert [status_of(e) for e in errors] == ["HTTP 404"]
    assert "no-such-model" in str(errors[0])


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_embedded_server_with_baselines(tmp_path: Path, precision: str) -> None:
    report = run_bench(
        BenchOptions(
            scenarios=("clip_text", "clip_image", "clip_image_tensor"),
            concurrency=(1,),
            warmup_s=0.1,
            duration_s=0.5,
            size="tiny",
            workdir=tmp_path / "work",
            out=tmp_path / "report",
            precision=precision,
        )
    )
    assert set(report["scenarios"]) == {"clip_text", "clip_image", "clip_image_tensor"}
    assert report["settings"]["precision"] == precision
    # What the variant costs in accuracy: each served graph against PyTorch fp32.
    graphs = report["graphs"]["clip"]
    assert set(graphs) == {"text_encoder", "image_encoder"}
    for graph in graphs.values():
        assert graph["precision"] == precision
        assert graph["cosine_min"] >= (0.9999 if precision == "fp32" else 0.99)
    assert (
        f"| clip | image_encoder | {precision} |" in (tmp_path / "report" / "bench.md").read_text()
    )
    # Texts and JPEGs also against ORT doing the server's input work (tokenizing; decoding
    # and pre-processing); pixel values in (clip_image_tensor) have none to do.
    expected = {
        "clip_text": {"hf_eager", "onnxruntime", "onnxruntime_e2e"},
        "clip_image": {"hf_eager", "onnxruntime", "onnxruntime_e2e"},
        "clip_image_tensor": {"hf_eager", "onnxruntime"},
    }
    for name, engine_names in expected.items():
        engines = report["baselines"][name]
        assert set(engines) == engine_names
        assert all(rate > 0 for rates in engines.values() for rate in rates.values())
    rows = {(r["scenario"], r["baseline"]) for r in report["comparisons"]}
    assert {("clip_text", "onnxruntime"), ("clip_text", "onnxruntime_e2e")} <= rows
    assert "served / baseline" in (tmp_path / "report" / "bench.md").read_text()


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown scenarios"):
        BenchOptions(scenarios=("clip_video",))
    with pytest.raises(ConfigError, match="concurrency"):
        BenchOptions(concurrency=(0,))
    with pytest.raises(ConfigError, match="rate_rps"):
        BenchOptions(rate_rps=-1.0)
    usable = tuple(sorted(os.sched_getaffinity(0)))
    with pytest.raises(ConfigError, match="none of"):
        BenchOptions(server_cpus=usable)  # nothing left to the load generator
    with pytest.raises(ConfigError, match="may run on CPUs"):
        BenchOptions(server_cpus=(max(usable) + 1,))
    with pytest.raises(ConfigError, match="not with url"):
        BenchOptions(server_cpus=usable[:1], url="127.0.0.1:8001")
    assert cpu_list("0-2,5") == (0, 1, 2, 5) and cpu_list(" 3 ") == (3,)
    for text in ("", "a", "2-x", "-1"):
        with pytest.raises(ConfigError, match="CPU list"):
            cpu_list(text)


def _affinities(pids: list[int]) -> list[set[int]]:
    return [os.sched_getaffinity(pid) for pid in pids]


def _serves(pid: int, root: Path) -> bool:
    """Whether process ``pid`` is a tritonserver reading a repository under ``root``, itself
    or through the launcher's overlay (whose entries link there)."""
    args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    (repo,) = [a.split("=", 1)[1] for a in args if a.startswith("--model-repository=")] or [""]
    if not repo:
        return False
    entries = [Path(repo), *Path(repo).iterdir()]
    return any(str(root.resolve()) in os.path.realpath(entry) for entry in entries)


def _my_threads() -> list[int]:
    return [int(tid) for tid in os.listdir("/proc/self/task")]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_server_cpus_keep_the_load_generator_off_the_server(tmp_path: Path) -> None:
    """With server_cpus, tritonserver and every stub run on those CPUs and the bench's own
    threads (the load generator) on the others; the in-process baselines run on the
    server's CPUs with encoders of one thread per CPU; afterwards the process is back."""
    usable = sorted(os.sched_getaffinity(0))
    server_cpus, load_cpus = {usable[-1]}, set(usable[:-1])
    seen: dict[str, list[set[int]]] = {}

    def progress(message: str) -> None:
        if "concurrency" in message:
            (triton,) = [  # the bench's (other tests' servers may be running)
                pid for pid in children(os.getpid()) if _serves(pid, tmp_path / "work")
            ]
            seen["server"] = _affinities(in_group(os.getpgid(triton)))
            seen["load"] = _affinities(_my_threads())
        if "baselines" in message:
            seen["baselines"] = _affinities(_my_threads())

    report = run_bench(
        BenchOptions(
            scenarios=("clip_text",),
            concurrency=(2,),
            warmup_s=0.1,
            duration_s=0.5,
            size="tiny",
            workdir=tmp_path / "work",
            out=tmp_path / "report",
            server_cpus=tuple(server_cpus),
        ),
        progress,
    )
    assert len(seen["server"]) >= 3  # tritonserver and its stubs
    assert all(cpus == server_cpus for cpus in seen["server"])
    assert all(cpus == load_cpus for cpus in seen["load"])
    assert all(cpus == server_cpus for cpus in seen["baselines"])
    assert all(cpus == set(usable) for cpus in _affinities(_my_threads()))
    settings = report["settings"]
    assert settings["server_cpus"] == sorted(server_cpus)
    assert settings["load_cpus"] == sorted(load_cpus)
    assert settings["encoder_threads"] == "auto"  # sized by the server for its one CPU:
    assert settings["placed"]["clip_text"] == "1 CPU instance(s), intra_op_threads 1"
    (point,) = report["scenarios"]["clip_text"]["points"]
    assert point["errors"] == 0 and point["requests"] > 0
    assert all(rate > 0 for rate in report["baselines"]["clip_text"]["onnxruntime_e2e"].values())
    markdown = (tmp_path / "report" / "bench.md").read_text()
    assert f"load generator on CPUs {sorted(load_cpus)}" in markdown


def test_triton_breakdown_from_known_snapshots() -> None:
    """The breakdown of two statistics snapshots (Triton's JSON form), figure by figure."""

    def stats(success: int, queue_ns: int, infer_ns: int, batches: dict[int, int]) -> dict:
        return {
            "execution_count": sum(batches.values()),
            "inference_count": sum(size * n for size, n in batches.items()),
            "inference_stats": {
                "success": {"count": success, "ns": 10 * success * 10**6},
                "queue": {"count": success, "ns": queue_ns},
                "compute_input": {"count": success, "ns": success * 10**5},
                "compute_infer": {"count": success, "ns": infer_ns},
                "compute_output": {"count": success, "ns": success * 10**5},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": n, "ns": n * 10**5},
                    "compute_infer": {"count": n, "ns": n * size * 10**6},
                    "compute_output": {"count": n, "ns": n * 10**5},
                }
                for size, n in batches.items()
            ],
        }

    before = {"clip_image_encoder": stats(10, 20 * 10**6, 40 * 10**6, {1: 10})}
    after = {
        "clip_image_encoder": stats(30, 80 * 10**6, 140 * 10**6, {1: 10, 4: 5}),
        "idle_model": stats(0, 0, 0, {}),
    }
    found = delta(before, after, window_s=2.0)
    assert set(found) == {"clip_image_encoder"}  # a model that did nothing is left out
    model = found["clip_image_encoder"]
    assert model["requests"] == 20 and model["executions"] == 5
    assert model["mean_batch"] == 4.0 and model["batch_sizes"] == {4: 5}
    assert model["queue_ms"] == pytest.approx(3.0)  # 60 ms over 20 requests
    assert model["compute_infer_ms"] == pytest.approx(5.0)  # 100 ms over 20 requests
    assert model["compute_input_ms"] == pytest.approx(0.1)
    assert model["busy_s"] == pytest.approx(5 * (4 * 10**6 + 2 * 10**5) / 1e9)
    assert model["utilization"] == pytest.approx(model["busy_s"] / 2.0)


def test_gpu_metrics_parsing() -> None:
    text = (
        "# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)\n"
        'nv_gpu_utilization{gpu_uuid="GPU-1"} 0.75\n'
        'nv_gpu_memory_used_bytes{gpu_uuid="GPU-1"} 1.5e+09\n'
        'nv_inference_count{model="clip_text",version="1"} 12\n'
    )
    assert parse_gpu_metrics(text) == {
        "nv_gpu_utilization": 0.75,
        "nv_gpu_memory_used_bytes": 1.5e9,
    }


@pytest.mark.gpu
def test_gpu_metrics_reported_on_gpu(triton, tmp_path: Path) -> None:
    report = run_bench(
        BenchOptions(
            url=triton.grpc_url,
            metrics_url=triton.metrics_url,
            scenarios=("clip_image",),
            concurrency=(1,),
            warmup_s=0.1,
            duration_s=0.5,
            baselines=False,
            out=tmp_path,
        )
    )
    assert "nv_gpu_utilization" in report["scenarios"]["clip_image"]["points"][0]["gpu"]


def test_short_window_points_are_marked_and_not_best() -> None:
    from vlpserve.benchmarks.report import best_point, markdown

    def point(concurrency: int, requests: int, rate: float) -> dict:
        return {
            "mode": "closed",
            "concurrency": concurrency,
            "rate_rps": None,
            "requests": requests,
            "items_per_s": rate,
            "requests_per_s": rate,
            "errors": 0,
            "latency_ms": {"p50": 1.0},
            "triton": {},
        }

    sound, coarse = point(4, 40, 10.0), point(64, 70, 12.0)  # 70 < 2 x 64 completions
    assert best_point([sound, coarse]) is sound
    assert best_point([coarse]) is coarse  # nothing better to offer
    report = {
        "started": "now",
        "machine": {"cpu": "cpu", "cores": 2, "gpu": None},
        "settings": {"size": "tiny", "command": "test"},
        "scenarios": {"clip_text": {"points": [sound, coarse]}},
    }
    text = markdown(report)
    assert "| clip_text | c=64 (short window) |" in text
    assert "| clip_text | c=4 |" in text and "fewer than 2 completed requests" in text


def test_engine_metrics_parsing() -> None:
    from vlpserve.benchmarks.triton_stats import engine_delta, parse_engine_metrics

    def page(seconds: float, calls: int, rows: int) -> str:
        labels = 'model="blip_caption",phase="step"'
        return (
            "# TYPE vlpserve_generation_seconds_total counter\n"
            f"vlpserve_generation_seconds_total{{{labels}}} {seconds}\n"
            f"vlpserve_generation_calls_total{{{labels}}} {calls}\n"
            f"vlpserve_generation_rows_total{{{labels}}} {rows}\n"
            'nv_inference_count{model="blip_caption",version="1"} 12\n'
        )

    before, after = parse_engine_metrics(page(1.0, 10, 10)), parse_engine_metrics(page(3.0, 30, 90))
    assert before[("blip_caption", "step", "calls")] == 10
    delta = engine_delta(before, after, window_s=4.0)
    assert delta == {
        "blip_caption": {
            "step": {"calls": 20, "ms_per_call": 100.0, "rows_per_call": 4.0, "utilization": 0.5}
        }
    }
    assert engine_delta(after, after, window_s=4.0) == {}  # idle: nothing to report


def test_blip_itm_baselines_equal_hugging_face(blip_checkpoints, blip_exports, photos) -> None:
    """Both ITM baselines run, and the ONNX Runtime one scores pairs as Hugging Face does."""
    import torch
    from transformers import BlipForImageTextRetrieval

    from vlpserve.benchmarks import baselines

    rates = baselines.blip_itm(
        str(blip_checkpoints["itm"]), blip_exports["itm"], photos, batches=(1, 2)
    )
    assert set(rates) == {"hf_eager", "onnxruntime"}
    assert all(set(r) == {1, 2} and min(r.values()) > 0 for r in rates.values())

    processor = hf.processor(blip_checkpoints["itm"])
    model = BlipForImageTextRetrieval.from_pretrained(blip_checkpoints["itm"]).eval()
    images = baselines.sample_images(photos, len(photos))
    texts = ["a cat", "a cup of coffee on a table", "an astronaut", "a rocket launch"]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    itm, itc = baselines.blip_itm_ort(blip_exports["itm"])(inputs["pixel_values"].numpy(), texts)
    with torch.no_grad():
        logits = model(**inputs, use_itm_head=True).itm_score
        cosine = model(**inputs, use_itm_head=False).itm_score
    np.testing.assert_allclose(itm, logits.softmax(dim=1)[:, 1].numpy(), atol=1e-4)
    np.testing.assert_allclose(itc, np.diag(cosine.numpy()), atol=1e-4)


def test_blip_vqa_ort_baseline_equals_hugging_face(blip_checkpoints, blip_exports, photos):
    import torch
    from transformers import BlipForQuestionAnswering

    from vlpserve.benchmarks import baselines
    from vlpserve.benchmarks.scenarios import QUESTIONS

    export = blip_exports["vqa"]
    rates = baselines.blip_generate_ort(export, photos, max_new_tokens=4, batches=(2,))
    assert set(rates) == {2} and rates[2] > 0
    processor = hf.processor(blip_checkpoints["vqa"])
    model = BlipForQuestionAnswering.from_pretrained(blip_checkpoints["vqa"]).eval()
    images = baselines.sample_images(photos, len(photos))
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(len(images))]
    generator = baselines.OrtGenerator(export, max_new_tokens=6)
    try:
        pixels = processor.image_processor(images=images, return_tensors="np")["pixel_values"]
        ours = generator(pixels.astype(np.float32), questions)
    finally:
        generator.close()
    for image, question, ids in zip(images, questions, ours, strict=True):
        inputs = processor(images=image, text=question, return_tensors="pt")
        with torch.no_grad():
            expected = model.generate(**inputs, max_new_tokens=6)
        assert processor.decode(ids, skip_special_tokens=True) == processor.decode(
            expected[0], skip_special_tokens=True
        )


def test_groupvit_baselines_compute_hugging_face_segmentation(
    groupvit_checkpoint, groupvit_export, photos
) -> None:
    """The ONNX Runtime baseline does HF's work: its label maps at the model's input size
    are the argmax of HF's segmentation logits for the same pixels and labels."""
    import torch
    from transformers import GroupViTModel

    from vlpserve.benchmarks import baselines
    from vlpserve.benchmarks.scenarios import SEGMENT_LABELS

    rates = baselines.groupvit_segment(
        str(groupvit_checkpoint), groupvit_export, photos, batches=(1, 2)
    )["groupvit_segment"]
    assert set(rates) == {"hf_eager", "onnxruntime"}
    assert all(set(r) == {1, 2} and min(r.values()) > 0 for r in rates.values())

    processor = hf.processor(groupvit_checkpoint)
    model = GroupViTModel.from_pretrained(groupvit_checkpoint).eval()
    tokens = processor.tokenizer(list(SEGMENT_LABELS), padding=True, return_tensors="np")
    feeds = {k: v.astype("int64") for k, v in tokens.items()}
    pixels = processor.image_processor(
        images=baselines.sample_images(photos, len(photos)), return_tensors="np"
    )["pixel_values"].astype("float32")
    size = (pixels.shape[2], pixels.shape[3])
    ours = baselines.groupvit_ort_segmenter(groupvit_export, feeds)(pixels, [size] * len(pixels))
    with torch.no_grad():
        theirs = model(
            **{k: torch.from_numpy(v) for k, v in feeds.items()},
            pixel_values=torch.from_numpy(pixels),
            output_segmentation=True,
        ).segmentation_logits.argmax(1)
    for result, expected in zip(ours, theirs.numpy(), strict=True):
        assert (result.label_map == expected).mean() >= 0.999


@pytest.mark.parametrize("beams", [1, 3])
def test_blip_caption_ort_baseline_equals_hugging_face(
    blip_checkpoints, blip_exports, photos, beams: int
) -> None:
    """The ONNX Runtime BLIP baseline (exported graphs and the server's engine, in process)
    generates Hugging Face's tokens, so its rate is of the same work."""
    import torch
    from transformers import BlipForConditionalGeneration

    from vlpserve.benchmarks import baselines
    from vlpserve.model_repository.runtime.images import ImagePreprocessing

    export = blip_exports["caption"]
    rates = baselines.blip_generate_ort(
        export, photos, max_new_tokens=5, num_beams=beams, batches=(1, 2)
    )
    assert set(rates) == {1, 2} and min(rates.values()) > 0

    steps = ImagePreprocessing.from_file(export / "preprocessor" / "preprocessor_config.json")
    pixels = np.stack([steps.preprocess(data, i) for i, data in enumerate(photos.values())])
    captioner = baselines.OrtGenerator(export, max_new_tokens=8, num_beams=beams)
    try:
        ours = captioner(pixels)
    finally:
        captioner.close()
    model = BlipForConditionalGeneration.from_pretrained(blip_checkpoints["caption"]).eval()
    processor = hf.processor(blip_checkpoints["caption"])
    images = baselines.sample_images(photos, len(photos))
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=8, num_beams=beams)
    for ids, row in zip(ours, expected, strict=True):
        text = processor.decode(row, skip_special_tokens=True)
        assert processor.decode(ids, skip_special_tokens=True) == text


def test_soak_report(triton, tmp_path: Path) -> None:
    """A 20-second soak over every served task: the report's shape (CI checks no target)."""
    report = run_bench(
        BenchOptions(
            url=triton.grpc_url,
            metrics_url=triton.metrics_url,
            server_pid=triton.pid,
            scenarios=EVERYDAY,
            concurrency=(8,),
            soak_s=20.0,
            soak_window_s=5.0,
            out=tmp_path,
            command="pytest soak",
        )
    )
    assert report["requests"] > 0 and set(report["statuses"]) == {"OK"}, report["error_samples"]
    grpc_only = {s for s in EVERYDAY if not s.endswith(("_openai", "_http"))}
    assert set(report["per_scenario"]) == grpc_only - {"clip_image_tensor"}
    assert len(report["windows"]) >= 4
    assert all(w["requests"] > 0 and w["p99_ms"] >= w["p50_ms"] > 0 for w in report["windows"])
    assert all(w["max_ms"] >= w["p99_9_ms"] >= w["p99_ms"] for w in report["windows"])
    assert all(isinstance(w["stalls"], int) for w in report["windows"])
    memory = report["memory_bytes"]
    assert "tritonserver" in memory and "clip_text" in memory and "total" in memory
    assert all(len(series) >= 4 for series in memory.values())
    assert set(report["targets"]) == {
        "zero_errors",
        "memory_growth_below_5pct",
        "p99_within_1_5x_of_first_window",
    }
    markdown = (tmp_path / "soak.md").read_text()
    assert "| window (from s) |" in markdown and "tritonserver" in markdown
    assert (tmp_path / "soak.png").read_bytes().startswith(PNG)
    assert json.loads((tmp_path / "soak.json").read_text())["requests"] == report["requests"]


def test_stalls_are_requests_beyond_ten_medians() -> None:
    from vlpserve.benchmarks.load import summarize

    found = summarize([0.002] * 995 + [0.0205, 0.5, 0.51, 0.49, 0.003])
    assert found["p50"] == pytest.approx(2.0) and found["stalls"] == 4.0  # 20.5, 490-510 ms
    assert found["max"] == pytest.approx(510.0) and found["p99.9"] > found["p99"]
