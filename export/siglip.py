"""SigLIP and SigLIP 2 (FixRes checkpoints, the same ``SiglipModel``): separate text and image
graphs, each with the checkpoint's own pooling and head, then L2 normalisation.

The text tower pools the last position (after the final layer norm) and applies its head;
the vision tower pools with its attention-pooling head (a learned probe). Both are what
``get_text_features`` / ``get_image_features`` compute, so the graphs wrap those. Texts are
padded to the checkpoint's 64 positions ("max_length", as SigLIP was trained: the pooled
position is then a padding one, whose state differs from a text padded to its own length);
images are resized to a square without cropping, with the filter and normalisation of the
checkpoint's processor config. Zero-shot probabilities are independent sigmoids:
``sigmoid(exp(logit_scale) * cos + logit_bias)``, both parameters in the report.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from vlpserve.contract import ATTENTION_MASK, IMAGE_EMBEDS, INPUT_IDS, TEXT_EMBEDS, Family
from vlpserve.errors import ExportError
from vlpserve.export.clip import image_graph_spec, load_reference
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
from vlpserve.export.hf import features
from vlpserve.export.report import ExportReport
from vlpserve.export.samples import SAMPLE_TEXTS
from vlpserve.progress import ProgressFn, no_progress

logger = logging.getLogger(__name__)


def _towers() -> tuple[type, type]:
    import torch

    normalize = torch.nn.functional.normalize

    class TextTower(torch.nn.Module):
        """input_ids, attention_mask -> L2-normalised pooled and projected text embedding."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            out = self.model.get_text_features(
                input_ids=input_ids.long(), attention_mask=attention_mask
            )
            return normalize(features(out), dim=-1)

    class ImageTower(torch.nn.Module):
        """pixel_values -> L2-normalised attention-pooled image embedding."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return normalize(features(self.model.get_image_features(pixel_values)), dim=-1)

    return TextTower, ImageTower


def text_cases(tokenizer: Any, length: int, vocab: int, ids_dtype: str) -> Cases:
    """Seeded random texts ending in the end-of-text id and padded to ``length``, and the
    real sample texts as the processor pads them (to ``length`` too)."""
    rng = np.random.default_rng(0)
    ids = np.full((3, length), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, size in enumerate((5, 17, length)):
        ids[row, :size] = rng.integers(3, vocab, size=size)
        ids[row, size - 1] = tokenizer.eos_token_id
        mask[row, :size] = 1
    real = tokenizer(list(SAMPLE_TEXTS), padding="max_length", max_length=length, truncation=True)
    return {
        "seeded": {INPUT_IDS: ids.astype(ids_dtype), ATTENTION_MASK: mask},
        "real_texts": {
            INPUT_IDS: np.asarray(real["input_ids"], dtype=ids_dtype),
            ATTENTION_MASK: np.asarray(real["attention_mask"], dtype=np.int64),
        },
    }


def text_graph_spec(model: Any, tokenizer: Any, ids_dtype: str) -> GraphSpec:
    text_tower, _ = _towers()
    config = model.config.text_config
    length = int(config.max_position_embeddings)
    ids = np.full((2, length), int(tokenizer.pad_token_id), dtype=ids_dtype)
    ids[:, 0] = int(tokenizer.eos_token_id)
    dim = int(getattr(config, "projection_size", None) or config.hidden_size)
    return GraphSpec(
        name="text_encoder",
        module=text_tower(model).eval(),
        example_inputs=torch_inputs({INPUT_IDS: ids, ATTENTION_MASK: np.ones(ids.shape, np.int64)}),
        output_names=(TEXT_EMBEDS,),
        dynamic_axes=sequence_axes(INPUT_IDS, ATTENTION_MASK) | batch_axes(TEXT_EMBEDS),
        optimizer=Optimizer.of(config, "clip"),
        cases=text_cases(tokenizer, length, int(config.vocab_size), ids_dtype),
        output_dims={TEXT_EMBEDS: (dim,)},
        max_sequence=length,
    )


def export_siglip(options: ExportOptions, progress: ProgressFn = no_progress) -> ExportReport:
    """Export a SigLIP or SigLIP 2 (FixRes) checkpoint: text and image graphs, tokenizer
    (SigLIP's SentencePiece model, or SigLIP 2's tokenizer.json), processor, report.

    Returns:
        The export report (also written to ``<out>/export_report.json``).
    """
    from transformers import SiglipModel

    progress(f"loading {options.model}")
    model, tokenizer, processor = load_reference(options.model, SiglipModel, fast_only=False)
    if not getattr(tokenizer, "is_fast", False) and type(tokenizer).__name__ != "SiglipTokenizer":
        raise ExportError(
            f"{options.model!r}: its tokenizer ({type(tokenizer).__name__}) has no "
            "tokenizer.json and is not SigLIP's SentencePiece tokenizer"
        )
    _, image_tower = _towers()
    vision = model.config.vision_config
    dim = int(vision.hidden_size)
    image_spec = image_graph_spec(image_tower(model), vision, processor, {IMAGE_EMBEDS: (dim,)})
    specs = [text_graph_spec(model, tokenizer, options.ids_dtype), image_spec]
    graphs = export_graphs(specs, options, progress)
    save_processing(options, tokenizer, processor, progress)
    report = ExportReport(
        family=Family.SIGLIP.value,
        source=options.model,
        precision=options.precision.value,
        opset=options.opset,
        ids_dtype=options.ids_dtype,
        logit_scale=float(model.logit_scale.detach().exp().item()),
        logit_bias=float(model.logit_bias.detach().item()),
        max_text_length=int(model.config.text_config.max_position_embeddings),
        pad_token_id=int(tokenizer.pad_token_id),
        text_padding="max_length",
        padding_side=str(getattr(tokenizer, "padding_side", "right")),
        image_size=int(vision.image_size),
        embedding_dim=dim,
        graphs=graphs,
        versions=library_versions(),
    )
    report.write(options.out)
    logger.info("siglip exported to %s", options.out)
    return report
