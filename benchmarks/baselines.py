"""In-process baselines of the same checkpoints: Hugging Face PyTorch eager (fp32 on CPU,
fp16 on GPU) and ONNX Runtime on the exported graphs, at batch 1 and larger batches."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vlpserve.benchmarks.scenarios import QUESTIONS, SEGMENT_LABELS, TEXTS
from vlpserve.export.report import ExportReport
from vlpserve.layout import ExportFolder

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
    from vlpserve.ort import session

    return session(path, on_gpu=True)  # CUDA first where ORT has it, as served


def sample_images(photos: dict[str, bytes], count: int) -> list[Any]:
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
    text_graph = _ort(ExportFolder(export_dir).graph("text_encoder"))
    image_graph = _ort(ExportFolder(export_dir).graph("image_encoder"))
    report = ExportReport.read(export_dir)
    # As the checkpoint wants its texts: padded to the longest (CLIP), or to max_length
    # (SigLIP's 64, as trained and as served).
    padding = {"padding": "max_length", "max_length": report.max_text_length}
    if report.text_padding != "max_length":
        padding = {"padding": True}

    def tokens(batch: int) -> dict[str, np.ndarray]:
        texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
        found = processor.tokenizer(texts, truncation=True, return_tensors="np", **padding)
        return {k: v for k, v in found.items() if k in ("input_ids", "attention_mask")}

    def pixels(batch: int) -> np.ndarray:
        return processor.image_processor(images=sample_images(photos, batch), return_tensors="np")[
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

    e2e_text, e2e_image = _with_input_work(export_dir, text_graph, image_graph, photos)
    return {
        f"{family}_text": {
            "hf_eager": _rates(text_batches, hf_text),
            "onnxruntime": _rates(text_batches, ort_text),
            "onnxruntime_e2e": _rates(text_batches, e2e_text),
        },
        f"{family}_image": {
            "hf_eager": _rates(image_batches, hf_image),
            "onnxruntime": _rates(image_batches, ort_image),
            "onnxruntime_e2e": _rates(image_batches, e2e_image),
        },
    }


def _with_input_work(
    export_dir: Path, text_graph: Any, image_graph: Any, photos: dict[str, bytes]
) -> tuple[Callable[[int], Callable[[], object]], Callable[[int], Callable[[], object]]]:
    """ONNX Runtime doing the served path's own input work, for a like-for-like ratio: the
    texts tokenized and padded by the server's tokenizer code, the JPEGs the bench sends
    decoded and pre-processed by the server's image code on one thread per core (as the
    pre-processor model does), then the same graph in process."""
    from concurrent.futures import ThreadPoolExecutor

    from vlpserve.benchmarks.scenarios import jpeg_photos
    from vlpserve.contract import ATTENTION_MASK, INPUT_IDS, PIXEL_VALUES
    from vlpserve.model_repository.runtime.images import ImagePreprocessing
    from vlpserve.model_repository.runtime.text import TextTokenizer
    from vlpserve.ort import usable_cpus

    folder = ExportFolder(export_dir)
    report = ExportReport.read(export_dir)
    tokenizer = TextTokenizer.of(folder.tokenizer, **report.tokenizer_options())
    steps = ImagePreprocessing.from_file(folder.preprocessor_file)
    jpegs = jpeg_photos(photos)
    pool = ThreadPoolExecutor(max_workers=usable_cpus())

    def text(batch: int) -> Callable[[], object]:
        texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]

        def run() -> object:
            ids, mask = tokenizer.encode(texts)
            return text_graph.run(None, {INPUT_IDS: ids, ATTENTION_MASK: mask})

        return run

    def image(batch: int) -> Callable[[], object]:
        data = [jpegs[i % len(jpegs)] for i in range(batch)]

        def run() -> object:
            values = np.stack(list(pool.map(steps.preprocess, data, range(batch))))
            return image_graph.run(None, {PIXEL_VALUES: values})

        return run

    return text, image


def photo_embedding(
    checkpoint: str, export_dir: Path, corpus: list[bytes], *, batches: tuple[int, ...] = (1, 8)
) -> dict[str, dict[int, float]]:
    """Images/s over the photo corpus, each side doing all of its own work on the encoded
    bytes: Hugging Face eager as its users load images (``load_image``: EXIF orientation,
    RGB) and its processor, then ``get_image_features``; ONNX Runtime after the server's
    decode code on one thread per core, exact and ``fast``."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor
    from transformers.image_utils import load_image

    from vlpserve.contract import PIXEL_VALUES
    from vlpserve.model_repository.runtime.images import ImagePreprocessing
    from vlpserve.model_repository.runtime.params import InputLimits, register_image_plugins
    from vlpserve.ort import usable_cpus

    register_image_plugins()
    device, dtype = _device()
    model = AutoModel.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(checkpoint).image_processor
    graph = _ort(ExportFolder(export_dir).graph("image_encoder"))
    config = ExportFolder(export_dir).preprocessor_file
    pool = ThreadPoolExecutor(max_workers=usable_cpus())

    def chunks(batch: int) -> list[list[bytes]]:
        """Every corpus photo once (at least one batch), in batches: each kind counts."""
        count = max(batch, len(corpus))
        sent = [corpus[i % len(corpus)] for i in range(count - count % batch)]
        return [sent[i : i + batch] for i in range(0, len(sent), batch)]

    def hf(data: list[bytes]) -> object:
        images = [load_image(Image.open(io.BytesIO(d))) for d in data]
        values = processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return model.get_image_features(pixel_values=values.to(device, dtype))

    def ort(decode: str) -> Callable[[list[bytes]], object]:
        steps = ImagePreprocessing.from_file(config, limits=InputLimits(decode=decode))
        return lambda data: graph.run(
            None, {PIXEL_VALUES: np.stack(list(pool.map(steps.preprocess, data, range(len(data)))))}
        )

    def rates(run: Callable[[list[bytes]], object]) -> dict[int, float]:
        found = {}
        for batch in batches:
            work = chunks(batch)
            seconds = median_s(partial(_each, run, work), repeats=3)
            found[batch] = sum(len(c) for c in work) / seconds
        return found

    return {
        "hf_eager": rates(hf),
        "onnxruntime_e2e": rates(ort("exact")),
        "onnxruntime_e2e_fast": rates(ort("fast")),
    }


