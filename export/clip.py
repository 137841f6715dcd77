"""CLIP: separate text and image graphs, projection and L2-normalisation inside each.

optimum's CLIP exports either join both towers in one graph or leave the embeddings
unnormalised; the serving contract wants two graphs that end in unit vectors, so the towers
are this module's own small wrappers, exported with torch.onnx.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from vlpserve.contract import (
    ATTENTION_MASK,
    IMAGE_EMBEDS,
    INPUT_IDS,
    PIXEL_VALUES,
    TEXT_EMBEDS,
    Family,
)
from vlpserve.errors import ExportError
from vlpserve.export.common import (
    Cases,
    ExportOptions,
    GraphSpec,
    Optimizer,
    batch_axes,
    export_graphs,
    library_versions,
    save_processing,
    sequence_axes,
    torch_inputs,
)
from vlpserve.export.hf import features, image_processor
from vlpserve.export.report import ExportReport
from vlpserve.export.samples import SAMPLE_TEXTS, photo_paths
from vlpserve.progress import ProgressFn, no_progress

logger = logging.getLogger(__name__)


def _towers() -> tuple[type, type]:
    import torch

    class TextTower(torch.nn.Module):
        """input_ids, attention_mask -> L2-normalised projected text embedding."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            embeds = features(
                self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
            )
            return torch.nn.functional.normalize(embeds, dim=-1)

    class ImageTower(torch.nn.Module):
        """pixel_values -> L2-normalised projected image embedding."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            embeds = features(self.model.get_image_features(pixel_values=pixel_values))
            return torch.nn.functional.normalize(embeds, dim=-1)

    return TextTower, ImageTower


def load_reference(model: str, model_class: Any, *, fast_only: bool = True) -> tuple[Any, Any, Any]:
    """Model (eager attention, eval), tokenizer (a fast one unless ``fast_only`` is off:
    SigLIP's is SentencePiece) and image processor of a checkpoint."""
    from transformers import AutoTokenizer

    family = model_class.__name__.removesuffix("Model")
    try:
        loaded = model_class.from_pretrained(model, attn_implementation="eager").eval()
        tokenizer = AutoTokenizer.from_pretrained(model, use_fast=True)
        processor = image_processor(model)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load {family} checkpoint {model!r}: {exc}") from exc
    if fast_only and not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{model!r} has no fast tokenizer (tokenizer.json), which serving needs")
    return loaded, tokenizer, processor


def text_cases(tokenizer: Any, vocab_size: int, ids_dtype: str = "int64") -> Cases:
    """Seeded random ids and real sentences, as the text graph's feeds (ids in ``ids_dtype``)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab_size, size=(3, 12), dtype=np.int64)
    ids[:, 0] = tokenizer.bos_token_id
    ids[:, -1] = tokenizer.eos_token_id
    real = tokenizer(list(SAMPLE_TEXTS), padding=True, return_tensors="np")
    return {
        "seeded": {INPUT_IDS: ids.astype(ids_dtype), ATTENTION_MASK: np.ones_like(ids)},
        "real_texts": {
            INPUT_IDS: real["input_ids"].astype(ids_dtype),
            ATTENTION_MASK: real["attention_mask"].astype(np.int64),
        },
    }


def photo_pixels(processor: Any) -> np.ndarray:
    """The sample photographs as the checkpoint's image processor prepares them."""
    from PIL import Image

    photos = [Image.open(path).convert("RGB") for path in photo_paths()]
    return processor(images=photos, return_tensors="np")["pixel_values"].astype(np.float32)


def image_cases(processor: Any, image_size: int) -> Cases:
    """Seeded random pixels and the real sample photographs, as an image graph's feeds."""
    rng = np.random.default_rng(0)
    seeded = rng.standard_normal((2, 3, image_size, image_size)).astype(np.float32)
    return {
        "seeded": {PIXEL_VALUES: seeded},
        "real_photos": {PIXEL_VALUES: photo_pixels(processor)},
    }


def text_graph_spec(model: Any, tokenizer: Any, ids_dtype: str = "int64") -> GraphSpec:
    """Graph spec of the text tower (shared by CLIP-like families); token ids in ``ids_dtype``
    (int32 for TensorRT, whose int64 support is partial)."""
    text_tower, _ = _towers()
    ids = np.full((2, 16), int(tokenizer.eos_token_id), dtype=ids_dtype)
    ids[:, 0] = int(tokenizer.bos_token_id)
    return GraphSpec(
        name="text_encoder",
        module=text_tower(model).eval(),
        example_inputs=torch_inputs({INPUT_IDS: ids, ATTENTION_MASK: np.ones(ids.shape, np.int64)}),
        output_names=(TEXT_EMBEDS,),
        dynamic_axes=sequence_axes(INPUT_IDS, ATTENTION_MASK) | batch_axes(TEXT_EMBEDS),
        optimizer=Optimizer.of(model.config.text_config, "clip"),
        cases=text_cases(tokenizer, model.config.text_config.vocab_size, ids_dtype),
        output_dims={TEXT_EMBEDS: (int(model.config.projection_dim),)},
        max_sequence=int(model.config.text_config.max_position_embeddings),
    )


def image_graph_spec(
    module: Any, vision: Any, processor: Any, output_dims: dict[str, tuple[int, ...]]
) -> GraphSpec:
    """Graph spec of an image tower taking fixed-size pixel_values."""
    size = int(vision.image_size)
    outputs = tuple(output_dims)
    return GraphSpec(
        name="image_encoder",
        module=module.eval(),
        example_inputs=torch_inputs({PIXEL_VALUES: np.zeros((2, 3, size, size), np.float32)}),
        output_names=outputs,
        dynamic_axes=batch_axes(PIXEL_VALUES, *outputs),
        optimizer=Optimizer.of(vision, "clip"),  # "vit" leaves attention unfused
        cases=image_cases(processor, size),
        output_dims=output_dims,
    )


def export_dual_encoder(
    options: ExportOptions,
    family: Family,
    loaded: tuple[Any, Any, Any],
    image_spec: GraphSpec,
    progress: ProgressFn = no_progress,
) -> ExportReport:
    """Export the text and image graphs of a CLIP-like model, its tokenizer and processor.

    Every graph is checked against PyTorch on seeded tensors and on real texts/photos before
    it is accepted (ParityError otherwise).

    Returns:
        The export report (also written to ``<out>/export_report.json``).
    """
    model, tokenizer, processor = loaded
    specs = [text_graph_spec(model, tokenizer, options.ids_dtype), image_spec]
    graphs = export_graphs(specs, options, progress)
    save_processing(options, tokenizer, processor, progress)
    report = ExportReport(
        family=family.value,
        source=options.model,
        precision=options.precision.value,
        opset=options.opset,
        ids_dtype=options.ids_dtype,
        logit_scale=float(model.logit_scale.detach().exp().item()),
        max_text_length=int(model.config.text_config.max_position_embeddings),
        pad_token_id=int(tokenizer.pad_token_id),
        image_size=int(model.config.vision_config.image_size),
        embedding_dim=int(model.config.projection_dim),
        graphs=graphs,
        versions=library_versions(),
    )
    report.write(options.out)
    logger.info("%s exported to %s", family.value, options.out)
    return report


def export_clip(options: ExportOptions, progress: ProgressFn = no_progress) -> ExportReport:
    """Export a CLIP checkpoint: text and image graphs, tokenizer, processor, report.

    Returns:
        The export report (also written to ``<out>/export_report.json``).
    """
    from transformers import CLIPModel

    _, image_tower = _towers()
    progress(f"loading {options.model}")
    loaded = load_reference(options.model, CLIPModel)
    model, _, processor = loaded
    image_spec = image_graph_spec(
        image_tower(model),
        model.config.vision_config,
        processor,
        {IMAGE_EMBEDS: (int(model.config.projection_dim),)},
    )
    return export_dual_encoder(options, Family.CLIP, loaded, image_spec, progress)
