"""transformers 5's two image-processor backends against vlpserve's server-side
pre-processing, on the real photos and odd shapes: CLIP's and BLIP's processors.

vlpserve reproduces the PIL backend (``backend="pil"``, 4.x's slow processor) bit for bit;
this measures how far the torchvision backend (5.x's default where torchvision is installed)
is from it, in 8-bit levels, and what that does to CLIP ViT-B/32 image embeddings (seeded
weights, the bench's checkpoint, fp32 graph).

Needs torchvision beside transformers 5, which the project's environments do not have (on
this machine only torch 2.14.1's CUDA build comes with a working torchvision):
    python3 -m venv /tmp/vtv && /tmp/vtv/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        'transformers>=5' onnx onnxruntime tokenizers scikit-image open-clip-torch==3.3.0 \\
        tritonclient grpcio
    PYTHONPATH=. /tmp/vtv/bin/python benchmarks/results/2026-12-06-processor-backends.py
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import AutoImageProcessor

from vlpserve.export import hf
from vlpserve.export.checkpoints import Size, build_blip, build_clip
from vlpserve.export.samples import photo_bytes
from vlpserve.model_repository.runtime.images import ImagePreprocessing


def images() -> dict[str, Image.Image]:
    found = {n: Image.open(io.BytesIO(d)).convert("RGB") for n, d in photo_bytes().items()}
    cat = found["chelsea.png"]
    sizes = ((31, 240), (9, 12), (224, 224), (1600, 1066), (4000, 3000))
    return found | {f"cat {w}x{h}": cat.resize((w, h)) for w, h in sizes}


def compare(folder: Path, name: str, graph: object | None) -> None:
    ours = ImagePreprocessing.from_file(folder / "preprocessor_config.json")
    pil = AutoImageProcessor.from_pretrained(folder, backend="pil")
    vision = AutoImageProcessor.from_pretrained(folder, backend="torchvision")
    std = np.array(ours.std)[:, None, None]
    print(f"\n{name}: PIL backend {type(pil).__name__}, torchvision {type(vision).__name__}\n")
    print("| image | size | ours = PIL | torchvision: max levels | mean levels | cosine |")
    print("|---|---|---|---|---|---|")
    for label, image in images().items():
        mine = ours(image)[None]
        by_pil = pil(images=image, return_tensors="np")["pixel_values"]
        by_tv = vision(images=image, return_tensors="pt")["pixel_values"].numpy()
        equal = bool(np.array_equal(mine, by_pil))
        levels = np.abs((by_tv[0] - by_pil[0]) * std * 255)
        cosine = "-"
        if graph is not None:
            (a,) = graph.run(None, {"pixel_values": by_pil.astype(np.float32)})  # type: ignore[attr-defined]
            (b,) = graph.run(None, {"pixel_values": by_tv.astype(np.float32)})  # type: ignore[attr-defined]
            cosine = f"{float(np.sum(a * b)):.6f}"
        print(
            f"| {label} | {image.width}x{image.height} | {equal} | {levels.max():.2f} | "
            f"{levels.mean():.3f} | {cosine} |"
        )


def main() -> None:
    import tempfile

    import transformers

    from vlpserve.export import ExportOptions, export_clip
    from vlpserve.ort import session

    print(f"transformers {transformers.__version__}")
    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    clip = build_clip(work / "clip", size=Size.BASE, seed=0)
    export_clip(ExportOptions(model=str(clip), out=work / "clip-export"))
    graph = session(work / "clip-export" / "image_encoder" / "model.onnx")
    compare(work / "clip-export" / "preprocessor", "CLIP ViT-B/32", graph)
    blip = build_blip(work / "blip", kind="caption", seed=0)
    # transformers 5 saves a processor as one processor_config.json: the image processor's
    # own file, as the export writes it, is what the server reads.
    hf.image_processor(blip).save_pretrained(work / "blip-preprocessor")
    compare(work / "blip-preprocessor", "BLIP", None)


if __name__ == "__main__":
    main()
