"""Server-side tokenization with the checkpoint's fast tokenizer (tokenizer.json).

Texts of all requests that Triton hands to one ``execute`` are padded to one common length,
so the encoder downstream can batch them: texts padded per request to their own length
would not merge at the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from vlpserve.model_repository.runtime.errors import InputItemError


def decode_texts(items: Sequence[object], max_bytes: int = 65_536) -> list[str]:
    """UTF-8 strings from BYTES items of at most ``max_bytes``, or InputItemError naming the
    bad one."""
    texts = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            texts.append(item)
            continue
        if not isinstance(item, bytes | bytearray | np.bytes_):
            raise InputItemError(index, f"expected text bytes, got {type(item).__name__}")
        if len(item) > max_bytes:
            raise InputItemError(index, f"text is {len(item)} bytes, over the limit of {max_bytes}")
        try:
            texts.append(bytes(item).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InputItemError(
                index, f"text is not valid UTF-8 (byte {item[exc.start]:#04x} at {exc.start})"
            ) from exc
    return texts


class TextTokenizer:
    """A fast tokenizer truncating at ``max_length`` and padding with ``pad_id``."""

    def __init__(
        self,
        tokenizer_file: Path | str,
        *,
        max_length: int,
        pad_id: int,
        ids_dtype: str = "int64",
    ) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        self.max_length = max_length
        self.pad_id = pad_id
        self.ids_dtype = np.dtype(ids_dtype)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (``ids_dtype``) and attention masks (int64) of ``texts``, padded to the
        longest."""
        encodings = self._tokenizer.encode_batch(list(texts)) if texts else []
        length = max((len(e.ids) for e in encodings), default=1)
        ids = np.full((len(texts), length), self.pad_id, dtype=self.ids_dtype)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        return ids, mask
