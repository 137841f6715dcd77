"""BLIP: captioning, image-text matching (ITM/ITC) and VQA graphs, this project's own.

No stock exporter covers BLIP. The text decoder is exported as two graphs that share the
cache layout. ``decoder_first`` consumes the prompt and the encoder states (image embeddings
for captioning, question embeddings for VQA) and returns the self- and cross-attention
keys/values; ``decoder_step`` takes one token per row with explicit ``position_ids``, the
self-attention mask over the cache and the cached keys/values, and returns the grown
self-attention cache. Explicit positions and masks let the server decode rows of different
lengths in one batch. Hugging Face's BLIP decoder ignores an encoder attention mask, so the
graphs take none: rows are batched only with rows whose encoder states have the same length.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from vlpserve.contract import (
    ATTENTION_MASK,
    ENCODER_HIDDEN_STATES,
    IMAGE_EMBEDS,
    IMAGE_FEAT,
    INPUT_IDS,
    ITM_LOGITS,
    LOGITS,
    PIXEL_VALUES,
    POSITION_IDS,
    QUESTION_EMBEDS,
    TEXT_FEAT,
    BlipKind,
    cache_names,
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


def _wrappers() -> dict[str, type]:
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    normalize = torch.nn.functional.normalize

    class Vision(torch.nn.Module):
        """pixel_values -> image_embeds (all tokens) [and image_feat, ITC-projected CLS]."""

        def __init__(self, model: Any, with_feat: bool) -> None:
            super().__init__()
            self.model = model
            self.with_feat = with_feat

        def forward(self, pixel_values: Any) -> Any:
            embeds = self.model.vision_model(pixel_values=pixel_values).last_hidden_state
            if not self.with_feat:
                return embeds
            return embeds, normalize(self.model.vision_proj(embeds[:, 0, :]), dim=-1)

    class TextEncoder(torch.nn.Module):
        """BLIP text encoder with cross-attention to image embeddings."""

        def __init__(self, model: Any, head: str) -> None:
            super().__init__()
            self.model = model
            self.head = head  # "itm": ITM logits; "states": all hidden states (VQA)

        def forward(self, input_ids: Any, attention_mask: Any, image_embeds: Any) -> Any:
            states = self.model.text_encoder(
                input_ids=input_ids.long(),
                attention_mask=attention_mask,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=torch.ones(
                    image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device
                ),
            ).last_hidden_state
            return self.model.itm_head(states[:, 0, :]) if self.head == "itm" else states

    class TextFeat(torch.nn.Module):
        """input_ids, attention_mask -> ITC text feature (unimodal text encoder, CLS)."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            states = self.model.text_encoder(
                input_ids=input_ids.long(), attention_mask=attention_mask
            ).last_hidden_state
            return normalize(self.model.text_proj(states[:, 0, :]), dim=-1)

    class DecoderFirst(torch.nn.Module):
        """Prompt and encoder states -> last logits, self cache, cross cache."""

        def __init__(self, decoder: Any) -> None:
            super().__init__()
            self.decoder = decoder

        def forward(
            self,
            input_ids: Any,
            attention_mask: Any,
            encoder_hidden_states: Any,
        ) -> Any:
            out = self.decoder(
                input_ids=input_ids.long(),
                attention_mask=attention_mask,
                encoder_hidden_states=encoder_hidden_states,
                past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()),
                use_cache=True,
                return_dict=True,
            )
            layers = out.past_key_values.to_legacy_cache()
            return (out.logits[:, -1, :], *[t for layer in layers for t in layer])

    class DecoderStep(torch.nn.Module):
        """One token per row with the cache -> logits and the grown self-attention cache."""

        def __init__(self, decoder: Any) -> None:
            super().__init__()
            self.decoder = decoder

        def forward(
            self,
            input_ids: Any,
            position_ids: Any,
            attention_mask: Any,
            *cache: Any,
        ) -> Any:
            layers = tuple(tuple(cache[i : i + 4]) for i in range(0, len(cache), 4))
            past = EncoderDecoderCache.from_legacy_cache(layers)
            # Cross-attention runs only when encoder states are given; its keys and values
            # come from the cache, so a placeholder suffices and is not a graph input.
            placeholder = cache[2].new_zeros(cache[2].shape[0], 1, 1)
            out = self.decoder(
                input_ids=input_ids.long(),
                position_ids=position_ids.long(),
                attention_mask=attention_mask,
                encoder_hidden_states=placeholder,
                past_key_values=past,
                use_cache=True,
                return_dict=True,
            )
            layers = out.past_key_values.to_legacy_cache()
            return (out.logits[:, -1, :], *[t for layer in layers for t in layer[:2]])

    return {
        "vision": Vision,
        "text_encoder": TextEncoder,
        "text_feat": TextFeat,
        "decoder_first": DecoderFirst,
        "decoder_step": DecoderStep,
    }


