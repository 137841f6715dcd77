"""``vlpserve demo``: export CLIP, GroupViT and BLIP (captioning, VQA), build one repository,
serve it, then embed, classify, segment, caption and question the sample photos.

Uses the hub's checkpoints (openai/clip-vit-base-patch32, nvidia/groupvit-gcc-yfcc,
Salesforce/blip-image-captioning-base, Salesforce/blip-vqa-base) when the hub can be
reached; otherwise the same architectures with seeded random weights, and says so: the
answers are then meaningless, the costs are the real ones.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from vlpserve.contract import Family
from vlpserve.export.checkpoints import (
    BLIP_BASE_HUB_IDS,
    CLIP_BASE_HUB_ID,
    GROUPVIT_BASE_HUB_ID,
    Size,
    build_blip,
    build_clip,
    build_groupvit,
)
from vlpserve.export.common import REPORT_FILE, ExportOptions, Precision, read_report
from vlpserve.export.samples import SAMPLE_LABELS, photo_bytes

# The checkpoints the demo and the benchmarks deploy: name -> (family, hub id, seeded builder).
CHECKPOINTS: dict[str, tuple[Family, str, Callable[..., Path]]] = {
    "clip": (Family.CLIP, CLIP_BASE_HUB_ID, build_clip),
    "groupvit": (Family.GROUPVIT, GROUPVIT_BASE_HUB_ID, build_groupvit),
    **{
        f"blip-{kind}": (
            Family.BLIP,
            BLIP_BASE_HUB_IDS[kind],
            lambda out, kind=kind, **kw: build_blip(out, kind=kind, **kw),
        )
        for kind in ("caption", "itm", "vqa")
    },
}
DEMO_CHECKPOINTS = ("clip", "groupvit", "blip-caption", "blip-vqa")
SEGMENT_LABELS = ["cat", "grass", "wall", "sky"]


def hub_reachable(repo_id: str, timeout_s: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers for ``repo_id`` right now."""
    try:
        from huggingface_hub import model_info

        model_info(repo_id, timeout=timeout_s)
    except Exception:  # offline, DNS failure, gated repo: all mean "not usable here"
        return False
    return True


def _checkpoint(
    workdir: Path, hub_id: str, builder: Callable[..., Path], size: Size = Size.BASE
) -> str:
    if size is Size.BASE and hub_reachable(hub_id):
        print(f"using {hub_id} from the Hugging Face hub")
        return hub_id
    folder = workdir / f"{hub_id.split('/')[-1]}-seeded-{size.value}"
    if size is Size.BASE:
        print(
            f"the Hugging Face hub is out of reach: using the {hub_id} architecture with "
            "SEEDED RANDOM WEIGHTS (costs are real, labels and scores are meaningless)"
        )
    if not (folder / "config.json").is_file():
        builder(folder, size=size, seed=0)
    return str(folder)


def prepare_repository(
    workdir: Path,
    names: tuple[str, ...],
    *,
    size: Size = Size.BASE,
    models: dict[str, str] | None = None,
    device: str = "cpu",
    precision: Precision = Precision.FP32,
) -> tuple[Path, dict[str, tuple[str, Path]]]:
    """Checkpoints (hub or seeded), exports at ``precision`` (reused when current) and one
    repository.

    Returns:
        The repository and, per checkpoint name, its source and export folder.
    """
    from vlpserve.model_repository import RepositoryOptions, build_repository

    workdir.mkdir(parents=True, exist_ok=True)
    repo = workdir / "model_repository"
    # An output folder: built afresh, so the server loads only these checkpoints (models of
    # an earlier run would take memory and load time, and be served unasked).
    if repo.exists():
        shutil.rmtree(repo)
    deployed = {}
    for name in names:
        family, hub_id, builder = CHECKPOINTS[name]
        source = (models or {}).get(name) or _checkpoint(workdir, hub_id, builder, size)
        export_dir = _export(workdir, family, name, source, Precision(precision))
        build_repository(RepositoryOptions(export_dir=export_dir, out=repo, device=device))
        deployed[name] = (source, export_dir)
    return repo, deployed


