"""The CLI: thin adapters, one clear line and a non-zero exit on errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlpserve.cli import main


def test_repo_build_and_validate(clip_export: Path, tmp_path: Path, capsys) -> None:
    repo = tmp_path / "repo"
    assert (
        main(["repo", "build", str(clip_export), "--out", str(repo), "--runtime", "onnxruntime"])
        == 0
    )
    assert main(["repo", "validate", str(repo)]) == 0
    assert "6 models valid (clip)" in capsys.readouterr().out


def test_export_groupvit_cli(groupvit_checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "export"
    assert main(["export", "groupvit", "--model", str(groupvit_checkpoint), "--out", str(out)]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["family"] == "groupvit"
    assert main(["repo", "build", str(out), "--out", str(tmp_path / "repo")]) == 0
    assert main(["repo", "validate", str(tmp_path / "repo")]) == 0
    assert "7 models valid (groupvit)" in capsys.readouterr().out


def test_validate_broken_repo_exits_1(python_repo: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "repo"
    shutil.copytree(python_repo, broken)
    (broken / "clip_text_encoder" / "1" / "model.onnx").unlink()
    assert main(["repo", "validate", str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vlpserve: error:") and "model.onnx is missing" in err


def test_export_missing_checkpoint_exits_1(tmp_path: Path, capsys) -> None:
    code = main(["export", "clip", "--model", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "vlpserve: error: cannot load CLIP checkpoint" in err
    assert "Traceback" not in err


def test_export_cli_writes_report(clip_checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "export"
    assert main(["export", "clip", "--model", str(clip_checkpoint), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "text_encoder" in printed and "parity min cosine" in printed
    report = json.loads((out / "export_report.json").read_text())
    assert set(report["graphs"]) == {"text_encoder", "image_encoder"}


def test_repo_build_rejects_non_export(tmp_path: Path, capsys) -> None:
    assert main(["repo", "build", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    assert "not an export folder" in capsys.readouterr().err


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", "groupvit-nope"])
    assert info.value.code == 2


def test_prepared_repository_holds_only_the_requested_checkpoints(
    clip_export: Path, groupvit_export: Path, tmp_path: Path
) -> None:
    """A second bench/demo deployment into the same workdir serves only what it asks for."""
    from vlpserve.export.report import ExportReport
    from vlpserve.model_repository.prepare import prepare_repository

    def prepared(name: str, source: Path) -> set[str]:
        # the export is current, so it is reused; only the repository is rebuilt
        export = tmp_path / f"export-{name}"
        shutil.copytree(source, export)
        checkpoint = ExportReport.read(export).source
        repo, deployed = prepare_repository(tmp_path, (name,), models={name: checkpoint})
        assert deployed[name][1] == export
        return {p.name for p in repo.iterdir()}

    assert all(m.startswith("clip_") for m in prepared("clip", clip_export))
    assert all(m.startswith("groupvit_") for m in prepared("groupvit", groupvit_export))


def test_demo_on_tiny_models(
    clip_export: Path,
    groupvit_export: Path,
    siglip_export: Path,
    blip_exports: dict[str, Path],
    tmp_path: Path,
    capsys,
) -> None:
    """`make demo`'s path, `vlpserve demo`, on the tiny checkpoints (their exports reused)."""
    from vlpserve.export.report import ExportReport

    exports = {
        "clip": clip_export,
        "groupvit": groupvit_export,
        "siglip": siglip_export,
        "blip-caption": blip_exports["caption"],
        "blip-vqa": blip_exports["vqa"],
    }
    for name, export in exports.items():
        shutil.copytree(export, tmp_path / f"export-{name}")
    sources = {name: ExportReport.read(export).source for name, export in exports.items()}
    command = ["demo", "--workdir", str(tmp_path), "--model", sources["clip"]]
    command += ["--groupvit", sources["groupvit"], "--blip-caption", sources["blip-caption"]]
    command += ["--blip-vqa", sources["blip-vqa"], "--siglip", sources["siglip"]]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert out.count("reusing the export") == 5
    for line in (
        "CLIP: embedded 4 photos -> (4, 16)",
        "zero-shot classification",
        "SigLIP: zero-shot, an independent sigmoid per label",
        "GroupViT: segmented chelsea.png",
        "BLIP: captions of 4 photos",
        "chelsea.png: what animal is in the picture? ->",
        "tritonserver stopped; demo done",
    ):
        assert line in out, out
    assert (tmp_path / "chelsea_segmentation.png").read_bytes().startswith(b"\x89PNG")
