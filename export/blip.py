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
from collections.abc import Callable
from dataclasses import dataclass
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
from vlpserve.export import hf
from vlpserve.export.clip import image_cases, photo_pixels
from vlpserve.export.common import (
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
from vlpserve.export.report import ExportReport
from vlpserve.export.samples import SAMPLE_TEXTS
from vlpserve.progress import ProgressFn, no_progress

logger = logging.getLogger(__name__)


def _wrappers() -> dict[str, type]:
    import torch

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
                use_cache=True,
                return_dict=True,
                **{hf.cache_argument(self.decoder): hf.blip_cache()},
            )
            layers = hf.cache_layers(hf.output_cache(out))
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
            past = hf.blip_cache(layers)
            # Cross-attention runs only when encoder states are given; its keys and values
            # come from the cache, so a placeholder suffices and is not a graph input.
            placeholder = cache[2].new_zeros(cache[2].shape[0], 1, 1)
            out = self.decoder(
                input_ids=input_ids.long(),
                position_ids=position_ids.long(),
                attention_mask=attention_mask,
                encoder_hidden_states=placeholder,
                use_cache=True,
                return_dict=True,
                **{hf.cache_argument(self.decoder): past},
            )
            layers = hf.cache_layers(hf.output_cache(out))
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


@dataclass(frozen=True)
class _Blip:
    """A loaded BLIP checkpoint and the real inputs its graphs are checked on."""

    kind: BlipKind
    model: Any
    tokenizer: Any
    processor: Any
    ids_dtype: str

    @property
    def bos(self) -> int:
        return int(self.model.config.text_config.bos_token_id)

    def text_optimizer(self) -> Optimizer:
        return Optimizer.of(self.model.config.text_config, "bert")

    @property
    def max_sequence(self) -> int:
        """The longest token sequence its text graphs take (position embeddings)."""
        return int(self.model.config.text_config.max_position_embeddings)

    def image_embeds(self) -> np.ndarray:
        """The vision encoder's states of two real photos (what the text graphs attend to)."""
        import torch

        pixels = torch.from_numpy(photo_pixels(self.processor)[:2])
        with torch.no_grad():
            return np.asarray(self.model.vision_model(pixel_values=pixels).last_hidden_state)

    def text_feeds(self, count: int = 4) -> dict[str, np.ndarray]:
        texts = self.tokenizer(list(SAMPLE_TEXTS[:count]), padding=True, return_tensors="np")
        return {
            INPUT_IDS: texts["input_ids"].astype(self.ids_dtype),
            ATTENTION_MASK: texts["attention_mask"].astype(np.int64),
        }


def _vision_spec(blip: _Blip) -> GraphSpec:
    """pixel_values -> image_embeds (and, for ITM, the ITC-projected image_feat)."""
    with_feat = blip.kind is BlipKind.ITM
    outputs = (IMAGE_EMBEDS, IMAGE_FEAT) if with_feat else (IMAGE_EMBEDS,)
    vision = blip.model.config.vision_config
    size = int(vision.image_size)
    return GraphSpec(
        name="vision_encoder",
        module=_wrappers()["vision"](blip.model, with_feat).eval(),
        example_inputs=torch_inputs({PIXEL_VALUES: np.zeros((2, 3, size, size), np.float32)}),
        output_names=outputs,
        dynamic_axes=batch_axes(PIXEL_VALUES, *outputs),
        optimizer=Optimizer.of(vision, "vit"),
        cases=image_cases(blip.processor, size),
    )


def _text_encoder_spec(blip: _Blip, name: str, head: str, output: str) -> GraphSpec:
    """The text encoder attending to image embeddings: the ITM head's logits (``itm``) or
    every hidden state (``states``: VQA's question encoder)."""
    feeds = {k: v[:2] for k, v in blip.text_feeds().items()} | {IMAGE_EMBEDS: blip.image_embeds()}
    axes = {0: "batch", 1: "sequence"} if output == QUESTION_EMBEDS else {0: "batch"}
    return GraphSpec(
        name=name,
        module=_wrappers()["text_encoder"](blip.model, head).eval(),
        example_inputs=torch_inputs(feeds),
        output_names=(output,),
        dynamic_axes=sequence_axes(INPUT_IDS, ATTENTION_MASK)
        | batch_axes(IMAGE_EMBEDS)
        | {output: axes},
        optimizer=blip.text_optimizer(),
        max_sequence=blip.max_sequence,
        cases={"real": feeds},
    )


