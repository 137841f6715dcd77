"""Pieces shared by the BLIP Python-backend models: graphs, tokenizer, image decoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from vlpserve.contract import ATTENTION_MASK, IMAGE_EMBEDS, IMAGE_FEAT, INPUT_IDS, PIXEL_VALUES
from vlpserve.model_repository.runtime.device import Device, Feed, host_run
from vlpserve.model_repository.runtime.images import ImagePreprocessing
from vlpserve.model_repository.runtime.params import InputLimits


def feeds_for(graph: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds a graph takes, token ids cast to the graph's id type (int64 or int32)."""
    out = {}
    for spec in graph.get_inputs():
        value = feeds[spec.name]
        if spec.name == "input_ids" and "int32" in spec.type:
            value = value.astype(np.int32)
        out[spec.name] = value
    return out


def question_states(encoder: Any, question_ids: list[int], image_embeds: np.ndarray) -> np.ndarray:
    """The question encoder's states (question tokens, hidden) for one question, at its own
    length (no padding: the decoder attends to every position)."""
    feeds = {
        INPUT_IDS: np.array([question_ids], dtype=np.int64),
        ATTENTION_MASK: np.ones((1, len(question_ids)), dtype=np.int64),
        IMAGE_EMBEDS: image_embeds,
    }
    (states,) = encoder.run(None, feeds_for(encoder, feeds))
    return np.asarray(states[0])


def match_scores(
    vision: Any,
    itm_head: Any,
    text_feat: Any,
    ids: np.ndarray,
    mask: np.ndarray,
    pixels: Feed,
) -> tuple[np.ndarray, np.ndarray]:
    """ITM match probability (softmax of the ITM head, its "match" class) and ITC cosine of
    each (image, text) pair, as float32; ``pixels`` a host array or a value on the vision
    encoder's device."""
    outputs = [IMAGE_EMBEDS, IMAGE_FEAT]
    found = host_run(vision, {PIXEL_VALUES: pixels}, Device.of(vision), outputs)
    embeds, image_feat = found[IMAGE_EMBEDS], found[IMAGE_FEAT]
    feeds = {INPUT_IDS: ids, ATTENTION_MASK: mask, IMAGE_EMBEDS: embeds}
    (logits,) = itm_head.run(None, feeds_for(itm_head, feeds))
    (features,) = text_feat.run(None, feeds_for(text_feat, feeds))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    itm = (shifted[:, 1] / shifted.sum(axis=1)).astype(np.float32)
    itc = np.sum(image_feat * features, axis=1).astype(np.float32)
    return itm, itc


class BlipText:
    """BLIP's BERT WordPiece tokenizer (tokenizer.json), for prompts, questions and output."""

    def __init__(self, tokenizer_file: Path) -> None:
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def encode(self, text: str) -> list[int]:
        """Ids with [CLS] ... [SEP], as BlipProcessor's tokenizer gives them."""
        return list(self.tokenizer.encode(text).ids)

    def batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids and attention masks, padded (id 0) to the longest text."""
        encoded = [self.encode(text) for text in texts]
        length = max(len(ids) for ids in encoded)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, row_ids in enumerate(encoded):
            ids[row, : len(row_ids)] = row_ids
            mask[row, : len(row_ids)] = 1
        return ids, mask

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def load_images(preprocessor_file: Path, limits: InputLimits | None = None) -> ImagePreprocessing:
    """BLIP's image pre-processing (384 px resize, normalisation) from its config file."""
    return ImagePreprocessing.from_file(preprocessor_file, limits=limits)
