"""Python-backend ``<family>_text`` of the ``python`` runtime: TEXT -> text_embeds in one
model, tokenizer and text graph in the same process.

Same contract as the ensemble (tokenizer, then encoder) that the ``onnxruntime`` runtime
uses, one Python-backend hop fewer: a batch-1 text round trip on the 2-core CPU machine lost
about 2 ms to the second hop (benchmarks/RESULTS.md). The texts of all requests of an
``execute`` are padded to the longest and run as one batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from vlpserve.contract import TOKEN_COUNT
from vlpserve.model_repository.runtime.batched import Outputs, split_rows
from vlpserve.model_repository.runtime.device import Device, host_run
from vlpserve.model_repository.runtime.params import TextParams
from vlpserve.model_repository.runtime.tokenizer_model import (
    TritonPythonModel as TokenizerModel,
)


class TritonPythonModel(TokenizerModel):
    """Tokenizes every request of a batch, runs the text graph once, splits the rows."""

    def setup(self) -> None:
        super().setup()
        self.session = self.args.session(self.args.folder.graph(), self.args.params(TextParams))
        self.device = Device.of(self.session)
        self.graph_inputs = {i.name for i in self.session.get_inputs()}
        self.outputs = self.args.outputs

    def run(self, items: list[list[str]]) -> Sequence[Outputs | Exception]:
        tokens = self.tokens(items)
        feeds = {k: v for k, v in tokens.items() if k in self.graph_inputs}
        names = [name for name in self.outputs if name != TOKEN_COUNT]
        outputs = host_run(self.session, feeds, self.device, names)
        outputs[TOKEN_COUNT] = tokens[TOKEN_COUNT]
        return split_rows(outputs, [len(texts) for texts in items])
