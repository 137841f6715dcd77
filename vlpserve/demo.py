"""``vlpserve demo``: export CLIP, GroupViT and BLIP (captioning, VQA), build one repository,
serve it, then embed, classify, segment, caption and question the sample photos.

Uses the hub's checkpoints (openai/clip-vit-base-patch32, nvidia/groupvit-gcc-yfcc,
Salesforce/blip-image-captioning-base, Salesforce/blip-vqa-base) when the hub can be
reached; otherwise the same architectures with seeded random weights, and says so: the
answers are then meaningless, the costs are the real ones.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from vlpserve.contract import Family
from vlpserve.export.samples import SAMPLE_LABELS, photo_bytes

DEMO_CHECKPOINTS = ("clip", "groupvit", "siglip", "blip-caption", "blip-vqa")
SEGMENT_LABELS = ["cat", "grass", "wall", "sky"]


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
        models: hub ids or folders by name (``clip``, ``groupvit``, ``siglip``,
            ``blip-caption``, ``blip-vqa``) to use instead of the defaults.
    """
    from vlpserve.client import Client
    from vlpserve.model_repository import validate_repository
    from vlpserve.model_repository.prepare import prepare_repository
    from vlpserve.serve import TritonServer

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
        with Client(server.grpc_url, family=Family.SIGLIP) as client:
            probs = client.classify(list(photos.values()), list(SAMPLE_LABELS))
            print("\nSigLIP: zero-shot, an independent sigmoid per label (rows need not sum to 1):")
            for name, row in zip(photos, probs, strict=True):
                best = int(row.argmax())
                print(f"  {name:<14} -> {SAMPLE_LABELS[best]:<14} p={row[best]:.3f}")
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
