"""One base for the Python-backend models whose requests Triton batches.

``execute`` parses each request, runs the batch once, splits the results back and answers
every request, with one error style: an ``InvalidRequest`` (bad input) answers its own
request with INVALID_ARGUMENT while the others of the batch still succeed; anything else is
unexpected and answers INTERNAL with a short message and the request id, the traceback in
the server log.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import numpy as np

from vlpserve.model_repository.runtime.errors import InvalidRequest
from vlpserve.model_repository.runtime.triton import (
    ModelArgs,
    internal_error,
    invalid_argument,
    request_arrays,
    response,
)

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Outputs = dict[str, np.ndarray]


def split_rows(outputs: Outputs, counts: Sequence[int]) -> list[Outputs]:
    """Batched outputs cut back into consecutive parts of ``counts`` rows."""
    offsets = np.cumsum([0, *counts])
    return [
        {name: value[start:end] for name, value in outputs.items()}
        for start, end in itertools.pairwise(offsets)
    ]


class BatchedModel(Generic[Item]):
    """Subclasses define ``setup`` (after ``self.args`` is set), ``parse(request) -> Item``
    and ``run(items) -> [Outputs or exception per item]``. With ``parse_pool`` set, the
    requests of a batch are parsed on it in parallel (decoding images, say)."""

    args: ModelArgs
    parse_pool: ThreadPoolExecutor | None = None

    def initialize(self, args: dict[str, str]) -> None:
        self.args = ModelArgs(args)
        self.setup()

    def setup(self) -> None:
        """Load what the model needs (sessions, tokenizer, parameters)."""

    def parse(self, request: Any) -> Item:
        raise NotImplementedError

    def arrays(self, request: Any) -> dict[str, np.ndarray | None]:
        """The request's inputs by name (see runtime.inputs)."""
        return request_arrays(request, self.args.inputs)

    def run(self, items: list[Item]) -> Sequence[Outputs | Exception]:
        raise NotImplementedError

    def _parse(self, request: Any) -> Item | Exception:
        try:
            return self.parse(request)
        except Exception as exc:  # answered below, each request with its own error
            return exc

    def execute(self, requests: list[Any]) -> list[Any]:
        mapper = self.parse_pool.map if self.parse_pool else map
        parsed = list(mapper(self._parse, requests))
        valid = [i for i, item in enumerate(parsed) if not isinstance(item, Exception)]
        outcomes: list[Any] = list(parsed)
        if valid:
            items: list[Any] = [parsed[i] for i in valid]
            try:
                results: Sequence[Outputs | Exception] = self.run(items)
            except Exception as exc:  # the batch failed: every request in it gets the error
                results = [exc] * len(valid)
            for index, result in zip(valid, results, strict=True):
                outcomes[index] = result
        return [self.answer(r, o) for r, o in zip(requests, outcomes, strict=True)]

    def answer(self, request: Any, outcome: Outputs | Exception) -> Any:
        """The response of one request: its outputs, or its error."""
        if isinstance(outcome, InvalidRequest):
            return invalid_argument(str(outcome))
        if isinstance(outcome, Exception):
            request_id = request.request_id() or uuid.uuid4().hex[:12]
            logger.error("%s: request %s failed", self.args.name, request_id, exc_info=outcome)
            return internal_error(
                f"{self.args.name}: internal error ({type(outcome).__name__}) in request "
                f"{request_id}; the server log has the details"
            )
        return response(outcome)

    def finalize(self) -> None:
        if self.parse_pool is not None:
            self.parse_pool.shutdown(wait=False, cancel_futures=True)
