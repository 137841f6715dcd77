"""Python-backend ``<family>_text`` of the ``python`` runtime: TEXT -> text_embeds in one
model, tokenizer and text graph in the same process.

Same contract as the ensemble (tokenizer, then encoder) that the ``onnxruntime`` runtime
uses, one Python-backend hop fewer: a batch-1 text round trip on the 2-core CPU machine lost
about 2 ms to the second hop (benchmarks/RESULTS.md). The texts of all requests of an
``execute`` are padded to the longest and run as one batch.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from vlpserve.contract import ATTENTION_MASK, INPUT_IDS, TEXT
from vlpserve.model_repository.runtime.errors import InputItemError
from vlpserve.model_repository.runtime.sessions import ort_session
from vlpserve.model_repository.runtime.text import TextTokenizer, decode_texts
from vlpserve.model_repository.runtime.triton import (
    ModelArgs,
    input_array,
    internal_error,
    invalid_argument,
    response,
)

logger = logging.getLogger(__name__)

GRAPH_FILE = "model.onnx"
TOKENIZER_DIR = "tokenizer"


class TritonPythonModel:
    """Tokenizes every request of a batch, runs the text graph once, splits the rows."""

    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self.tokenizer = TextTokenizer(
            model.version_dir / TOKENIZER_DIR / "tokenizer.json",
            max_length=int(model.parameter("max_length")),
            pad_id=int(model.parameter("pad_token_id")),
        )
        self.session = ort_session(
            model.version_dir / GRAPH_FILE,
            on_gpu=model.on_gpu,
            device_id=model.device_id,
            threads=int(model.parameter("intra_op_threads", "0")),
        )
        self.graph_inputs = {i.name for i in self.session.get_inputs()}
        self.outputs = [o["name"] for o in model.config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        valid: list[int] = []
        groups: list[list[str]] = []
        for index, request in enumerate(requests):
            try:
                texts = decode_texts(input_array(request, TEXT).reshape(-1).tolist())
                if not texts:
                    raise ValueError("request holds no texts")
            except (InputItemError, ValueError) as exc:
                responses[index] = invalid_argument(f"{TEXT} {exc}")
                continue
            valid.append(index)
            groups.append(texts)
        if not valid:
            return responses
        encoded = self.tokenizer.encode_groups(groups)
        feeds = {
            INPUT_IDS: np.concatenate([ids for ids, _ in encoded]),
            ATTENTION_MASK: np.concatenate([mask for _, mask in encoded]),
        }
        try:
            results = self.session.run(
                self.outputs, {k: v for k, v in feeds.items() if k in self.graph_inputs}
            )
        except Exception as exc:  # ORT errors are per batch: answer each request with it
            logger.exception("inference failed")
            for index in valid:
                responses[index] = internal_error(f"inference failed: {exc}")
            return responses
        start = 0
        for index, texts in zip(valid, groups, strict=True):
            end = start + len(texts)
            responses[index] = response(
                {
                    name: result[start:end]
                    for name, result in zip(self.outputs, results, strict=True)
                }
            )
            start = end
        return responses
