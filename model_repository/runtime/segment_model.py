"""Python-backend ``<family>_segment``: an encoded image and label texts -> label map.

Each request holds one image (IMAGE, batch 1) and its labels (LABELS, up to ``max_labels``).
All requests of a batch are decoded together, their images sent to the image encoder in one
call and their labels to the text model in one call (BLS), then post-processed each on its
own. The label map has the ORIGINAL image's size: the model sees the whole image resized to
its input size (no crop), and the logits are resized back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from vlpserve.contract import (
    FRACTIONS,
    GROUP_EMBEDS,
    GROUPING,
    IMAGE_EMBEDS,
    LABEL_MAP,
    PIXEL_VALUES,
    SCORES,
    TEXT,
    TEXT_EMBEDS,
    label_map_dtype,
)
from vlpserve.model_repository.runtime.batched import BatchedModel, Outputs
from vlpserve.model_repository.runtime.image_preprocessor_model import decode_pool
from vlpserve.model_repository.runtime.images import ImagePreprocessing
from vlpserve.model_repository.runtime.inputs import segment_request
from vlpserve.model_repository.runtime.params import SegmentParams
from vlpserve.model_repository.runtime.segmentation import Segment, segment

# A request's pixels for the encoder, its image's (height, width) and its labels: the
# decoded image is dropped as soon as it is parsed (a 40 Mpx photo is 120 MB in RGB).
Parsed = tuple[np.ndarray, tuple[int, int], list[str]]


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


class TritonPythonModel(BatchedModel[Parsed]):
    """Zero-shot segmentation over the family's image encoder and raw text model."""

    def setup(self) -> None:
        self.params = self.args.params(SegmentParams)
        steps = ImagePreprocessing.from_file(
            self.args.folder.preprocessor_file, limits=self.params.limits
        )
        # The whole image, resized to the model's input: a label map must cover every pixel.
        self.model_size = steps.output_size
        self.steps = dataclasses.replace(
            steps, resize_shortest_edge=None, resize_to=self.model_size, crop=None
        )
        self.pool = decode_pool(self.params.decode_threads)
        self.label_dtype = np.dtype(label_map_dtype(self.params.max_labels))
        self.parse_pool = self.pool  # decode the requests' images in parallel

    def parse(self, request: Any) -> Parsed:
        """The request's pixels, image size and labels."""
        image, labels = segment_request(self.arrays(request), self.steps, self.params.max_labels)
        return self.steps(image), (image.height, image.width), labels

    def run(self, items: list[Parsed]) -> Sequence[Outputs | Exception]:
        pool = self.pool
        pixels = np.stack([item[0] for item in items])
        chunk = self.params.encoder_max_batch_size
        image_embeds, group_embeds, grouping = _call(
            self.params.image_model,
            PIXEL_VALUES,
            pixels,
            [IMAGE_EMBEDS, GROUP_EMBEDS, GROUPING],
            chunk,
        )
        unique = sorted({label for _, _, labels in items for label in labels})
        texts = np.array([label.encode() for label in unique], dtype=object).reshape(-1, 1)
        (text_embeds,) = _call(self.params.text_model, TEXT, texts, [TEXT_EMBEDS], chunk)
        row_of = {label: row for row, label in enumerate(unique)}

        def post_process(position: int) -> Segment:
            _, size, labels = items[position]
            return segment(
                image_embeds=image_embeds[position],
                group_embeds=group_embeds[position],
                grouping=grouping[position],
                text_embeds=text_embeds[[row_of[label] for label in labels]],
                logit_scale=self.params.logit_scale,
                model_size=self.model_size,
                image_size=size,
                dtype=self.label_dtype,
            )

        # On the decode threads: numpy's products and comparisons release the GIL, and the
        # encoders are idle while this instance post-processes.
        return [
            {
                LABEL_MAP: result.label_map[None],
                SCORES: result.scores[None],
                FRACTIONS: result.fractions[None],
            }
            for result in pool.map(post_process, range(len(items)))
        ]
