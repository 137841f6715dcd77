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
    ExportOptions,
    GraphReport,
    GraphSpec,
    ProgressFn,
    _no_progress,
    export_and_check,
    library_versions,
    write_report,
)
from vlpserve.export.samples import SAMPLE_TEXTS, photo_paths

logger = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
PREPROCESSOR_DIR = "preprocessor"


def _towers() -> tuple[type, type]:
    import torch

    class TextTower(torch.nn.Module):
        """input_ids, attention_mask -> L2-normalised projected text embedding."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            embeds = self.model.get_text_features(
                input_ids=input_ids, attention_mask=attention_mask
            )
            return torch.nn.functional.normalize(embeds, dim=-1)

    class ImageTower(torch.nn.Module):
        """pixel_values -> L2-normalised projected image embedding."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            embeds = self.model.get_image_features(pixel_values=pixel_values)
            return torch.nn.functional.normalize(embeds, dim=-1)

    return TextTower, ImageTower


def load_reference(model: str) -> tuple[Any, Any, Any]:
    """CLIPModel (eager attention, eval), fast tokenizer and image processor of a checkpoint."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    try:
        clip = CLIPModel.from_pretrained(model, attn_implementation="eager").eval()
        tokenizer = AutoTokenizer.from_pretrained(model, use_fast=True)
        processor = CLIPImageProcessor.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load CLIP checkpoint {model!r}: {exc}") from exc
    return clip, tokenizer, processor


def text_cases(tokenizer: Any, vocab_size: int) -> dict[str, dict[str, np.ndarray]]:
    """Seeded random ids and real sentences, as the text graph's feeds."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab_size, size=(3, 12), dtype=np.int64)
    ids[:, 0] = tokenizer.bos_token_id
    ids[:, -1] = tokenizer.eos_token_id
    real = tokenizer(list(SAMPLE_TEXTS), padding=True, return_tensors="np")
    return {
        "seeded": {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)},
        "real_texts": {
            INPUT_IDS: real["input_ids"].astype(np.int64),
            ATTENTION_MASK: real["attention_mask"].astype(np.int64),
        },
    }


def image_cases(processor: Any, image_size: int) -> dict[str, dict[str, np.ndarray]]:
    """Seeded random pixels and the real sample photographs, as the image graph's feeds."""
    from PIL import Image

    rng = np.random.default_rng(0)
    seeded = rng.standard_normal((2, 3, image_size, image_size)).astype(np.float32)
    photos = [Image.open(path).convert("RGB") for path in photo_paths()]
    real = processor(images=photos, return_tensors="np")["pixel_values"].astype(np.float32)
    return {"seeded": {PIXEL_VALUES: seeded}, "real_photos": {PIXEL_VALUES: real}}


def text_graph_spec(model: Any, tokenizer: Any, name: str = "text_encoder") -> GraphSpec:
    """Graph spec of the text tower (shared by CLIP-like families)."""
    import torch

    text_tower, _ = _towers()
    cfg = model.config.text_config
    ids = torch.full((2, 16), int(tokenizer.eos_token_id), dtype=torch.int64)
    ids[:, 0] = int(tokenizer.bos_token_id)
    return GraphSpec(
        name=name,
        module=text_tower(model).eval(),
        example_inputs={INPUT_IDS: ids, ATTENTION_MASK: torch.ones_like(ids)},
        output_names=(TEXT_EMBEDS,),
        dynamic_axes={
            INPUT_IDS: {0: "batch", 1: "sequence"},
            ATTENTION_MASK: {0: "batch", 1: "sequence"},
            TEXT_EMBEDS: {0: "batch"},
        },
        optimizer_model_type="clip",
        num_heads=cfg.num_attention_heads,
        hidden_size=cfg.hidden_size,
        output_dims={TEXT_EMBEDS: (int(model.config.projection_dim),)},
    )


def export_clip(options: ExportOptions, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """Export a CLIP checkpoint: text and image graphs, tokenizer, processor, report.

    Every graph is checked against PyTorch on seeded tensors and on real texts/photos before
    it is accepted (ParityError otherwise).

    Returns:
        The export report (also written to ``<out>/export_report.json``).
    """
    import torch

    _, image_tower = _towers()
    progress(f"loading {options.model}")
    model, tokenizer, processor = load_reference(options.model)
    options.out.mkdir(parents=True, exist_ok=True)
    vision = model.config.vision_config
    image_size = int(vision.image_size)
    specs = [
        (
            text_graph_spec(model, tokenizer),
            text_cases(tokenizer, model.config.text_config.vocab_size),
        ),
        (
            GraphSpec(
                name="image_encoder",
                module=image_tower(model).eval(),
                example_inputs={PIXEL_VALUES: torch.zeros(2, 3, image_size, image_size)},
                output_names=(IMAGE_EMBEDS,),
                dynamic_axes={PIXEL_VALUES: {0: "batch"}, IMAGE_EMBEDS: {0: "batch"}},
                optimizer_model_type="clip",  # "vit" leaves attention unfused
                num_heads=vision.num_attention_heads,
                hidden_size=vision.hidden_size,
                output_dims={IMAGE_EMBEDS: (int(model.config.projection_dim),)},
            ),
            image_cases(processor, image_size),
        ),
    ]
    graphs: dict[str, GraphReport] = {}
    for spec, cases in specs:
        graphs[spec.name] = export_and_check(spec, options, cases, progress)
    progress("saving tokenizer and image processor")
    tokenizer.save_pretrained(options.out / TOKENIZER_DIR)
    processor.save_pretrained(options.out / PREPROCESSOR_DIR)
    report = {
        "family": Family.CLIP.value,
        "source": options.model,
        "precision": options.precision.value,
        "opset": options.opset,
        "logit_scale": float(model.logit_scale.exp().item()),
        "max_text_length": int(model.config.text_config.max_position_embeddings),
        "pad_token_id": int(tokenizer.pad_token_id),
        "image_size": image_size,
        "embedding_dim": int(model.config.projection_dim),
        "tokenizer": TOKENIZER_DIR,
        "preprocessor": PREPROCESSOR_DIR,
        "graphs": graphs,
        "versions": library_versions(),
    }
    write_report(options.out, report)
    logger.info("CLIP exported to %s", options.out)
    return report
