"""The unloading order of a stopping server, read from built repositories' configs (the
behaviour itself is tried against the real server in test_faults.py)."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from vlpserve.serve.drain import calls, waves


def _configs(repo: Path) -> dict[str, model_config_pb2.ModelConfig]:
    found = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        found[config.name] = config
    return found


def test_the_python_runtime_unloads_ensembles_and_segmentation_in_one_wave(
    python_repo: Path,
) -> None:
    configs = _configs(python_repo)
    called = calls(configs)
    assert called["clip_image"] == {"clip_image_preprocessor", "clip_image_encoder"}
    assert called["groupvit_segment"] == {"groupvit_text", "groupvit_image_encoder"}
    assert called["clip_text"] == set()  # tokenizer and graph in one model
    (wave,) = waves(called)
    assert set(wave) >= {"clip_image", "groupvit_image", "siglip_image", "groupvit_segment"}
    assert "clip_text" not in wave and "clip_image_encoder" not in wave


def test_callers_go_before_the_ensembles_they_call(onnxruntime_repo: Path) -> None:
    """With the native runtime, the segmentation model calls the text ensemble: it goes
    first, and the ensemble once the segmentation requests have answered."""
    order = waves(calls(_configs(onnxruntime_repo)))
    first = next(i for i, wave in enumerate(order) if "groupvit_segment" in wave)
    text = next(i for i, wave in enumerate(order) if "groupvit_text" in wave)
    assert first < text
    assert all(len(w) for w in order)
    assert {m for w in order for m in w} >= {"clip_text", "clip_image", "groupvit_text"}


def test_a_cycle_does_not_hang_the_order() -> None:
    assert waves({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    assert waves({"a": {"b"}, "b": set(), "c": {"a"}}) == [["c"], ["a"]]
