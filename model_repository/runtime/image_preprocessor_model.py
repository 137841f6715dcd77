"""Python-backend image pre-processing: IMAGE (encoded JPEG/PNG/WebP bytes) -> pixel_values.

Decoding and resizing run on a thread pool (PIL releases the GIL); one bad image fails only
its own request, with INVALID_ARGUMENT naming the item.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from vlpserve.contract import IMAGE, PIXEL_VALUES
from vlpserve.model_repository.runtime.errors import InputItemError
from vlpserve.model_repository.runtime.images import MIN_IMAGE_SIDE, ImagePreprocessing
from vlpserve.model_repository.runtime.triton import (
    ModelArgs,
    input_array,
    invalid_argument,
    response,
)

PREPROCESSOR_FILE = "preprocessor_config.json"


class TritonPythonModel:
    """Decodes and preprocesses every image of every request in the batch."""

    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self.steps = ImagePreprocessing.from_file(
            model.version_dir / PREPROCESSOR_FILE,
            min_side=int(model.parameter("min_image_side", str(MIN_IMAGE_SIDE))),
        )
        workers = int(model.parameter("decode_threads", "0")) or (os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    def _submit(self, request: Any) -> list[Future[np.ndarray]]:
        items = input_array(request, IMAGE).reshape(-1).tolist()
        if not items:
            raise ValueError("request holds no images")
        return [
            self.pool.submit(self.steps.preprocess, bytes(item), index)
            for index, item in enumerate(items)
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        # Submit every image of every request first, so that batch-1 requests decode in
        # parallel too; then collect per request.
        pending: list[list[Future[np.ndarray]] | Exception] = []
        for request in requests:
            try:
                pending.append(self._submit(request))
            except ValueError as exc:
                pending.append(exc)
        responses = []
        for futures in pending:
            try:
                if isinstance(futures, Exception):
                    raise futures
                pixels = np.stack([future.result() for future in futures])
                responses.append(response({PIXEL_VALUES: pixels}))
            except (InputItemError, ValueError) as exc:
                responses.append(invalid_argument(f"{IMAGE} {exc}"))
        return responses

    def finalize(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