MODEL_CLASSES = {
    BlipKind.CAPTION: "BlipForConditionalGeneration",
    BlipKind.ITM: "BlipForImageTextRetrieval",
    BlipKind.VQA: "BlipForQuestionAnswering",
}


def detect_kind(model: str) -> BlipKind:
    """The BLIP kind of a checkpoint, from its config's architectures."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load BLIP checkpoint {model!r}: {exc}") from exc
    for kind, name in MODEL_CLASSES.items():
        if name in (config.architectures or []):
            return kind
    raise ExportError(
        f"{model!r} is not a BLIP captioning, ITM or VQA checkpoint "
        f"(architectures: {config.architectures})"
    )


def _decoder_specs(
    decoder: Any, states: np.ndarray, prompt: np.ndarray, ids_dtype: str, prefix: str
) -> list[tuple[GraphSpec, dict[str, dict[str, np.ndarray]]]]:
    """decoder_first and decoder_step specs, with cases built from a real first step."""
    import torch

    wrappers = _wrappers()
    cfg = decoder.config
    layers = int(cfg.num_hidden_layers)
    batch, seq = prompt.shape
    first = wrappers["decoder_first"](decoder).eval()
    first_feeds = {
        INPUT_IDS: prompt.astype(ids_dtype),
        ATTENTION_MASK: np.ones((batch, seq), dtype=np.int64),
        ENCODER_HIDDEN_STATES: states.astype(np.float32),
    }
    with torch.no_grad():
        produced = first(*[torch.from_numpy(v) for v in first_feeds.values()])
    self_names, cross_names = cache_names(layers)
    present = [name.replace("past", "present") for name in self_names]
    dyn = {
        INPUT_IDS: {0: "batch", 1: "sequence"},
        ATTENTION_MASK: {0: "batch", 1: "sequence"},
        ENCODER_HIDDEN_STATES: {0: "batch", 1: "encoder_sequence"},
        LOGITS: {0: "batch"},
    }
    for name in present:
        dyn[name] = {0: "batch", 2: "sequence"}
    for name in cross_names:
        dyn[name] = {0: "batch", 2: "encoder_sequence"}
    interleaved = []
    for i in range(layers):
        interleaved += [
            present[2 * i],
            present[2 * i + 1],
            cross_names[2 * i],
            cross_names[2 * i + 1],
        ]
    first_spec = GraphSpec(
        name=f"{prefix}decoder_first",
        module=first,
        example_inputs={k: torch.from_numpy(v) for k, v in first_feeds.items()},
        output_names=(LOGITS, *interleaved),
        dynamic_axes=dyn,
        optimizer_model_type="bert",
        num_heads=int(cfg.num_attention_heads),
        hidden_size=int(cfg.hidden_size),
    )
    # The step case continues the first step: one more token for every row.
    cache = [t.numpy() for t in produced[1:]]
    step_feeds: dict[str, np.ndarray] = {
        INPUT_IDS: np.full((batch, 1), 1037, dtype=ids_dtype),
        POSITION_IDS: np.full((batch, 1), seq, dtype=np.int64),
        ATTENTION_MASK: np.ones((batch, seq + 1), dtype=np.int64),
    }
    names_in = []
    for i in range(layers):
        names_in += [
            self_names[2 * i],
            self_names[2 * i + 1],
            cross_names[2 * i],
            cross_names[2 * i + 1],
        ]
    step_feeds |= dict(zip(names_in, cache, strict=True))
    step_dyn = {
        INPUT_IDS: {0: "batch"},
        POSITION_IDS: {0: "batch"},
        ATTENTION_MASK: {0: "batch", 1: "total_sequence"},
        LOGITS: {0: "batch"},
    }
    for name in self_names:
        step_dyn[name] = {0: "batch", 2: "past_sequence"}
    for name in cross_names:
        step_dyn[name] = {0: "batch", 2: "encoder_sequence"}
    for name in present:
        step_dyn[name] = {0: "batch", 2: "total_sequence"}
    step_spec = GraphSpec(
        name=f"{prefix}decoder_step",
        module=wrappers["decoder_step"](decoder).eval(),
        example_inputs={k: torch.from_numpy(v) for k, v in step_feeds.items()},
        output_names=(LOGITS, *present),
        dynamic_axes=step_dyn,
        optimizer_model_type="bert",
        num_heads=int(cfg.num_attention_heads),
        hidden_size=int(cfg.hidden_size),
    )
    return [(first_spec, {"seeded": first_feeds}), (step_spec, {"seeded": step_feeds})]


def _prompt_ids(tokenizer: Any, text: str, bos: int) -> np.ndarray:
    """Decoder prompt as BLIP's generate builds it: [DEC] + tokens, without the final [SEP]."""
    ids = tokenizer(text)["input_ids"]
    ids[0] = bos
    return np.array([ids[:-1]], dtype=np.int64)


