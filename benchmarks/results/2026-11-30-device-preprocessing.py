"""Device pre-processing (``--preprocess device``) against the processor's pixels, on CLIP
ViT-B/32 with seeded weights (the bench's checkpoint), in process on this machine's CPU.

Run from the repository root after ``make install``:
    .venv/bin/python benchmarks/results/2026-11-30-device-preprocessing.py [WORKDIR]

Prints, per photo (the real ones and odd shapes), the embeddings' cosine between the fp32
image graph on the device path's pixels and on CLIPImageProcessor's, the pixels' distance in
8-bit levels, and the per-image time of each path after decoding (one thread, median of 20).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import CLIPImageProcessor

from vlpserve.benchmarks.baselines import median_s
from vlpserve.export.common import Precision
from vlpserve.export.samples import photo_bytes
from vlpserve.layout import ExportFolder
from vlpserve.model_repository.prepare import checkpoint, exported
from vlpserve.model_repository.runtime.device_images import DeviceImages
from vlpserve.model_repository.runtime.images import ImagePreprocessing
from vlpserve.ort import session


def median_ms(work: Callable[[], object], repeats: int = 20) -> float:
    return median_s(work, warmup=0, repeats=repeats) * 1e3


def main() -> None:
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else "build/bench")
    source = checkpoint(workdir, "clip")
    export_dir = exported(workdir, "clip", source, Precision.FP32)
    folder = ExportFolder(export_dir)
    graph = session(folder.graph("image_encoder"))
    steps = ImagePreprocessing.from_file(folder.preprocessor / "preprocessor_config.json")
    processor = CLIPImageProcessor.from_pretrained(folder.preprocessor)
    device = DeviceImages(steps)
    images = {n: Image.open(io.BytesIO(d)).convert("RGB") for n, d in photo_bytes().items()}
    cat = images["chelsea.png"]
    images |= {f"cat {w}x{h}": cat.resize((w, h)) for w, h in ((31, 240), (9, 12), (1600, 1066))}
    std = np.array(steps.std)[:, None, None]
    print("| image | size | cosine | max levels | mean levels | host ms | device ms |")
    print("|---|---|---|---|---|---|---|")
    for name, image in images.items():
        theirs = processor(images=image, return_tensors="np")["pixel_values"]
        ours = device(image).numpy()
        levels = np.abs((ours[0] - theirs[0]) * std * 255)
        (a,) = graph.run(None, {"pixel_values": ours})
        (b,) = graph.run(None, {"pixel_values": theirs})
        cosine = float(np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b))
        host_ms = median_ms(partial(steps, image))
        device_ms = median_ms(partial(device, image))
        print(
            f"| {name} | {image.width}x{image.height} | {cosine:.7f} | {levels.max():.2f} | "
            f"{levels.mean():.3f} | {host_ms:.2f} | {device_ms:.2f} |"
        )


if __name__ == "__main__":
    main()
