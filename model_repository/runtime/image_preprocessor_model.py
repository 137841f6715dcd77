"""Python-backend image pre-processing: IMAGE (encoded image bytes) -> pixel_values.

Every image of every request is decoded on a thread pool (PIL releases the GIL), so batch-1
requests decode in parallel too; one bad image fails only its own request, with
INVALID_ARGUMENT naming the item. Then, as ``repo build --preprocess`` chose:

- ``host`` (the default): resize, crop and normalisation on the same threads, bit-equal to
  the Hugging Face processor; the pixels go to the encoder as a host array.
- ``device``: resize, crop and normalisation by ONNX Runtime on the instance's device
  (runtime.device_images, parity-gated), each image written into its row of the request's
  batch there; the batch goes to the encoder by DLPack, on a GPU without a host round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlpserve.contract import PIXEL_VALUES
from vlpserve.model_repository.runtime.batched import BatchedModel, Outputs
from vlpserve.model_repository.runtime.device_images import DeviceImages
from vlpserve.model_repository.runtime.errors import InvalidRequest
from vlpserve.model_repository.runtime.images import ImagePreprocessing
from vlpserve.model_repository.runtime.inputs import decoded, image_bytes, pixels
from vlpserve.model_repository.runtime.params import ImageParams
from vlpserve.ort import usable_cpus


@dataclass(frozen=True)
class Pending:
    """One request's images on the decode pool: pixel arrays (host), or written into
    ``batch`` (device)."""

    futures: list[Future[Any]]
    batch: Any = None


def decode_pool(threads: int) -> ThreadPoolExecutor:
    """Threads that decode images: ``threads``, or one per usable CPU for 0."""
    return ThreadPoolExecutor(max_workers=threads or usable_cpus(), thread_name_prefix="decode")


def _into(
    images: DeviceImages, steps: ImagePreprocessing, data: bytes, row: int, batch: Any
) -> None:
    """Decode one image here and pre-process it into its row of ``batch`` on the device."""
    images.into(decoded(steps, data, row), batch, row)


class TritonPythonModel(BatchedModel[Pending]):
    """Decodes and preprocesses every image of every request in the batch."""

    def setup(self) -> None:
        params = self.args.params(ImageParams)
        self.steps = ImagePreprocessing.from_file(
            self.args.folder.preprocessor_file, limits=params.limits
        )
        self.pool = decode_pool(params.decode_threads)
        self.device_images = (
            DeviceImages(self.steps, on_gpu=self.args.on_gpu, device_id=self.args.device_id)
            if params.on_device
            else None
        )

    def parse(self, request: Any) -> Pending:
        """Submits the request's images: parsing returns at once, decoding goes on."""
        found = image_bytes(self.arrays(request))
        if self.device_images is None:
            return Pending(
                [self.pool.submit(pixels, self.steps, d, i) for i, d in enumerate(found)]
            )
        images = self.device_images
        batch = images.batch(len(found))
        return Pending(
            [self.pool.submit(_into, images, self.steps, d, i, batch) for i, d in enumerate(found)],
            batch,
        )

    def run(self, items: list[Pending]) -> Sequence[Outputs | Exception]:
        results: list[Outputs | Exception] = []
        for pending in items:
            try:
                found = [f.result() for f in pending.futures]
            except InvalidRequest as exc:
                results.append(exc)
                continue
            results.append(
                {PIXEL_VALUES: np.stack(found) if pending.batch is None else pending.batch}
            )
        return results

    def finalize(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
