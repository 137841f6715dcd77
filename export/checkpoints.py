"""Seeded checkpoints built from configs, for tests, demos and benchmarks where the hub is out
of reach.

They are written with ``save_pretrained`` into a folder, so the export then takes exactly the
``from_pretrained`` path a user's hub id takes. Full-size architectures with random weights
cost what the real ones cost, which is what benchmarks need.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any

from vlpserve.export.samples import clip_bpe_path

logger = logging.getLogger(__name__)

CLIP_BASE_HUB_ID = "openai/clip-vit-base-patch32"
GROUPVIT_BASE_HUB_ID = "nvidia/groupvit-gcc-yfcc"


class Size(StrEnum):
    """Architecture size of a seeded checkpoint."""

    TINY = "tiny"
    BASE = "base"


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-level alphabet: printable bytes map to themselves, the rest above 255.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def write_clip_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """Write CLIP's vocab.json and merges.txt derived from the open-clip BPE file.

    The vocabulary is built as open_clip's SimpleTokenizer builds it: 256 byte symbols, the
    same with the end-of-word marker, one entry per merge, then the two special tokens, for
    49,408 entries in all.
    """
    lines = gzip.decompress(clip_bpe_path().read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.json"
    merges_file = folder / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_file, merges_file


def clip_tokenizer(work_dir: Path):  # -> CLIPTokenizerFast
    """Hugging Face CLIPTokenizerFast with the real 49,408-token vocabulary.

    Loaded from the files with ``from_pretrained``, as a hub checkpoint's are: transformers
    5 ignores the ``vocab_file`` / ``merges_file`` arguments of the constructor (seen here:
    a tokenizer of 2 tokens that mapped every word to one id).
    """
    from transformers import CLIPTokenizerFast

    write_clip_tokenizer_files(work_dir)
    return CLIPTokenizerFast.from_pretrained(
        work_dir,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=77,
    )


def _save_clip_preprocessing(out: Path) -> None:
    """CLIP's tokenizer and image processor beside a checkpoint (CLIP and GroupViT use them)."""
    from transformers import CLIPImageProcessor

    with tempfile.TemporaryDirectory() as bpe_dir:
        clip_tokenizer(Path(bpe_dir)).save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(out)


