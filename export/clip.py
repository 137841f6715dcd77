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


def load_reference(model: str, model_class: Any) -> tuple[Any, Any, Any]:
    """Model (eager attention, eval), fast tokenizer and image processor of a checkpoint."""
    from transformers import AutoImageProcessor, AutoTokenizer

    family = model_class.__name__.removesuffix("Model")
    try:
        loaded = model_class.from_pretrained(model, attn_implementation="eager").eval()
        tokenizer = AutoTokenizer.from_pretrained(model, use_fast=True)
        processor = AutoImageProcessor.from_pretrained(model, use_fast=False)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load {family} checkpoint {model!r}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{model!r} has no fast tokenizer (tokenizer.json), which serving needs")
    return loaded, tokenizer, processor


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


def image_graph_spec(
    module: Any, vision: Any, output_dims: dict[str, tuple[int, ...]]
) -> GraphSpec:
    """Graph spec of an image tower taking fixed-size pixel_values."""
    import torch

    size = int(vision.image_size)
    outputs = tuple(output_dims)
    return GraphSpec(
        name="image_encoder",
        module=module.eval(),
        example_inputs={PIXEL_VALUES: torch.zeros(2, 3, size, size)},
        output_names=outputs,
        dynamic_axes={PIXEL_VALUES: {0: "batch"}} | {name: {0: "batch"} for name in outputs},
        optimizer_model_type="clip",  # "vit" leaves attention unfused
        num_heads=vision.num_attention_heads,
        hidden_size=vision.hidden_size,
        output_dims=output_dims,
    )


def export_dual_encoder(
    options: ExportOptions,
    family: Family,
    loaded: tuple[Any, Any, Any],
    image_spec: GraphSpec,
    progress: ProgressFn = _no_progress,
) -> dict[str, Any]:
    """Export the text and image graphs of a CLIP-like model, its tokenizer and processor.

    Every graph is checked against PyTorch on seeded tensors and on real texts/photos before
    it is accepted (ParityError otherwise).

    Returns:
        The export report (also written to ``<out>/export_report.json``).
    """
    model, tokenizer, processor = loaded
    options.out.mkdir(parents=True, exist_ok=True)
    text_config = model.config.text_config
    image_size = int(model.config.vision_config.image_size)
    specs = [
        (text_graph_spec(model, tokenizer), text_cases(tokenizer, text_config.vocab_size)),
        (image_spec, image_cases(processor, image_size)),
    ]
    graphs: dict[str, GraphReport] = {}
    for spec, cases in specs:
        graphs[spec.name] = export_and_check(spec, options, cases, progress)
    progress("saving tokenizer and image processor")
    tokenizer.save_pretrained(options.out / TOKENIZER_DIR)
    processor.save_pretrained(options.out / PREPROCESSOR_DIR)
    report = {
        "family": family.value,
        "source": options.model,
        "precision": options.precision.value,
        "opset": options.opset,
        "logit_scale": float(model.logit_scale.detach().exp().item()),
        "max_text_length": int(text_config.max_position_embeddings),
        "pad_token_id": int(tokenizer.pad_token_id),
        "image_size": image_size,
        "embedding_dim": int(model.config.projection_dim),
        "tokenizer": TOKENIZER_DIR,
        "preprocessor": PREPROCESSOR_DIR,
        "graphs": graphs,
        "versions": library_versions(),
    }
    write_report(options.out, report)
    logger.info("%s exported to %s", family.value, options.out)
    return report


def export_clip(options: ExportOptions, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """Export a CLIP checkpoint: text and image graphs, tokenizer, processor, report.

    Returns:
        The export report (also written to ``<out>/export_report.json``).
    """
    from transformers import CLIPModel

    _, image_tower = _towers()
    progress(f"loading {options.model}")
    loaded = load_reference(options.model, CLIPModel)
    model = loaded[0]
    image_spec = image_graph_spec(
        image_tower(model),
        model.config.vision_config,
        {IMAGE_EMBEDS: (int(model.config.projection_dim),)},
    )
    return export_dual_encoder(options, Family.CLIP, loaded, image_spec, progress)
