"""The seeded checkpoint's tokenizer is CLIP's real one, derived from the open-clip BPE file."""

from __future__ import annotations

from pathlib import Path

from vlpserve.export.checkpoints import clip_tokenizer


def test_vocabulary_is_clip_s(tmp_path: Path) -> None:
    tokenizer = clip_tokenizer(tmp_path)
    assert len(tokenizer) == 49408
    assert tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    # Known ids of the public CLIP vocabulary.
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_slow_and_fast_agree(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    fast = clip_tokenizer(tmp_path)
    slow = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    texts = ["Hello, World!", "naïve café ☕ déjà-vu", "   spaced   out  ", "x" * 300]
    for text in texts:
        assert fast(text)["input_ids"] == slow(text)["input_ids"], text


def test_blip_vocabulary_is_bert_s() -> None:
    """BERT uncased WordPiece plus [DEC] and [ENC], with the public vocabulary's ids."""
    from vlpserve.export.checkpoints import blip_tokenizer

    tokenizer = blip_tokenizer()
    assert len(tokenizer) == 30524 and tokenizer.bos_token_id == 30522
    assert tokenizer("A picture of a cat")["input_ids"] == [101, 1037, 3861, 1997, 1037, 4937, 102]