def _export(workdir: Path, family: Family, name: str, source: str, precision: Precision) -> Path:
    from vlpserve.cli import _progress
    from vlpserve.export import export

    suffix = "" if precision is Precision.FP32 else f"-{precision.value}"
    export_dir = workdir / f"export-{name}{suffix}"
    if (export_dir / REPORT_FILE).is_file():
        report = read_report(export_dir)
        if report["source"] == source and report["precision"] == precision.value:
            print(f"reusing the export in {export_dir}")
            return export_dir
    bar, step = _progress(f"export {family.value} ({precision.value})")
    try:
        export(family, ExportOptions(model=source, out=export_dir, precision=precision), step)
    finally:
        bar.close()
    return export_dir


def _median_ms(fn: Callable[[], object], repeats: int = 10) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_demo(workdir: Path, *, models: dict[str, str] | None = None) -> None:
    """Run the whole pipeline once and print what it did.

    Args:
        models: hub ids or folders by name (``clip``, ``groupvit``, ``blip-caption``,
            ``blip-vqa``) to use instead of the defaults.
    """
    from vlpserve.client import Client
    from vlpserve.model_repository import TritonServer, validate_repository

    repo, _ = prepare_repository(workdir, DEMO_CHECKPOINTS, models=models)
    report = validate_repository(repo)
    print(f"repository {repo}: {', '.join(report.models)}")
    photos = photo_bytes()
    started = time.perf_counter()
    with TritonServer(repo) as server:
        print(f"tritonserver ready in {time.perf_counter() - started:.1f} s on {server.grpc_url}")
        with Client(server.grpc_url) as client:
            embeddings = client.embed_images(list(photos.values()))
            print(f"\nCLIP: embedded {len(photos)} photos -> {embeddings.shape}")
            probs = client.classify(list(photos.values()), list(SAMPLE_LABELS))
            print(f"zero-shot classification (logit_scale {client.logit_scale:.2f}):")
            for name, row in zip(photos, probs, strict=True):
                best = int(row.argmax())
                print(f"  {name:<14} -> {SAMPLE_LABELS[best]:<14} p={row[best]:.3f}")
            one_photo = [photos["chelsea.png"]]
            text_ms = _median_ms(lambda: client.embed_texts(["a photo of a cat"]))
            image_ms = _median_ms(lambda: client.embed_images(one_photo))
            print("round trip over gRPC, batch 1, median of 10:")
            print(f"  text  (5 words)            {text_ms:7.1f} ms")
            print(f"  image (chelsea.png, PNG)   {image_ms:7.1f} ms")
        with Client(server.grpc_url, family=Family.GROUPVIT) as client:
            seg = client.segment(photos["chelsea.png"], SEGMENT_LABELS, template="a photo of a {}.")
            overlay = seg.save_overlay(workdir / "chelsea_segmentation.png")
            print(f"\nGroupViT: segmented chelsea.png into {seg.label_map.shape} label map")
            for label, fraction in zip(seg.labels, seg.fractions, strict=True):
                print(f"  {label:<8} {fraction:6.1%} of pixels")
            segment_ms = _median_ms(lambda: client.segment(one_photo[0], SEGMENT_LABELS), 5)
            print(f"  round trip, 4 labels, median of 5: {segment_ms:.1f} ms")
            print(f"  overlay: {overlay.resolve()}")
        with Client(server.grpc_url, family=Family.BLIP, timeout_s=600) as client:
            started = time.perf_counter()
            captions = client.caption(list(photos.values()), max_new_tokens=20)
            took = time.perf_counter() - started
            print(f"\nBLIP: captions of {len(photos)} photos, decoded together ({took:.1f} s):")
            for name, caption in zip(photos, captions, strict=True):
                print(f"  {name:<14} {caption}")
            print("  streamed: ", end="", flush=True)
            for piece in client.stream_caption(photos["chelsea.png"], prompt="a picture of"):
                print(piece, end="", flush=True)
            question = "what animal is in the picture?"
            (answer,) = client.answer([photos["chelsea.png"]], [question])
            print(f"\n  chelsea.png: {question} -> {answer}")
    print("\ntritonserver stopped; demo done")
