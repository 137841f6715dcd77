"""Python-backend tokenizer: TEXT (BYTES, UTF-8) -> input_ids (the text graph's type),
attention_mask (int64).

Parameters (runtime.params.TokenizerParams): truncation length and pad id. The texts of all
requests of a batch are padded to one length, so the encoder downstream batches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlpserve.contract import ATTENTION_MASK, INPUT_IDS, TEXT, TOKEN_COUNT
from vlpserve.model_repository.runtime.batched import BatchedModel, Outputs, split_rows
from vlpserve.model_repository.runtime.inputs import texts
from vlpserve.model_repository.runtime.params import TokenizerParams
from vlpserve.model_repository.runtime.text import TextTokenizer


class TritonPythonModel(BatchedModel[list[str]]):
    """Tokenizes every request of a batch and pads them all to one length."""

    def setup(self) -> None:
        params = self.args.params(TokenizerParams)
        self.limits = params.limits
        self.tokenizer = TextTokenizer.of(
            self.args.folder.tokenizer,
            max_length=params.max_length,
            pad_id=params.pad_token_id,
            ids_dtype=params.ids_dtype,
            pad_to=params.pad_to,
            padding_side=params.padding_side,
        )

    def parse(self, request: Any) -> list[str]:
        return texts(self.arrays(request), TEXT, self.limits)

    def tokens(self, items: list[list[str]]) -> Outputs:
        """Ids and masks of every text of the batch, padded to the longest (or to the
        checkpoint's fixed length)."""
        ids, mask = self.tokenizer.encode([text for texts in items for text in texts])
        counts = mask.sum(axis=1, keepdims=True).astype(np.int32)
        return {INPUT_IDS: ids, ATTENTION_MASK: mask, TOKEN_COUNT: counts}

    def run(self, items: list[list[str]]) -> Sequence[Outputs | Exception]:
        # Only the outputs the config declares: a text graph may take no attention mask.
        wanted = set(self.args.outputs)
        tokens = {name: value for name, value in self.tokens(items).items() if name in wanted}
        return split_rows(tokens, [len(texts) for texts in items])
