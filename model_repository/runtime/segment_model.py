"""Python-backend ``<family>_segment``: an encoded image and label texts -> label map.

Each request holds one image (IMAGE, batch 1) and its labels (LABELS, up to ``max_labels``).
All requests of a batch are decoded together, their images sent to the image encoder in one
call and their labels to the text model in one call (BLS), then post-processed each on its
own. The label map has the ORIGINAL image's size: the model sees the whole image resized to
its input size (no crop), and the logits are resized back.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

from vlpserve.contract import (
    FRACTIONS,
    GROUP_EMBEDS,
    GROUPING,
    IMAGE,
    IMAGE_EMBEDS,
    LABEL_MAP,
    LABELS,
    PIXEL_VALUES,
    SCORES,
    TEXT,
    TEXT_EMBEDS,
)
from vlpserve.model_repository.runtime.errors import InputItemError
from vlpserve.model_repository.runtime.images import MIN_IMAGE_SIDE, ImagePreprocessing
from vlpserve.model_repository.runtime.segmentation import segment
from vlpserve.model_repository.runtime.text import decode_texts
from vlpserve.model_repository.runtime.triton import (
    ModelArgs,
    input_array,
    internal_error,
    invalid_argument,
    response,
)

PREPROCESSOR_FILE = "preprocessor_config.json"


def _call(model: str, name: str, array: np.ndarray, outputs: list[str], chunk: int) -> list[Any]:
    """BLS call in chunks of ``chunk`` rows; outputs concatenated along the batch axis."""
    parts: list[list[np.ndarray]] = [[] for _ in outputs]
    for start in range(0, len(array), chunk):
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=outputs,
            inputs=[pb_utils.Tensor(name, array[start : start + chunk])],
        )
        result = request.exec()
        if result.has_error():
            raise RuntimeError(f"{model}: {result.error().message()}")
        for part, output in zip(parts, outputs, strict=True):
            part.append(pb_utils.get_output_tensor_by_name(result, output).as_numpy())
    return [np.concatenate(part) for part in parts]


class TritonPythonModel:
    """Zero-shot segmentation over the family's image encoder and raw text model."""

    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        steps = ImagePreprocessing.from_file(
            model.version_dir / PREPROCESSOR_FILE,
            min_side=int(model.parameter("min_image_side", str(MIN_IMAGE_SIDE))),
        )
        # The whole image, resized to the model's input: a label map must cover every pixel.
        self.model_size = steps.output_size
        self.steps = dataclasses.replace(
            steps, resize_shortest_edge=None, resize_to=self.model_size, crop=None
        )
        self.text_model = model.parameter("text_model")
        self.image_model = model.parameter("image_model")
        self.chunk = int(model.parameter("encoder_max_batch_size"))
        self.logit_scale = float(model.parameter("logit_scale"))
        self.max_labels = int(model.parameter("max_labels"))
        workers = int(model.parameter("decode_threads", "0")) or (os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    def _parse(self, request: Any) -> tuple[Image.Image, list[str]]:
        """The request's image and labels; ValueError with the message for the caller."""
        images = input_array(request, IMAGE)
        if images.size != 1:
            raise ValueError(f"{IMAGE}: send one image per request, got {images.size}")
        try:
            labels = decode_texts(input_array(request, LABELS).reshape(-1).tolist())
        except InputItemError as exc:
            raise ValueError(f"{LABELS} {exc}") from exc
        if not labels:
            raise ValueError(f"{LABELS} is empty: give at least one label")
        if len(labels) > self.max_labels:
            raise ValueError(f"{LABELS} holds {len(labels)} labels, more than {self.max_labels}")
        try:
            return self.steps.decode(bytes(images.reshape(-1)[0]), 0), labels
        except InputItemError as exc:
            raise ValueError(f"{IMAGE} {exc}") from exc

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        parsed: dict[int, tuple[Image.Image, list[str]]] = {}
        for index, request in enumerate(requests):
            try:
                parsed[index] = self._parse(request)
            except ValueError as exc:
                responses[index] = invalid_argument(str(exc))
        if not parsed:
            return responses
        order = list(parsed)
        try:
            pixels = np.stack(list(self.pool.map(self.steps, [parsed[i][0] for i in order])))
            image_embeds, group_embeds, grouping = _call(
                self.image_model,
                PIXEL_VALUES,
                pixels,
                [IMAGE_EMBEDS, GROUP_EMBEDS, GROUPING],
                self.chunk,
            )
            unique = sorted({label for i in order for label in parsed[i][1]})
            texts = np.array([label.encode() for label in unique], dtype=object).reshape(-1, 1)
            (text_embeds,) = _call(self.text_model, TEXT, texts, [TEXT_EMBEDS], self.chunk)
        except Exception as exc:  # a failing encoder fails every request of this batch
            for index in order:
                responses[index] = internal_error(f"segmentation failed: {exc}")
            return responses
        row_of = {label: row for row, label in enumerate(unique)}

        def post_process(position: int) -> Any:
            image, labels = parsed[order[position]]
            return segment(
                image_embeds=image_embeds[position],
                group_embeds=group_embeds[position],
                grouping=grouping[position],
                text_embeds=text_embeds[[row_of[label] for label in labels]],
                logit_scale=self.logit_scale,
                model_size=self.model_size,
                image_size=(image.height, image.width),
            )

        # On the decode threads: numpy's products and comparisons release the GIL, and the
        # encoders are idle while this instance post-processes.
        results = self.pool.map(post_process, range(len(order)))
        for index, result in zip(order, results, strict=True):
            responses[index] = response(
                {
                    LABEL_MAP: result.label_map[None],
                    SCORES: result.scores[None],
                    FRACTIONS: result.fractions[None],
                }
            )
        return responses

    def finalize(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
