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
from vlpserve.model_repository.runtime.image_preprocessor_model import decode_pool
from vlpserve.model_repository.runtime.inputs import pairs
from vlpserve.model_repository.runtime.params import BlipParams

Pairs = tuple[list[np.ndarray], list[str]]


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
        self.parse_pool = decode_pool(0)

    def parse(self, request: Any) -> Pairs:
        return pairs(self.arrays(request), self.images)

    def run(self, items: list[Pairs]) -> Sequence[Outputs | Exception]:
        pixels = np.stack([p for item_pixels, _ in items for p in item_pixels])
        ids, mask = self.text.batch([t for _, texts in items for t in texts])
        itm, itc = match_scores(self.vision, self.itm, self.text_feat, ids, mask, pixels)
        outputs = {ITM_SCORE: itm[:, None], ITC_SCORE: itc[:, None]}
        return split_rows(outputs, [len(texts) for _, texts in items])