def _text_feat_spec(blip: _Blip) -> GraphSpec:
    """input_ids, attention_mask -> the ITC text feature (unimodal text encoder)."""
    feeds = blip.text_feeds()
    return GraphSpec(
        name="text_feat",
        module=_wrappers()["text_feat"](blip.model).eval(),
        example_inputs=torch_inputs(feeds),
        output_names=(TEXT_FEAT,),
        dynamic_axes=sequence_axes(INPUT_IDS, ATTENTION_MASK) | batch_axes(TEXT_FEAT),
        optimizer=blip.text_optimizer(),
        max_sequence=blip.max_sequence,
        cases={"real_texts": feeds},
    )


def _per_layer(layers: int, *groups: list[str]) -> list[str]:
    """Cache tensor names in the wrappers' order: layer by layer, each group's key and value."""
    return [group[2 * i + part] for i in range(layers) for group in groups for part in (0, 1)]


def _decoder_specs(blip: _Blip, states: np.ndarray, prompt: np.ndarray) -> list[GraphSpec]:
    """decoder_first and decoder_step, the step checked on the cache a real first step left."""
    import torch

    wrappers = _wrappers()
    decoder = blip.model.text_decoder
    layers = int(decoder.config.num_hidden_layers)
    batch, seq = prompt.shape
    first = wrappers["decoder_first"](decoder).eval()
    first_feeds = {
        INPUT_IDS: prompt.astype(blip.ids_dtype),
        ATTENTION_MASK: np.ones((batch, seq), dtype=np.int64),
        ENCODER_HIDDEN_STATES: states.astype(np.float32),
    }
    with torch.no_grad():
        produced = first(*torch_inputs(first_feeds).values())
    self_names, cross_names = cache_names(layers)
    present = [name.replace("past", "present") for name in self_names]
    cache_axes = {name: {0: "batch", 2: "encoder_sequence"} for name in cross_names}
    first_spec = GraphSpec(
        name="decoder_first",
        module=first,
        example_inputs=torch_inputs(first_feeds),
        output_names=(LOGITS, *_per_layer(layers, present, cross_names)),
        dynamic_axes=sequence_axes(INPUT_IDS, ATTENTION_MASK)
        | {ENCODER_HIDDEN_STATES: {0: "batch", 1: "encoder_sequence"}}
        | batch_axes(LOGITS)
        | {name: {0: "batch", 2: "sequence"} for name in present}
        | cache_axes,
        optimizer=blip.text_optimizer(),
        max_sequence=blip.max_sequence,
        cases={"seeded": first_feeds},
    )
    # The step case continues the first step: one more token for every row.
    step_feeds: dict[str, np.ndarray] = {
        INPUT_IDS: np.full((batch, 1), 1037, dtype=blip.ids_dtype),
        POSITION_IDS: np.full((batch, 1), seq, dtype=np.int64),
        ATTENTION_MASK: np.ones((batch, seq + 1), dtype=np.int64),
    }
    cache = [t.numpy() for t in produced[1:]]
    step_feeds |= dict(zip(_per_layer(layers, self_names, cross_names), cache, strict=True))
    step_spec = GraphSpec(
        name="decoder_step",
        module=wrappers["decoder_step"](decoder).eval(),
        example_inputs=torch_inputs(step_feeds),
        output_names=(LOGITS, *present),
        dynamic_axes=batch_axes(INPUT_IDS, POSITION_IDS, LOGITS)
        | {ATTENTION_MASK: {0: "batch", 1: "total_sequence"}}
        | {name: {0: "batch", 2: "past_sequence"} for name in self_names}
        | cache_axes
        | {name: {0: "batch", 2: "total_sequence"} for name in present},
        optimizer=blip.text_optimizer(),
        max_sequence=blip.max_sequence,
        cases={"seeded": step_feeds},
    )
    return [first_spec, step_spec]