def _each(run: Callable[[list[bytes]], object], work: list[list[bytes]]) -> list[object]:
    return [run(chunk) for chunk in work]


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
        values = processor.image_processor(images=sample_images(photos, batch), return_tensors="np")
        return np.asarray(values["pixel_values"], dtype=np.float32)

    def hf(batch: int) -> Callable[[], object]:
        values = torch.from_numpy(pixels(batch)).to(device, dtype)
        return lambda: torch.no_grad()(model)(
            **hf_labels, pixel_values=values, output_segmentation=True
        )

    def ort(batch: int) -> Callable[[], object]:
        values = pixels(batch)
        sizes = [(image.height, image.width) for image in sample_images(photos, batch)]
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

    folder = ExportFolder(export_dir)
    image_graph = _ort(folder.graph("image_encoder"))
    text_graph = _ort(folder.graph("text_encoder"))
    logit_scale = float(ExportReport.read(export_dir).required("logit_scale"))

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


class OrtGenerator:
    """BLIP captioning or VQA with ONNX Runtime on the exported graphs in process: the
    vision encoder on a batch of pixel values (and, for VQA, the question encoder on each
    question, as the server runs it), then the server's generation engine (the same decoder
    graphs, batching and search) decoding all rows together.

    Call it with pixel values (and questions); it returns each row's token ids.
    ``close()`` stops the engine.
    """

    def __init__(self, export_dir: Path, *, max_new_tokens: int, num_beams: int = 1) -> None:
        from vlpserve.model_repository.runtime.blip_common import BlipText
        from vlpserve.model_repository.runtime.generation import (
            DecoderGraphs,
            Engine,
            GenerationParams,
        )

        report = ExportReport.read(export_dir)
        folder = ExportFolder(export_dir)
        self.kind = str(report.required("kind"))
        self.bos = int(report.required("bos_token_id"))
        self.text = BlipText(folder.tokenizer_file)
        self.vision = _ort(folder.graph("vision_encoder"))
        self.question_encoder = (
            _ort(folder.graph("question_encoder")) if self.kind == "vqa" else None
        )
        first, step = (_ort(folder.graph(g)) for g in ("decoder_first", "decoder_step"))
        graphs = DecoderGraphs(first, step)
        self.params = GenerationParams(max_new_tokens=max_new_tokens, num_beams=num_beams)
        self.engine = Engine(graphs, eos=int(report.required("sep_token_id")))

    def _states(self, pixels: np.ndarray, questions: list[str] | None) -> list[np.ndarray]:
        from vlpserve.contract import IMAGE_EMBEDS, PIXEL_VALUES
        from vlpserve.model_repository.runtime.blip_common import question_states

        (embeds,) = self.vision.run([IMAGE_EMBEDS], {PIXEL_VALUES: pixels})
        if self.question_encoder is None:
            return list(embeds)
        if questions is None or len(questions) != len(pixels):
            raise ValueError("VQA needs one question per image")
        return [
            question_states(
                self.question_encoder, self.text.encode(question), embeds[row : row + 1]
            )
            for row, question in enumerate(questions)
        ]

    def __call__(self, pixels: np.ndarray, questions: list[str] | None = None) -> list[list[int]]:
        import threading

        from vlpserve.model_repository.runtime.generation import Job

        states = self._states(pixels, questions)
        finished = threading.Semaphore(0)
        results: list[list[int] | str | None] = [None] * len(states)
        for row, row_states in enumerate(states):

            def done(ids: list[int] | None, error: str | None, row: int = row) -> None:
                results[row] = ids if error is None else error
                finished.release()

            job = Job(prompt=[self.bos], states=row_states, params=self.params, on_done=done)
            self.engine.submit(job)
        for _ in states:
            finished.acquire()
        out = []
        for result in results:
            if not isinstance(result, list):
                raise RuntimeError(f"generation failed: {result}")
            out.append(result)
        return out

    def close(self) -> None:
        self.engine.close()


