"""Python-backend ``<family>_text`` of the ``python`` runtime: TEXT -> text_embeds in one
model, tokenizer and text graph in the same process.

Same contract as the ensemble (tokenizer, then encoder) that the ``onnxruntime`` runtime
uses, one Python-backend hop fewer: a batch-1 text round trip on the 2-core CPU machine lost
about 2 ms to the second hop (benchmarks/RESULTS.md). The texts of all requests of an
``execute`` are padded to the longest and run as one batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlpserve.contract import ATTENTION_MASK, TOKEN_COUNT
from vlpserve.model_repository.runtime.batched import Outputs, split_rows
from vlpserve.model_repository.runtime.device import Device, host_run
from vlpserve.model_repository.runtime.params import TextParams
from vlpserve.model_repository.runtime.text import length_groups
from vlpserve.model_repository.runtime.tokenizer_model import (
    TritonPythonModel as TokenizerModel,
)


class TritonPythonModel(TokenizerModel):
    """Tokenizes every request of a batch, runs the text graph once, splits the rows."""

    def setup(self) -> None:
        super().setup()
        params = self.args.params(TextParams)
        self.session = self.args.session(self.args.folder.graph(), params)
        self.device = Device.of(self.session)
        self.graph_inputs = {i.name for i in self.session.get_inputs()}
        self.outputs = self.args.outputs
        # Texts padded to a fixed length (SigLIP) or on the left leave nothing to regroup.
        fixed = params.pad_to or params.padding_side != "right"
        self.group_tokens = 0 if fixed else params.length_group_tokens

    def run(self, items: list[list[str]]) -> Sequence[Outputs | Exception]:
        tokens = self.tokens(items)
        feeds = {k: v for k, v in tokens.items() if k in self.graph_inputs}
        names = [name for name in self.outputs if name != TOKEN_COUNT]
        outputs = self.embed(feeds, tokens[ATTENTION_MASK].sum(axis=1), names)
        outputs[TOKEN_COUNT] = tokens[TOKEN_COUNT]
        return split_rows(outputs, [len(texts) for texts in items])

    def embed(
        self, feeds: dict[str, np.ndarray], lengths: np.ndarray, names: list[str]
    ) -> dict[str, np.ndarray]:
        """The graph's outputs for every row, run in groups of similar length (each padded
        to its own longest) where that is cheaper than one batch padded to the longest: the
        text towers pool a position that padding never reaches (CLIP's end of text), so the
        rows come out as they would alone."""
        groups = length_groups(lengths.tolist(), self.group_tokens) if self.group_tokens else []
        if len(groups) <= 1:
            return host_run(self.session, feeds, self.device, names)
        found: dict[str, np.ndarray] = {}
        for rows in groups:
            width = int(lengths[rows].max())
            part = {name: value[rows, :width] for name, value in feeds.items()}
            for name, value in host_run(self.session, part, self.device, names).items():
                if name not in found:
                    found[name] = np.empty((len(lengths), *value.shape[1:]), value.dtype)
                found[name][rows] = value
        return found
