"""``vlpserve demo``: export CLIP, build the repository, serve it, embed and classify photos.

Uses the hub's openai/clip-vit-base-patch32 when it can be reached; otherwise the same
architecture with seeded random weights (and says so: its answers are then meaningless,
its costs are the real ones).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from vlpserve.export.checkpoints import CLIP_BASE_HUB_ID, Size, build_clip
from vlpserve.export.common import REPORT_FILE, ExportOptions, read_report
from vlpserve.export.samples import SAMPLE_LABELS, photo_bytes


def hub_reachable(repo_id: str, timeout_s: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers for ``repo_id`` right now."""
    try:
        from huggingface_hub import model_info

        model_info(repo_id, timeout=timeout_s)
    except Exception:  # offline, DNS failure, gated repo: all mean "not usable here"
        return False
    return True


def _checkpoint(workdir: Path, model: str | None) -> str:
    if model:
        return model
    if hub_reachable(CLIP_BASE_HUB_ID):
        print(f"using {CLIP_BASE_HUB_ID} from the Hugging Face hub")
        return CLIP_BASE_HUB_ID
    folder = workdir / "clip-vit-base-patch32-seeded"
    print(
        f"the Hugging Face hub is out of reach: using the {CLIP_BASE_HUB_ID} architecture "
        "with SEEDED RANDOM WEIGHTS (costs are real, labels and scores are meaningless)"
    )
    if not (folder / "config.json").is_file():
        build_clip(folder, size=Size.BASE, seed=0)
    return str(folder)


def _median_ms(fn: object, repeats: int = 10) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_demo(workdir: Path, *, model: str | None = None) -> None:
    """Run the whole pipeline once and print what it did."""
    from vlpserve.cli import _progress
    from vlpserve.client import Client
    from vlpserve.export import export_clip
    from vlpserve.model_repository import (
        RepositoryOptions,
        TritonServer,
        build_repository,
        validate_repository,
    )

    workdir.mkdir(parents=True, exist_ok=True)
    source = _checkpoint(workdir, model)
    export_dir = workdir / "export"
    reuse = (export_dir / REPORT_FILE).is_file() and read_report(export_dir)["source"] == source
    if reuse:
        print(f"reusing the export in {export_dir}")
    else:
        bar, step = _progress("export clip")
        try:
            export_clip(ExportOptions(model=source, out=export_dir), step)
        finally:
            bar.close()
    repo = workdir / "model_repository"
    names = build_repository(RepositoryOptions(export_dir=export_dir, out=repo))
    validate_repository(repo)
    print(f"repository {repo}: {', '.join(names)}")
    photos = photo_bytes()
    started = time.perf_counter()
    with TritonServer(repo) as server:
        print(f"tritonserver ready in {time.perf_counter() - started:.1f} s on {server.grpc_url}")
        with Client(server.grpc_url) as client:
            embeddings = client.embed_images(list(photos.values()))
            print(f"embedded {len(photos)} photos -> {embeddings.shape}")
            probs = client.classify(list(photos.values()), list(SAMPLE_LABELS))
            print(f"\nzero-shot classification (logit_scale {client.logit_scale:.2f}):")
            for name, row in zip(photos, probs, strict=True):
                best = int(row.argmax())
                print(f"  {name:<14} -> {SAMPLE_LABELS[best]:<14} p={row[best]:.3f}")
            one_photo = [photos["chelsea.png"]]
            text_ms = _median_ms(lambda: client.embed_texts(["a photo of a cat"]))
            image_ms = _median_ms(lambda: client.embed_images(one_photo))
            print("\nround trip over gRPC, batch 1, median of 10:")
            print(f"  text  (5 words)            {text_ms:7.1f} ms")
            print(f"  image (chelsea.png, PNG)   {image_ms:7.1f} ms")
    print("\ntritonserver stopped; demo done")
