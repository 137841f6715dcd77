"""Python-backend tokenizer: TEXT (BYTES, UTF-8) -> input_ids, attention_mask (int64).

Parameters (config.pbtxt): ``max_length`` (truncation, with special tokens) and
``pad_token_id``. The tokenizer files sit in ``<version>/tokenizer/``.
"""

from __future__ import annotations

from typing import Any

from vlpserve.contract import ATTENTION_MASK, INPUT_IDS, TEXT
from vlpserve.model_repository.runtime.errors import InputItemError
from vlpserve.model_repository.runtime.text import TextTokenizer, decode_texts
from vlpserve.model_repository.runtime.triton import (
    ModelArgs,
    input_array,
    invalid_argument,
    response,
)

TOKENIZER_DIR = "tokenizer"


class TritonPythonModel:
    """Tokenizes every request of a batch and pads them all to one length."""

    def initialize(self, args: dict[str, str]) -> None:
        self.args = ModelArgs(args)
        self.tokenizer = TextTokenizer(
            self.args.version_dir / TOKENIZER_DIR / "tokenizer.json",
            max_length=int(self.args.parameter("max_length")),
            pad_id=int(self.args.parameter("pad_token_id")),
        )

    def parse(self, requests: list[Any]) -> tuple[list[Any], list[int], list[list[str]]]:
        """Error responses for the bad requests (None elsewhere), the indexes of the good
        ones and their texts."""
        responses: list[Any] = [None] * len(requests)
        valid: list[int] = []
        groups: list[list[str]] = []
        for index, request in enumerate(requests):
            try:
                groups.append(decode_texts(input_array(request, TEXT).reshape(-1).tolist()))
            except (InputItemError, ValueError) as exc:
                responses[index] = invalid_argument(f"{TEXT} {exc}")
                continue
            valid.append(index)
        return responses, valid, groups

    def execute(self, requests: list[Any]) -> list[Any]:
        responses, valid, groups = self.parse(requests)
        encoded = self.tokenizer.encode_groups(groups)
        for index, (ids, mask) in zip(valid, encoded, strict=True):
            responses[index] = response({INPUT_IDS: ids, ATTENTION_MASK: mask})
        return responses
