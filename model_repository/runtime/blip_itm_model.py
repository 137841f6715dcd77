"""Python-backend ``blip_itm``: (image, text) pairs -> ITM match probability and ITC cosine.

ITM_SCORE is softmax(itm_head)[match] of BlipForImageTextRetrieval with the ITM head;
ITC_SCORE the cosine of the projected image and text features (``use_itm_head=False``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from vlpserve.contract import (
    IMAGE,
    ITC_SCORE,
    ITM_SCORE,
    TEXT,
)
from vlpserve.model_repository.runtime.blip_common import (
    BlipText,
    load_images,
    match_scores,
)
from vlpserve.model_repository.runtime.errors import InputItemError
from vlpserve.model_repository.runtime.sessions import ort_session
from vlpserve.model_repository.runtime.text import decode_texts
from vlpserve.model_repository.runtime.triton import (
    ModelArgs,
    input_array,
    internal_error,
    invalid_argument,
    response,
)


class TritonPythonModel:
    """Scores every pair of every request of a batch in one pass through each graph."""

    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        folder = model.version_dir
        self.text = BlipText(folder / "tokenizer")
        self.images = load_images(folder)
        self.vision = ort_session(folder / "vision_encoder.onnx", on_gpu=model.on_gpu)
        self.itm = ort_session(folder / "itm_head.onnx", on_gpu=model.on_gpu)
        self.text_feat = ort_session(folder / "text_feat.onnx", on_gpu=model.on_gpu)
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)

    def _parse(self, request: Any) -> tuple[list[np.ndarray], list[str]]:
        images = input_array(request, IMAGE).reshape(-1).tolist()
        try:
            texts = decode_texts(input_array(request, TEXT).reshape(-1).tolist())
        except InputItemError as exc:
            raise ValueError(f"{TEXT} {exc}") from exc
        if len(images) != len(texts):
            raise ValueError(f"{IMAGE} and {TEXT} hold {len(images)} and {len(texts)} items")
        pixels = []
        for index, item in enumerate(images):
            try:
                pixels.append(self.images.preprocess(bytes(item), index))
            except InputItemError as exc:
                raise ValueError(f"{IMAGE} {exc}") from exc
        return pixels, texts

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        parsed = {}
        for index, parsed_or_error in enumerate(self.pool.map(self._safe_parse, requests)):
            if isinstance(parsed_or_error, str):
                responses[index] = invalid_argument(parsed_or_error)
            else:
                parsed[index] = parsed_or_error
        if not parsed:
            return responses
        order = list(parsed)
        counts = [len(parsed[i][1]) for i in order]
        try:
            pixels = np.stack([p for i in order for p in parsed[i][0]])
            texts = [t for i in order for t in parsed[i][1]]
            ids, mask = self.text.batch(texts)
            itm, itc = match_scores(self.vision, self.itm, self.text_feat, ids, mask, pixels)
        except Exception as exc:  # one failing batch fails its requests, not the server
            for index in order:
                responses[index] = internal_error(f"scoring failed: {exc}")
            return responses
        start = 0
        for index, count in zip(order, counts, strict=True):
            end = start + count
            responses[index] = response(
                {ITM_SCORE: itm[start:end, None], ITC_SCORE: itc[start:end, None]}
            )
            start = end
        return responses

    def _safe_parse(self, request: Any) -> tuple[list[np.ndarray], list[str]] | str:
        try:
            return self._parse(request)
        except ValueError as exc:
            return str(exc)

    def finalize(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
