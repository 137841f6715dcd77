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

from vlpserve.contract import ATTENTION_MASK, INPUT_IDS
from vlpserve.model_repository.runtime.onnx_model import GRAPH_FILE
from vlpserve.model_repository.runtime.sessions import ort_session
from vlpserve.model_repository.runtime.tokenizer_model import (
    TritonPythonModel as TokenizerModel,
)
from vlpserve.model_repository.runtime.triton import internal_error, response

logger = logging.getLogger(__name__)


class TritonPythonModel(TokenizerModel):
    """Tokenizes every request of a batch, runs the text graph once, splits the rows."""

    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        self.session = ort_session(
            self.args.version_dir / GRAPH_FILE,
            on_gpu=self.args.on_gpu,
            device_id=self.args.device_id,
            threads=int(self.args.parameter("intra_op_threads", "0")),
        )
        self.graph_inputs = {i.name for i in self.session.get_inputs()}
        self.outputs = [o["name"] for o in self.args.config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses, valid, groups = self.parse(requests)
        if not valid:
            return responses
        ids, mask = self.tokenizer.encode([text for group in groups for text in group])
        feeds = {INPUT_IDS: ids, ATTENTION_MASK: mask}
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
        for index, group in zip(valid, groups, strict=True):
            end = start + len(group)
            responses[index] = response(
                {
                    name: result[start:end]
                    for name, result in zip(self.outputs, results, strict=True)
                }
            )
            start = end
        return responses