def _prompt_ids(tokenizer: Any, text: str, bos: int) -> np.ndarray:
    """Decoder prompt as BLIP's generate builds it: [DEC] + tokens, without the final [SEP]."""
    ids = tokenizer(text)["input_ids"]
    ids[0] = bos
    return np.array([ids[:-1]], dtype=np.int64)


def _caption_specs(blip: _Blip) -> list[GraphSpec]:
    prompt = np.repeat(_prompt_ids(blip.tokenizer, "a picture of", blip.bos), 2, axis=0)
    return _decoder_specs(blip, blip.image_embeds(), prompt)


def _itm_specs(blip: _Blip) -> list[GraphSpec]:
    return [_text_encoder_spec(blip, "itm_head", "itm", ITM_LOGITS), _text_feat_spec(blip)]


def _vqa_specs(blip: _Blip) -> list[GraphSpec]:
    """The question encoder, and the decoder checked on the states it gives a real question."""
    import torch

    question = blip.tokenizer(["what is in the picture?"] * 2, return_tensors="np")
    with torch.no_grad():
        states = blip.model.text_encoder(
            input_ids=torch.from_numpy(question["input_ids"]),
            encoder_hidden_states=torch.from_numpy(blip.image_embeds()),
        ).last_hidden_state.numpy()
    prompt = np.full((2, 1), blip.bos, dtype=np.int64)
    encoder = _text_encoder_spec(blip, "question_encoder", "states", QUESTION_EMBEDS)
    return [encoder, *_decoder_specs(blip, states, prompt)]


KIND_SPECS: dict[BlipKind, Callable[[_Blip], list[GraphSpec]]] = {
    BlipKind.CAPTION: _caption_specs,
    BlipKind.ITM: _itm_specs,
    BlipKind.VQA: _vqa_specs,
}


def _load(options: ExportOptions) -> _Blip:
    import transformers
    from transformers import AutoTokenizer

    kind = detect_kind(options.model)
    try:
        model = getattr(transformers, MODEL_CLASSES[kind]).from_pretrained(
            options.model, attn_implementation="eager"
        )
        tokenizer = AutoTokenizer.from_pretrained(options.model, use_fast=True)
        processor = hf.image_processor(options.model)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load BLIP checkpoint {options.model!r}: {exc}") from exc
    return _Blip(kind, model.eval(), tokenizer, processor, options.ids_dtype)


def export_blip(options: ExportOptions, progress: ProgressFn = no_progress) -> ExportReport:
    """Export a BLIP checkpoint (captioning, ITM or VQA, detected from its config).

    Returns:
        The export report (also written to ``<out>/export_report.json``).
    """
    progress(f"loading {options.model}")
    blip = _load(options)
    specs = [_vision_spec(blip), *KIND_SPECS[blip.kind](blip)]
    graphs = export_graphs(specs, options, progress)
    save_processing(options, blip.tokenizer, blip.processor, progress)
    text = blip.model.config.text_config
    report = ExportReport(
        family="blip",
        kind=blip.kind.value,
        source=options.model,
        precision=options.precision.value,
        opset=options.opset,
        ids_dtype=options.ids_dtype,
        image_size=int(blip.model.config.vision_config.image_size),
        bos_token_id=blip.bos,
        sep_token_id=int(text.sep_token_id),
        pad_token_id=int(text.pad_token_id),
        max_text_length=int(text.max_position_embeddings),
        num_layers=int(text.num_hidden_layers),
        graphs=graphs,
        versions=library_versions(),
    )
    report.write(options.out)
    logger.info("BLIP %s exported to %s", blip.kind.value, options.out)
    return report
