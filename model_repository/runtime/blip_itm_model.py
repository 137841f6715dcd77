"""Python-backend ``blip_itm``: (image, text) pairs -> ITM match probability and ITC cosine.

ITM_SCORE is softmax(itm_head)[match] of BlipForImageTextRetrieval with the ITM head;
ITC_SCORE the cosine of the projected image and text features (``use_itm_head=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlpserve.contract import ITC_SCORE, ITM_SCORE
from vlpserve.model_repository.runtime.batched import BatchedModel, Outputs, split_rows
from vlpserve.model_repository.runtime.blip_common import BlipText, load_images, match_scores
from vlpserve.model_repository.runtime.device_images import DeviceImages
from vlpserve.model_repository.runtime.image_preprocessor_model import decode_pool
from vlpserve.model_repository.runtime.inputs import decoded, pairs, pixels
from vlpserve.model_repository.runtime.params import BlipParams

Pairs = tuple[list[Any], list[str]]  # pixel arrays, or decoded images for the device


class TritonPythonModel(BatchedModel[Pairs]):
    """Scores every pair of every request of a batch in one pass through each graph."""

    def setup(self) -> None:
        params = self.args.params(BlipParams)
        folder = self.args.folder
        self.text = BlipText(folder.tokenizer_file)
        self.images = load_images(folder.preprocessor_file, params.limits)

        self.vision, self.itm, self.text_feat = (
            self.args.session(folder.graph(name), params)
            for name in ("vision_encoder", "itm_head", "text_feat")
        )
        # Resize, crop and normalise on the decode threads, or on the vision encoder's device.
        self.device_images = (
            DeviceImages(self.images, on_gpu=self.args.on_gpu, device_id=self.args.device_id)
            if params.on_device
            else None
        )
        self.parse_pool = decode_pool(0)

    def parse(self, request: Any) -> Pairs:
        prepare = pixels if self.device_images is None else decoded
        return pairs(self.arrays(request), self.images, prepare)

    def run(self, items: list[Pairs]) -> Sequence[Outputs | Exception]:
        images = [image for item_images, _ in items for image in item_images]
        device = self.device_images
        batch = np.stack(images) if device is None else device.stack(images)
        ids, mask = self.text.batch([t for _, texts in items for t in texts])
        itm, itc = match_scores(self.vision, self.itm, self.text_feat, ids, mask, batch)
        outputs = {ITM_SCORE: itm[:, None], ITC_SCORE: itc[:, None]}
        return split_rows(outputs, [len(texts) for _, texts in items])