def export_blip(options: ExportOptions, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """Export a BLIP checkpoint (captioning, ITM or VQA, detected from its config).

    Returns:
        The export report (also written to ``<out>/export_report.json``).
    """
    import torch
    import transformers
    from PIL import Image
    from transformers import AutoTokenizer, BlipImageProcessor

    progress(f"loading {options.model}")
    kind = detect_kind(options.model)
    try:
        model = getattr(transformers, MODEL_CLASSES[kind]).from_pretrained(
            options.model, attn_implementation="eager"
        )
        tokenizer = AutoTokenizer.from_pretrained(options.model, use_fast=True)
        processor = BlipImageProcessor.from_pretrained(options.model)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load BLIP checkpoint {options.model!r}: {exc}") from exc
    model.eval()
    wrappers = _wrappers()
    text_cfg = model.config.text_config
    vision_cfg = model.config.vision_config
    size = int(vision_cfg.image_size)
    rng = np.random.default_rng(0)
    photos = [Image.open(path).convert("RGB") for path in photo_paths()]
    pixel_cases = {
        "seeded": {PIXEL_VALUES: rng.standard_normal((2, 3, size, size)).astype(np.float32)},
        "real_photos": {
            PIXEL_VALUES: processor(images=photos, return_tensors="np")["pixel_values"].astype(
                np.float32
            )
        },
    }
    vision_outputs = (IMAGE_EMBEDS, IMAGE_FEAT) if kind is BlipKind.ITM else (IMAGE_EMBEDS,)
    vision = GraphSpec(
        name="vision_encoder",
        module=wrappers["vision"](model, kind is BlipKind.ITM).eval(),
        example_inputs={PIXEL_VALUES: torch.zeros(2, 3, size, size)},
        output_names=vision_outputs,
        dynamic_axes={PIXEL_VALUES: {0: "batch"}} | {n: {0: "batch"} for n in vision_outputs},
        optimizer_model_type="vit",
        num_heads=int(vision_cfg.num_attention_heads),
        hidden_size=int(vision_cfg.hidden_size),
    )
    with torch.no_grad():
        image_embeds = model.vision_model(
            pixel_values=torch.from_numpy(pixel_cases["real_photos"][PIXEL_VALUES][:2])
        ).last_hidden_state.numpy()
    bos = int(text_cfg.bos_token_id)
    ids_dtype = options.ids_dtype
    texts = tokenizer(list(SAMPLE_TEXTS[:4]), padding=True, return_tensors="np")
    text_feeds = {
        INPUT_IDS: texts["input_ids"].astype(ids_dtype),
        ATTENTION_MASK: texts["attention_mask"].astype(np.int64),
    }
    text_dyn = {INPUT_IDS: {0: "batch", 1: "sequence"}, ATTENTION_MASK: {0: "batch", 1: "sequence"}}
    specs: list[tuple[GraphSpec, dict[str, dict[str, np.ndarray]]]] = [(vision, pixel_cases)]
    if kind is BlipKind.CAPTION:
        prompt = np.repeat(_prompt_ids(tokenizer, "a picture of", bos), 2, axis=0)
        specs += _decoder_specs(model.text_decoder, image_embeds, prompt, ids_dtype, "")
    else:
        pair = {k: v[:2] for k, v in text_feeds.items()} | {IMAGE_EMBEDS: image_embeds}
        head = "itm" if kind is BlipKind.ITM else "states"
        output = ITM_LOGITS if kind is BlipKind.ITM else QUESTION_EMBEDS
        specs.append(
            (
                GraphSpec(
                    name="itm_head" if kind is BlipKind.ITM else "question_encoder",
                    module=wrappers["text_encoder"](model, head).eval(),
                    example_inputs={k: torch.from_numpy(v) for k, v in pair.items()},
                    output_names=(output,),
                    dynamic_axes=text_dyn
                    | {
                        IMAGE_EMBEDS: {0: "batch"},
                        output: {0: "batch"}
                        | ({1: "sequence"} if output == QUESTION_EMBEDS else {}),
                    },
                    optimizer_model_type="bert",
                    num_heads=int(text_cfg.num_attention_heads),
                    hidden_size=int(text_cfg.hidden_size),
                ),
                {"real": pair},
            )
        )
        if kind is BlipKind.ITM:
            specs.append(
                (
                    GraphSpec(
                        name="text_feat",
                        module=wrappers["text_feat"](model).eval(),
                        example_inputs={k: torch.from_numpy(v) for k, v in text_feeds.items()},
                        output_names=(TEXT_FEAT,),
                        dynamic_axes=text_dyn | {TEXT_FEAT: {0: "batch"}},
                        optimizer_model_type="bert",
                        num_heads=int(text_cfg.num_attention_heads),
                        hidden_size=int(text_cfg.hidden_size),
                    ),
                    {"real_texts": text_feeds},
                )
            )
        else:
            question = tokenizer(["what is in the picture?"] * 2, return_tensors="np")
            with torch.no_grad():
                states = model.text_encoder(
                    input_ids=torch.from_numpy(question["input_ids"]),
                    encoder_hidden_states=torch.from_numpy(image_embeds),
                ).last_hidden_state.numpy()
            prompt = np.full((2, 1), bos, dtype=np.int64)
            specs += _decoder_specs(model.text_decoder, states, prompt, ids_dtype, "")
    options.out.mkdir(parents=True, exist_ok=True)
    graphs: dict[str, GraphReport] = {}
    for spec, cases in specs:
        graphs[spec.name] = export_and_check(spec, options, cases, progress)
    progress("saving tokenizer and image processor")
    tokenizer.save_pretrained(options.out / TOKENIZER_DIR)
    processor.save_pretrained(options.out / PREPROCESSOR_DIR)
    report = {
        "family": "blip",
        "kind": kind.value,
        "source": options.model,
        "precision": options.precision.value,
        "opset": options.opset,
        "ids_dtype": ids_dtype,
        "image_size": size,
        "bos_token_id": bos,
        "sep_token_id": int(text_cfg.sep_token_id),
        "pad_token_id": int(text_cfg.pad_token_id),
        "max_text_length": int(text_cfg.max_position_embeddings),
        "num_layers": int(text_cfg.num_hidden_layers),
        "tokenizer": TOKENIZER_DIR,
        "preprocessor": PREPROCESSOR_DIR,
        "graphs": graphs,
        "versions": library_versions(),
    }
    write_report(options.out, report)
    logger.info("BLIP %s exported to %s", kind.value, options.out)
    return report
