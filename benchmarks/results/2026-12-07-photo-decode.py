"""Decode and pre-processing time per corpus photo (benchmarks/photos.py), one thread, exact
against `--decode fast`, for CLIP's processor (shortest edge 224, crop 224) and BLIP's
(384x384, which SigLIP's 224x224 square resize is like), beside Hugging Face's own loading
(`load_image`: EXIF orientation, RGB) and processor on the same bytes. Median of 5 after one
warm-up. Run: .venv/bin/python benchmarks/results/2026-12-07-photo-decode.py"""

from __future__ import annotations

import io
import platform
import statistics
import time
from functools import partial
from pathlib import Path

from PIL import Image

from vlpserve.benchmarks.photos import photo_corpus
from vlpserve.model_repository.runtime.images import ImagePreprocessing
from vlpserve.model_repository.runtime.params import InputLimits

PROCESSORS = {
    "CLIP (224, crop)": {
        "do_resize": True,
        "size": {"shortest_edge": 224},
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    },
    "BLIP (384x384)": {
        "do_resize": True,
        "size": {"height": 384, "width": 384},
        "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    },
}


def _hf(processor, load_image, data: bytes) -> object:
    return processor(images=load_image(Image.open(io.BytesIO(data))), return_tensors="np")


def median_ms(fn) -> float:
    fn()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    from transformers import CLIPImageProcessor
    from transformers.image_utils import load_image

    corpus = photo_corpus()
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "")
    cpu = cpu or platform.processor()
    print(f"CPU: {cpu}; one thread; median of 5, ms per image\n")
    for label, config in PROCESSORS.items():
        exact = ImagePreprocessing.from_hf_config(config)
        fast = ImagePreprocessing.from_hf_config(config, limits=InputLimits(decode="fast"))
        hf = CLIPImageProcessor(**config)
        print(f"### {label}\n")
        print("| photo | bytes | exact | fast | exact / fast | HF load_image + processor |")
        print("|---|---|---|---|---|---|")
        for name, data in corpus.items():
            e = median_ms(partial(exact.preprocess, data, 0))
            f = median_ms(partial(fast.preprocess, data, 0))
            h = median_ms(partial(_hf, hf, load_image, data))
            print(
                f"| {name} | {len(data) / 1e6:.1f} MB | {e:.0f} | {f:.0f} | {e / f:.1f}x "
                f"| {h:.0f} |"
            )
        print()


if __name__ == "__main__":
    main()
