"""Session fixtures: tiny seeded CLIP and GroupViT, exports, repositories, a real tritonserver."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vlpserve.export import (
    ExportOptions,
    export_blip,
    export_clip,
    export_groupvit,
    export_siglip,
)
from vlpserve.export.checkpoints import build_blip, build_clip, build_groupvit
from vlpserve.export.hf import features, image_processor
from vlpserve.model_repository import RepositoryOptions, Runtime, build_repository
from vlpserve.serve import TritonServer

# Run from the client-only environment by tests/test_client_env.py, never collected here.
collect_ignore = ["client_env"]

# Small enough that splitting is exercised with a handful of items; long enough a queue delay
# that requests sent together are batched together (the tests check that they were).
TEST_MAX_BATCH_SIZE = 4
TEST_QUEUE_DELAY_US = 50_000
TEST_MAX_LABELS = 10  # the benchmark scenario sends 10 labels


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded CLIP saved as a hub checkpoint folder (real 49,408-token vocabulary)."""
    return build_clip(tmp_path_factory.mktemp("clip-tiny"), seed=0)


@pytest.fixture(scope="session")
def clip_export(clip_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clip-export")
    export_clip(ExportOptions(model=str(clip_checkpoint), out=out))
    return out


@pytest.fixture(scope="session")
def groupvit_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded GroupViT with CLIP's tokenizer and image processor."""
    return build_groupvit(tmp_path_factory.mktemp("groupvit-tiny"), seed=0)


@pytest.fixture(scope="session")
def groupvit_export(groupvit_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("groupvit-export")
    export_groupvit(ExportOptions(model=str(groupvit_checkpoint), out=out))
    return out


@pytest.fixture(scope="session")
def siglip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded SigLIP (SentencePiece vocabulary trained at build time)."""
    from vlpserve.export.siglip_checkpoints import build_siglip

    return build_siglip(tmp_path_factory.mktemp("siglip-tiny"), version=1, seed=0)


@pytest.fixture(scope="session")
def siglip_export(siglip_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("siglip-export")
    export_siglip(ExportOptions(model=str(siglip_checkpoint), out=out))
    return out


BLIP_KINDS = ("caption", "itm", "vqa")


@pytest.fixture(scope="session")
def blip_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny seeded BLIP checkpoints (captioning, ITM, VQA) with BLIP's real tokenizer."""
    return {
        kind: build_blip(tmp_path_factory.mktemp(f"blip-{kind}"), kind=kind, seed=0)
        for kind in BLIP_KINDS
    }


@pytest.fixture(scope="session")
def blip_exports(
    blip_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    exports = {}
    for kind, checkpoint in blip_checkpoints.items():
        out = tmp_path_factory.mktemp(f"blip-{kind}-export")
        export_blip(ExportOptions(model=str(checkpoint), out=out))
        exports[kind] = out
    return exports


def _repo(exports: list[Path], out: Path, runtime: Runtime) -> Path:
    """One repository holding every family's models (their names do not collide)."""
    for export_dir in exports:
        build_repository(
            RepositoryOptions(
                export_dir=export_dir,
                out=out,
                runtime=runtime,
                max_batch_size=TEST_MAX_BATCH_SIZE,
                max_queue_delay_us=TEST_QUEUE_DELAY_US,
                max_labels=TEST_MAX_LABELS,
            )
        )
    return out


@pytest.fixture(scope="session")
def python_repo(
    clip_export: Path,
    groupvit_export: Path,
    siglip_export: Path,
    blip_exports: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The python-runtime repository: CLIP, GroupViT, SigLIP and the three BLIP kinds."""
    out = tmp_path_factory.mktemp("repo-python")
    exports = [clip_export, groupvit_export, siglip_export, *blip_exports.values()]
    return _repo(exports, out, Runtime.PYTHON)


@pytest.fixture(scope="session")
def onnxruntime_repo(
    clip_export: Path,
    groupvit_export: Path,
    siglip_export: Path,
    blip_exports: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    out = tmp_path_factory.mktemp("repo-ort")
    exports = [clip_export, groupvit_export, siglip_export, *blip_exports.values()]
    return _repo(exports, out, Runtime.ONNXRUNTIME)


@pytest.fixture(scope="session")
def triton(python_repo: Path) -> Iterator[TritonServer]:
    """A real tritonserver over the python-runtime repository, started by our launcher."""
    with TritonServer(python_repo) as server:
        yield server


@dataclass
class Reference:
    """Hugging Face CLIP in process: the reference the served results are measured against."""

    model: Any
    tokenizer: Any
    processor: Any

    def text_embeds(self, texts: list[str]) -> Any:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            embeds = features(self.model.get_text_features(**batch))
        return torch.nn.functional.normalize(embeds, dim=-1).numpy()

    def image_embeds(self, images: list[Any]) -> Any:
        import torch

        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            embeds = features(self.model.get_image_features(pixel_values=pixels))
        return torch.nn.functional.normalize(embeds, dim=-1).numpy()


@pytest.fixture(scope="session")
def reference(clip_checkpoint: Path) -> Reference:
    from transformers import CLIPModel, CLIPTokenizerFast

    return Reference(
        model=CLIPModel.from_pretrained(clip_checkpoint).eval(),
        tokenizer=CLIPTokenizerFast.from_pretrained(clip_checkpoint),
        processor=image_processor(clip_checkpoint),
    )


@pytest.fixture(scope="session")
def groupvit_reference(groupvit_checkpoint: Path) -> Reference:
    from transformers import CLIPTokenizerFast, GroupViTModel

    return Reference(
        model=GroupViTModel.from_pretrained(groupvit_checkpoint).eval(),
        tokenizer=CLIPTokenizerFast.from_pretrained(groupvit_checkpoint),
        processor=image_processor(groupvit_checkpoint),
    )


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    from vlpserve.export.samples import photo_bytes

    return photo_bytes()


@pytest.fixture(scope="session")
def clip_repo(clip_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with CLIP alone: quick to start, for tests that start servers of their own."""
    return _repo([clip_export], tmp_path_factory.mktemp("repo-clip"), Runtime.PYTHON)


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files made at run time: a CA, a server certificate for localhost and 127.0.0.1,
    a client certificate from the same CA, and another CA that signed none of them."""
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "127.0.0.2")
    client = ca.issue_cert("client.example")
    files = {
        "ca": ca.cert_pem,
        "other_ca": other.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(folder / f"{name}.pem")
    return {name: folder / f"{name}.pem" for name in files}