def blip_generate_ort(
    export_dir: Path,
    photos: dict[str, bytes],
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    batches: tuple[int, ...] = (1, 8),
) -> dict[int, float]:
    """Captions (or answers) per second of ``OrtGenerator``: ONNX Runtime and the server's
    engine, in process."""
    from vlpserve.model_repository.runtime.images import ImagePreprocessing

    steps = ImagePreprocessing.from_file(ExportFolder(export_dir).preprocessor_file)
    data = list(photos.values())
    generator = OrtGenerator(export_dir, max_new_tokens=max_new_tokens, num_beams=num_beams)

    def run(batch: int) -> Callable[[], object]:
        pixels = np.stack([steps.preprocess(data[i % len(data)], i) for i in range(batch)])
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch)]
        return lambda: generator(pixels, questions if generator.kind == "vqa" else None)

    try:
        return {batch: batch / median_s(run(batch), repeats=3) for batch in batches}
    finally:
        generator.close()


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
            images=sample_images(photos, batch), text=texts, padding=True, return_tensors="pt"
        )
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return lambda: torch.no_grad()(model.generate)(
            **inputs, max_new_tokens=max_new_tokens, num_beams=num_beams
        )

    return {"hf_eager": {batch: batch / median_s(run(batch), repeats=3) for batch in batches}}


def blip_itm(
    checkpoint: str,
    export_dir: Path,
    photos: dict[str, bytes],
    *,
    batches: tuple[int, ...] = (1, 8),
) -> dict[str, dict[int, float]]:
    """Pairs/s of BLIP image-text matching, the ITM head and the ITC cosine, both of which
    the served ``blip_itm`` returns for every pair: Hugging Face eager, and ONNX Runtime on
    the exported graphs (``blip_itm_ort``)."""
    import torch
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    device, dtype = _device()
    model = BlipForImageTextRetrieval.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    processor = BlipProcessor.from_pretrained(checkpoint)
    scorer = blip_itm_ort(export_dir)

    def texts(batch: int) -> list[str]:
        return [TEXTS[i % len(TEXTS)] for i in range(batch)]

    def hf(batch: int) -> Callable[[], object]:
        inputs = processor(
            images=sample_images(photos, batch),
            text=texts(batch),
            padding=True,
            return_tensors="pt",
        )
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)

        @torch.no_grad()
        def both() -> object:
            return model(**inputs, use_itm_head=True), model(**inputs, use_itm_head=False)

        return both

    def ort(batch: int) -> Callable[[], object]:
        pixels = processor.image_processor(images=sample_images(photos, batch), return_tensors="np")
        values = np.asarray(pixels["pixel_values"], dtype=np.float32)
        return lambda: scorer(values, texts(batch))

    return {
        "hf_eager": {batch: batch / median_s(hf(batch), repeats=3) for batch in batches},
        "onnxruntime": {batch: batch / median_s(ort(batch), repeats=3) for batch in batches},
    }


def blip_itm_ort(
    export_dir: Path,
) -> Callable[[np.ndarray, list[str]], tuple[np.ndarray, np.ndarray]]:
    """``(pixel_values, texts) -> (ITM probability, ITC cosine)`` per pair, with the exported
    graphs in ONNX Runtime, computed as the served ``blip_itm`` computes them."""
    from vlpserve.model_repository.runtime.blip_common import BlipText, match_scores

    folder = ExportFolder(export_dir)
    text = BlipText(folder.tokenizer_file)
    vision, itm_head, text_feat = (
        _ort(folder.graph(name)) for name in ("vision_encoder", "itm_head", "text_feat")
    )

    def run(pixels: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return match_scores(vision, itm_head, text_feat, *text.batch(texts), pixels)

    return run
