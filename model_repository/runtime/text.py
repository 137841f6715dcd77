"""Server-side tokenization with the checkpoint's fast tokenizer (tokenizer.json).

Texts of all requests that Triton hands to one ``execute`` are padded to one common length,
so the encoder downstream can batch them: texts padded per request to their own length
would not merge at the encoder.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from vlpserve.layout import SENTENCEPIECE_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from vlpserve.model_repository.runtime.errors import InputItemError

SPIECE_UNDERLINE = "▁"


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
    """The checkpoint's tokenizer: truncation at ``max_length`` (special tokens included),
    padding with ``pad_id`` to the longest text of a batch, or to ``pad_to`` for every text
    (SigLIP: 64, as it was trained), on ``padding_side``.

    Two engines, by what the checkpoint has: its ``tokenizer.json`` (a fast tokenizer, run by
    the tokenizers library), or SigLIP's SentencePiece model (``spiece.model``: SiglipPieces).
    """

    def __init__(
        self,
        tokenizer_file: Path | str,
        *,
        max_length: int,
        pad_id: int,
        ids_dtype: str = "int64",
        pad_to: int = 0,
        padding_side: str = "right",
    ) -> None:
        path = Path(tokenizer_file)
        if path.name == SENTENCEPIECE_FILE:
            self._pieces: SiglipPieces | None = SiglipPieces(path, max_length=max_length)
        else:
            self._pieces = None
            self._tokenizer = Tokenizer.from_file(str(path))
            self._tokenizer.no_padding()
            self._tokenizer.enable_truncation(max_length)
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side is right or left, got {padding_side!r}")
        self.max_length = max_length
        self.pad_id = pad_id
        self.ids_dtype = np.dtype(ids_dtype)
        self.pad_to = pad_to
        self.padding_side = padding_side

    @classmethod
    def of(cls, folder: Path, **options: Any) -> TextTokenizer:
        """The tokenizer in a checkpoint's tokenizer folder (tokenizer.json or spiece.model)."""
        fast = folder / TOKENIZER_FILE
        return cls(fast if fast.is_file() else folder / SENTENCEPIECE_FILE, **options)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, special tokens added, truncated; not padded."""
        if self._pieces is not None:
            return [self._pieces.encode(text) for text in texts]
        return [list(e.ids) for e in self._tokenizer.encode_batch(list(texts))] if texts else []

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (``ids_dtype``) and attention masks (int64) of ``texts``, padded."""
        encoded = self.ids(texts)
        length = self.pad_to or max((len(ids) for ids in encoded), default=1)
        ids = np.full((len(texts), length), self.pad_id, dtype=self.ids_dtype)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, row_ids in enumerate(encoded):
            span = (
                slice(length - len(row_ids), length)
                if self.padding_side == "left"
                else (slice(0, len(row_ids)))
            )
            ids[row, span] = row_ids
            mask[row, span] = 1
        return ids, mask


def length_groups(lengths: Sequence[int], call_tokens: int) -> list[list[int]]:
    """The rows of a batch of texts split into groups of similar length, so that a short text
    does not pay for the longest one: each group runs padded to its own longest.

    A group costs about ``call_tokens`` (one more graph call) plus its rows times its longest
    length, in token positions; the split is the cheapest one over the rows sorted by length
    (dynamic programming over where to cut). Returns the groups as row indices.
    """
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    sorted_lengths = [lengths[row] for row in order]
    count = len(order)
    best = [0.0] + [float("inf")] * count  # best[j]: cheapest split of the first j rows
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        for start in range(end):
            cost = best[start] + call_tokens + (end - start) * sorted_lengths[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups = []
    end = count
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


class SiglipPieces:
    """SigLIP's tokenizer (transformers' ``SiglipTokenizer``) on its SentencePiece model.

    As the reference does it: special tokens in the text (``</s>``, ``<unk>``, ...) are split
    out first and kept; every other span is lower-cased (``do_lower_case``), stripped of
    ASCII punctuation, its whitespace collapsed and trimmed, then cut into pieces; ``</s>``
    is appended unless the text already ends with it; truncation keeps room for it.
    """

    def __init__(self, model_file: Path, *, max_length: int) -> None:
        import sentencepiece

        self.model = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        config_file = model_file.parent / TOKENIZER_CONFIG_FILE
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.lower = bool(config.get("do_lower_case", True))
        self.unk = str(config.get("unk_token", "<unk>"))
        self.eos_id = self.model.piece_to_id(str(config.get("eos_token", "</s>")))
        self.max_length = max_length
        added = config.get("added_tokens_decoder", {})
        self.special = {
            str(entry["content"]): (
                int(index),
                bool(entry.get("lstrip")),
                bool(entry.get("rstrip")),
            )
            for index, entry in added.items()
        }
        for name in ("eos_token", "unk_token", "pad_token"):
            token = config.get(name)
            if isinstance(token, str) and token not in self.special:
                self.special[token] = (self.model.piece_to_id(token), False, False)
        # Longest first: the reference's trie takes the longest special token at a position.
        self._split = (
            re.compile("(" + "|".join(map(re.escape, sorted(self.special, key=len)[::-1])) + ")")
            if self.special
            else None
        )
        self._unk_pieces = len(self.model.encode(self.unk, out_type=str))
        self._punctuation = str.maketrans("", "", string.punctuation)

    def _canonical(self, text: str) -> str:
        if self.lower:
            text = text.lower()
        text = text.translate(self._punctuation)
        return re.sub(r"\s+", " ", text).strip()

    def _pieces(self, text: str) -> list[int]:
        text = self._canonical(text)
        pieces = self.model.encode(self.unk + text, out_type=str)
        pieces = pieces[self._unk_pieces :] if len(pieces) >= self._unk_pieces else pieces
        return [self.model.piece_to_id(piece) for piece in pieces]

    def encode(self, text: str) -> list[int]:
        text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        chunks = self._split.split(text) if self._split else [text]
        for index, chunk in enumerate(chunks):
            if chunk in self.special:
                _, lstrip, rstrip = self.special[chunk]
                if rstrip and index + 1 < len(chunks):
                    chunks[index + 1] = chunks[index + 1].lstrip()
                if lstrip and index > 0:
                    chunks[index - 1] = chunks[index - 1].rstrip()
        tokens: list[tuple[str, int]] = []  # (piece or special token, id)
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self.special:
                tokens.append((chunk, self.special[chunk][0]))
            else:
                ids = self._pieces(chunk)
                tokens += [(self.model.id_to_piece(i), i) for i in ids]
        if len(tokens) > 1 and tokens[0][0] == SPIECE_UNDERLINE and tokens[1][0] in self.special:
            tokens = tokens[1:]
        ids = [i for _, i in tokens][: self.max_length - 1]
        return ids if ids and ids[-1] == self.eos_id else [*ids, self.eos_id]