_TEXT = {"vocab_size": 49408, "max_position_embeddings": 77}
_TEXT |= {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
_TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
_TINY_TEXT |= {"num_attention_heads": 2}


def build_clip(out_dir: Path | str, *, size: Size | str = Size.TINY, seed: int = 0) -> Path:
    """Save a seeded CLIPModel with tokenizer and image processor into ``out_dir``.

    ``size="base"`` is the ViT-B/32 architecture of openai/clip-vit-base-patch32.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    out = Path(out_dir)
    text = dict(_TEXT)
    vision: dict[str, int] = {"image_size": 224, "patch_size": 32}
    projection_dim = 512
    if Size(size) is Size.TINY:
        text |= _TINY_TEXT
        vision |= _TINY_TEXT
        projection_dim = 16
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(out)
    _save_clip_preprocessing(out)
    logger.info("seeded %s CLIP (seed %d) saved to %s", Size(size).value, seed, out)
    return out


def build_groupvit(out_dir: Path | str, *, size: Size | str = Size.TINY, seed: int = 0) -> Path:
    """Save a seeded GroupViTModel with CLIP's tokenizer and image processor into ``out_dir``.

    ``size="base"`` is the architecture of nvidia/groupvit-gcc-yfcc (GroupViTConfig's
    defaults: ViT-S/16 with 64 then 8 group tokens).
    """
    import torch
    from transformers import GroupViTConfig, GroupViTModel

    out = Path(out_dir)
    text: dict[str, object] = dict(_TEXT)
    vision: dict[str, object] = {}
    projection: dict[str, int] = {}
    if Size(size) is Size.TINY:
        text |= _TINY_TEXT
        vision = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "depths": [1, 1, 1],
            "num_hidden_layers": 3,
            "num_group_tokens": [8, 4, 0],
            "num_output_groups": [8, 4, 4],
            "num_attention_heads": 2,
        }
        projection = {"projection_dim": 16, "projection_intermediate_dim": 64}
    config = GroupViTConfig(text_config=text, vision_config=vision, **projection)
    torch.manual_seed(seed)
    model = GroupViTModel(config).eval()
    # With the default initialisation every group token looks alike, every patch joins the
    # same group and every pixel gets one label: a segmentation test would prove nothing.
    # Trained group tokens differ; draw them (and the assignment weights) wider. So are
    # trained token embeddings: at the default 0.02 the labels' text embeddings barely
    # differ, and with transformers 5's initialisation 4 labels over the 4 sample photos
    # gave one label per map on all of them; at 1.0, 2 to 4 photos of 4 get several labels
    # under 4.54 and 5.x alike (seeds 0-3, both label sets of tests/client/test_groupvit.py).
    with torch.no_grad():
        for stage in model.vision_model.encoder.stages:
            if getattr(stage, "group_token", None) is not None:
                stage.group_token.normal_(std=3.0)
        for name, parameter in model.vision_model.named_parameters():
            if "assign" in name and parameter.dim() > 1:
                parameter.normal_(std=0.9)
        model.text_model.embeddings.token_embedding.weight.normal_(std=1.0)
    model.save_pretrained(out)
    _save_clip_preprocessing(out)
    logger.info("seeded %s GroupViT (seed %d) saved to %s", Size(size).value, seed, out)
    return out


BLIP_BASE_HUB_IDS = {
    "caption": "Salesforce/blip-image-captioning-base",
    "itm": "Salesforce/blip-itm-base-coco",
    "vqa": "Salesforce/blip-vqa-base",
}


def blip_tokenizer():  # -> BertTokenizerFast
    """BLIP's tokenizer: BERT uncased WordPiece (30,522) plus [DEC] (bos) and [ENC]."""
    import shutil

    from transformers import BertTokenizerFast

    from vlpserve.export.samples import bert_vocab_path

    # From the file with from_pretrained, as clip_tokenizer (transformers 5 ignores vocab_file).
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(bert_vocab_path(), Path(folder) / "vocab.txt")
        tokenizer = BertTokenizerFast.from_pretrained(folder, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.model_max_length = 512
    return tokenizer


def _widen_image_paths(model: Any, *, gain: float) -> None:
    """Draw the vision encoder's and every cross-attention's weight matrices with a
    standard deviation of ``gain / sqrt(fan_in)``.

    With the default initialisation (0.02 everywhere) the text side drowns what the image
    contributes: captions came out the same for every photo, VQA answers the same for every
    photo and question, ITM scores equal to 1e-7, so no test could see an image mixed up.
    Trained checkpoints listen to the image; these seeded ones must too. The gains were
    chosen so that captions differ across the sample photos and answers across both photos
    and questions, at both sizes (tests/export/test_checkpoints.py checks it).
    """
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() < 2 or "embedding" in name:
                continue
            if "crossattention" in name or name.startswith("vision_model."):
                parameter.normal_(std=gain / math.sqrt(parameter[0].numel()))


def build_blip(
    out_dir: Path | str, *, kind: str = "caption", size: Size | str = Size.TINY, seed: int = 0
) -> Path:
    """Save a seeded BLIP checkpoint of ``kind`` (caption, itm, vqa) with its BlipProcessor.

    ``size="base"`` is the architecture of the Salesforce BLIP base checkpoints (ViT-B/16 at
    384 pixels, BERT-base text).
    """
    import torch
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipForImageTextRetrieval,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
    )

    classes = {
        "caption": BlipForConditionalGeneration,
        "itm": BlipForImageTextRetrieval,
        "vqa": BlipForQuestionAnswering,
    }
    if kind not in classes:
        raise ValueError(f"kind must be one of {sorted(classes)}, got {kind!r}")
    out = Path(out_dir)
    text: dict[str, object] = {"vocab_size": 30524}
    # BlipVisionConfig initialises with a standard deviation of 1e-10: every image then
    # gives the same vision states. 0.02 is ViT's.
    vision: dict[str, object] = {"image_size": 384, "patch_size": 16, "initializer_range": 0.02}
    extra: dict[str, int] = {}
    if Size(size) is Size.TINY:
        small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
        small |= {"num_attention_heads": 2}
        text |= small | {"encoder_hidden_size": 32}
        vision |= small
        extra = {"image_text_hidden_size": 16}
    config = BlipConfig(text_config=text, vision_config=vision, **extra)
    torch.manual_seed(seed)
    model = classes[kind](config).eval()
    _widen_image_paths(model, gain=1.0 if Size(size) is Size.TINY else 0.5)
    model.save_pretrained(out)
    processor = BlipProcessor(
        BlipImageProcessor(size={"height": 384, "width": 384}), blip_tokenizer()
    )
    processor.save_pretrained(out)
    logger.info("seeded %s BLIP %s (seed %d) saved to %s", Size(size).value, kind, seed, out)
    return out
