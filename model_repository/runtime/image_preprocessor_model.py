"""Python-backend image pre-processing: IMAGE (encoded JPEG/PNG/WebP bytes) -> pixel_values.

Every image of every request is decoded and resized on a thread pool (PIL releases the GIL),
so batch-1 requests decode in parallel too; one bad image fails only its own request, with
INVALID_ARGUMENT naming the item.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from vlpserve.contract import PIXEL_VALUES
from vlpserve.model_repository.runtime.batched import BatchedModel, Outputs
from vlpserve.model_repository.runtime.errors import InvalidRequest
from vlpserve.model_repository.runtime.images import ImagePreprocessing
from vlpserve.model_repository.runtime.inputs import image_bytes, pixels
from vlpserve.model_repository.runtime.params import ImageParams

Pending = list[Future[np.ndarray]]


def decode_pool(threads: int) -> ThreadPoolExecutor:
    """Threads that decode images: ``threads``, or one per core for 0."""
    return ThreadPoolExecutor(
        max_workers=threads or os.cpu_count() or 1, thread_name_prefix="decode"
    )


class TritonPythonModel(BatchedModel[Pending]):
    """Decodes and preprocesses every image of every request in the batch."""

    def setup(self) -> None:
        params = self.args.params(ImageParams)
        self.steps = ImagePreprocessing.from_file(
            self.args.folder.preprocessor_file, limits=params.limits
        )
        self.pool = decode_pool(params.decode_threads)

    def parse(self, request: Any) -> Pending:
        """Submits the request's images: parsing returns at once, decoding goes on."""
        found = image_bytes(self.arrays(request))
        return [self.pool.submit(pixels, self.steps, data, i) for i, data in enumerate(found)]

    def run(self, items: list[Pending]) -> Sequence[Outputs | Exception]:
        results: list[Outputs | Exception] = []
        for futures in items:
            try:
                results.append({PIXEL_VALUES: np.stack([f.result() for f in futures])})
            except InvalidRequest as exc:
                results.append(exc)
        return results

    def finalize(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
