"""In-process baselines of the same checkpoints: Hugging Face PyTorch eager (fp32 on CPU,
fp16 on GPU) and ONNX Runtime on the exported graphs, at batch 1 and larger batches."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vlpserve.benchmarks.scenarios import QUESTIONS, SEGMENT_LABELS, TEXTS
from vlpserve.export.common import read_report

ProgressFn = Callable[[str], None]


def median_s(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall time of ``fn`` after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _device() -> tuple[Any, Any]:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def _ort(path: Path) -> Any:
    from vlpserve.model_repository.runtime.sessions import ort_session

    return ort_session(path, on_gpu=True)  # CUDA first where ORT has it, as served


def _images(photos: dict[str, bytes], count: int) -> list[Any]:
    from PIL import Image

    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in photos.values()]
    return [images[i % len(images)] for i in range(count)]


def _rates(
    batches: tuple[int, ...], run: Callable[[int], Callable[[], object]]
) -> dict[int, float]:
    return {batch: batch / median_s(run(batch)) for batch in batches}


def dual_encoder(
    family: str,
    checkpoint: str,
    export_dir: Path,
    photos: dict[str, bytes],
    *,
    text_batches: tuple[int, ...] = (1, 8, 32),
    image_batches: tuple[int, ...] = (1, 8, 16),
) -> dict[str, dict[str, dict[int, float]]]:
    """Items/s of text and image embedding: Hugging Face eager and ONNX Runtime."""
    import torch
    from transformers import AutoModel, AutoProcessor

    device, dtype = _device()
    model = AutoModel.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    text_graph = _ort(export_dir / "text_encoder" / "model.onnx")
    image_graph = _ort(export_dir / "image_encoder" / "model.onnx")

    def tokens(batch: int) -> dict[str, np.ndarray]:
        texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
        return dict(processor.tokenizer(texts, padding=True, return_tensors="np"))

    def pixels(batch: int) -> np.ndarray:
        return processor.image_processor(images=_images(photos, batch), return_tensors="np")[
            "pixel_values"
        ].astype(np.float32)

    def hf_text(batch: int) -> Callable[[], object]:
        feeds = {k: torch.from_numpy(v).to(device) for k, v in tokens(batch).items()}
        return lambda: torch.no_grad()(model.get_text_features)(**feeds)

    def hf_image(batch: int) -> Callable[[], object]:
        values = torch.from_numpy(pixels(batch)).to(device, dtype)
        return lambda: torch.no_grad()(model.get_image_features)(pixel_values=values)

    def ort_text(batch: int) -> Callable[[], object]:
        feeds = {k: v.astype(np.int64) for k, v in tokens(batch).items()}
        return lambda: text_graph.run(None, feeds)

    def ort_image(batch: int) -> Callable[[], object]:
        values = pixels(batch)
        return lambda: image_graph.run(None, {"pixel_values": values})

    return {
        f"{family}_text": {
            "hf_eager": _rates(text_batches, hf_text),
            "onnxruntime": _rates(text_batches, ort_text),
        },
        f"{family}_image": {
            "hf_eager": _rates(image_batches, hf_image),
            "onnxruntime": _rates(image_batches, ort_image),
        },
    }


def groupvit_segment(
    checkpoint: str,
    export_dir: Path,
    photos: dict[str, bytes],
    *,
    batches: tuple[int, ...] = (1, 8),
) -> dict[str, dict[str, dict[int, float]]]:
    """Images/s of GroupViT segmentation with 10 labels: Hugging Face eager
    (``output_segmentation``) and ONNX Runtime (the exported graphs and the server's
    post-processing: a label map at each photo's size)."""
    import torch
    from transformers import AutoProcessor, GroupViTModel

    device, dtype = _device()
    model = GroupViTModel.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    labels = processor.tokenizer(list(SEGMENT_LABELS), padding=True, return_tensors="np")
    label_feeds = {k: v.astype(np.int64) for k, v in labels.items()}
    hf_labels = {k: torch.from_numpy(v).to(device) for k, v in label_feeds.items()}
    segmenter = groupvit_ort_segmenter(export_dir, label_feeds)

    def pixels(batch: int) -> np.ndarray:
        values = processor.image_processor(images=_images(photos, batch), return_tensors="np")
        return np.asarray(values["pixel_values"], dtype=np.float32)

    def hf(batch: int) -> Callable[[], object]:
        values = torch.from_numpy(pixels(batch)).to(device, dtype)
        return lambda: torch.no_grad()(model)(
            **hf_labels, pixel_values=values, output_segmentation=True
        )

    def ort(batch: int) -> Callable[[], object]:
        values = pixels(batch)
        sizes = [(image.height, image.width) for image in _images(photos, batch)]
        return lambda: segmenter(values, sizes)

    return {
        "groupvit_segment": {"hf_eager": _rates(batches, hf), "onnxruntime": _rates(batches, ort)}
    }


def groupvit_ort_segmenter(
    export_dir: Path, label_feeds: dict[str, np.ndarray]
) -> Callable[[np.ndarray, list[tuple[int, int]]], list[Any]]:
    """``(pixel_values, image sizes) -> segmentations`` with the exported graphs in ONNX
    Runtime and the server's post-processing, the labels' tokens given."""
    from vlpserve.contract import GROUP_EMBEDS, GROUPING, IMAGE_EMBEDS, TEXT_EMBEDS
    from vlpserve.model_repository.runtime.segmentation import segment

    image_graph = _ort(export_dir / "image_encoder" / "model.onnx")
    text_graph = _ort(export_dir / "text_encoder" / "model.onnx")
    logit_scale = float(read_report(export_dir)["logit_scale"])

    def run(values: np.ndarray, sizes: list[tuple[int, int]]) -> list[Any]:
        embeds, groups, grouping = image_graph.run(
            [IMAGE_EMBEDS, GROUP_EMBEDS, GROUPING], {"pixel_values": values}
        )
        (texts,) = text_graph.run([TEXT_EMBEDS], label_feeds)
        return [
            segment(
                image_embeds=embeds[k],
                group_embeds=groups[k],
                grouping=grouping[k],
                text_embeds=texts,
                logit_scale=logit_scale,
                model_size=(values.shape[2], values.shape[3]),
                image_size=size,
            )
            for k, size in enumerate(sizes)
        ]

    return run


class OrtCaptioner:
    """BLIP captioning with ONNX Runtime on the exported graphs in process: the vision
    encoder on a batch of pixel values, then the server's generation engine (the same
    decoder graphs, batching and search) decoding all rows together.

    Call it with pixel values; it returns each row's token ids. ``close()`` stops the engine.
    """

    def __init__(self, export_dir: Path, *, max_new_tokens: int, num_beams: int = 1) -> None:
        from vlpserve.model_repository.runtime.generation import (
            DecoderGraphs,
            Engine,
            GenerationParams,
        )

        report = read_report(export_dir)
        self.bos = int(report["bos_token_id"])
        self.vision = _ort(export_dir / "vision_encoder" / "model.onnx")
        graphs = DecoderGraphs(
            export_dir / "decoder_first" / "model.onnx",
            export_dir / "decoder_step" / "model.onnx",
            on_gpu=True,
        )
        self.params = GenerationParams(max_new_tokens=max_new_tokens, num_beams=num_beams)
        self.engine = Engine(graphs, eos=int(report["sep_token_id"]))

    def __call__(self, pixels: np.ndarray) -> list[list[int]]:
        import threading

        from vlpserve.contract import IMAGE_EMBEDS, PIXEL_VALUES
        from vlpserve.model_repository.runtime.generation import Job

        (embeds,) = self.vision.run([IMAGE_EMBEDS], {PIXEL_VALUES: pixels})
        finished = threading.Semaphore(0)
        results: list[list[int] | str | None] = [None] * len(pixels)
        for row in range(len(pixels)):

            def done(ids: list[int] | None, error: str | None, row: int = row) -> None:
                results[row] = ids if error is None else error
                finished.release()

            job = Job(prompt=[self.bos], states=embeds[row], params=self.params, on_done=done)
            self.engine.submit(job)
        for _ in range(len(pixels)):
            finished.acquire()
        out = []
        for result in results:
            if not isinstance(result, list):
                raise RuntimeError(f"generation failed: {result}")
            out.append(result)
        return out

    def close(self) -> None:
        self.engine.close()


def blip_caption_ort(
    export_dir: Path,
    photos: dict[str, bytes],
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    batches: tuple[int, ...] = (1, 8),
) -> dict[int, float]:
    """Captions/s of ``OrtCaptioner`` (ONNX Runtime and the server's engine, in process)."""
    from vlpserve.model_repository.runtime.images import ImagePreprocessing

    steps = ImagePreprocessing.from_file(export_dir / "preprocessor" / "preprocessor_config.json")
    data = list(photos.values())
    captioner = OrtCaptioner(export_dir, max_new_tokens=max_new_tokens, num_beams=num_beams)

    def run(batch: int) -> Callable[[], object]:
        pixels = np.stack([steps.preprocess(data[i % len(data)], i) for i in range(batch)])
        return lambda: captioner(pixels)

    try:
        return {batch: batch / median_s(run(batch), repeats=3) for batch in batches}
    finally:
        captioner.close()


def blip_generate(
    kind: str,
    checkpoint: str,
    photos: dict[str, bytes],
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    batches: tuple[int, ...] = (1, 8),
) -> dict[str, dict[int, float]]:
    """Items/s of Hugging Face BLIP ``generate`` (captions or answers)."""
    import torch
    import transformers
    from transformers import BlipProcessor

    device, dtype = _device()
    name = "BlipForConditionalGeneration" if kind == "caption" else "BlipForQuestionAnswering"
    model = getattr(transformers, name).from_pretrained(checkpoint, dtype=dtype)
    model = model.to(device).eval()
    processor = BlipProcessor.from_pretrained(checkpoint)

    def run(batch: int) -> Callable[[], object]:
        texts = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch)] if kind == "vqa" else None
        inputs = processor(
            images=_images(photos, batch), text=texts, padding=True, return_tensors="pt"
        )
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return lambda: torch.no_grad()(model.generate)(
            **inputs, max_new_tokens=max_new_tokens, num_beams=num_beams
        )

    return {"hf_eager": {batch: batch / median_s(run(batch), repeats=3) for batch in batches}}


def blip_itm(
    checkpoint: str, photos: dict[str, bytes], *, batches: tuple[int, ...] = (1, 8)
) -> dict[str, dict[int, float]]:
    """Pairs/s of Hugging Face BLIP image-text matching: the ITM head and the ITC cosine,
    both of which the served ``blip_itm`` returns for every pair."""
    import torch
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    device, dtype = _device()
    model = BlipForImageTextRetrieval.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    processor = BlipProcessor.from_pretrained(checkpoint)

    def run(batch: int) -> Callable[[], object]:
        texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
        inputs = processor(
            images=_images(photos, batch), text=texts, padding=True, return_tensors="pt"
        )
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)

        @torch.no_grad()
        def both() -> object:
            return model(**inputs, use_itm_head=True), model(**inputs, use_itm_head=False)

        return both

    return {"hf_eager": {batch: batch / median_s(run(batch), repeats=3) for batch in batches}}
