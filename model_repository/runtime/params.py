"""Each Python-backend model's parameters: one definition with its defaults.

The repository builder writes them into config.pbtxt (``to_config``); the model reads them
back in ``initialize`` (``from_config``). Both sides use these classes, so a name, a type or
a default is written once. Values travel as config.pbtxt strings: numbers as text, booleans
as "1"/"0", mappings as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vlpserve.contract import DECODE, IMAGE_FORMATS

P = TypeVar("P", bound="ModelParams")


def _encode(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _decode(kind: Any, text: str) -> object:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if kind is bool:
        if text not in ("0", "1"):
            raise ValueError(f"expected 0 or 1, got {text!r}")
        return text == "1"
    if kind in (int, float, str):
        return kind(text)
    if typing.get_origin(kind) is dict:
        return dict(json.loads(text))
    raise TypeError(f"no config encoding for {kind}")


@dataclass(frozen=True, kw_only=True)
class ModelParams:
    """Base of every model's parameters: written to and read from config.pbtxt."""

    def to_config(self) -> dict[str, str]:
        """config.pbtxt ``parameters``: every field, defaults included (the file says all);
        a None is left out (read back, it is the default None again)."""
        return {
            f.name: _encode(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    @classmethod
    def from_config(cls: type[P], parameters: Mapping[str, str], model: str = "") -> P:
        """The parameters of a config; a missing one takes its default, or ValueError."""
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            text = parameters.get(spec.name)
            if text is None:
                continue  # the dataclass default, or a TypeError below for a required one
            try:
                values[spec.name] = _decode(hints[spec.name], text)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{model}: parameter {spec.name}={text!r}: {exc}") from exc
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"{model}: config.pbtxt lacks a parameter: {exc}") from exc


TRANSPARENT_TO = ("white", "ignore")
# Formats PIL opens only with a package beside it, and what to install.
FORMAT_PACKAGES = {
    "HEIF": "pillow-heif: pip install 'vlpserve[runtime]'",
    "AVIF": "Pillow 11.3 or later built with libavif",
}


def register_image_plugins() -> None:
    """Lets PIL open HEIF/HEIC through pillow-heif where it is installed (idempotent)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # InputLimits then names the extra when HEIF is asked for
        return
    register_heif_opener()


@dataclass(frozen=True, kw_only=True)
class InputLimits(ModelParams):
    """Bounds on what one request item may be, checked before any expensive work: an
    encoded image's bytes, its pixels (read from the image header, before decoding), its
    shortest side, a text's UTF-8 bytes. ``repo build`` options set them."""

    max_image_bytes: int = 20 * 2**20
    max_image_pixels: int = 40_000_000
    min_image_side: int = 8  # a 1x1 or 2x2 "image" is a mistake, not a photo
    max_text_bytes: int = 65_536  # longer texts are mistakes: they are truncated anyway
    image_formats: str = IMAGE_FORMATS  # the only decoders PIL may use
    # What transparent pixels become in RGB: "white", composited onto white as transformers
    # 5's image processors do; "ignore", the alpha dropped and the colour beneath kept, as
    # 4.x's did. repo build takes the convention of the transformers the export was made with.
    transparent_to: str = "white"
    decode: str = "exact"  # or "fast": JPEGs at a reduced DCT scale (DECODE)

    def __post_init__(self) -> None:
        if min(self.max_image_bytes, self.max_image_pixels, self.min_image_side) < 1:
            raise ValueError("image limits must be >= 1")
        if self.max_text_bytes < 1:
            raise ValueError("max_text_bytes must be >= 1")
        if self.transparent_to not in TRANSPARENT_TO:
            raise ValueError(f"transparent_to is one of {TRANSPARENT_TO}")
        if self.decode not in DECODE:
            raise ValueError(f"decode is one of {DECODE}")
        from PIL import Image

        register_image_plugins()
        Image.init()
        for name, needs in FORMAT_PACKAGES.items():
            if name in self.formats and name not in Image.OPEN:
                raise ValueError(
                    f"image format {name} needs {needs} (or leave {name} out of the image formats)"
                )
        unknown = [f for f in self.formats if f not in Image.OPEN]
        if not self.formats or unknown:
            known = ", ".join(sorted(Image.OPEN))
            raise ValueError(f"image formats {unknown or '(none)'}: PIL knows {known}")

    @property
    def formats(self) -> tuple[str, ...]:
        """``image_formats`` as PIL's format names."""
        return tuple(f.strip().upper() for f in self.image_formats.split(",") if f.strip())

    @property
    def limits(self) -> InputLimits:
        """Just the limits (of a model's parameters that include them)."""
        return InputLimits(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(InputLimits)}
        )


@dataclass(frozen=True, kw_only=True)
class SessionParams(ModelParams):
    """How a model's ONNX Runtime sessions run (see vlpserve.ort)."""

    intra_op_threads: int = 0  # 0: ORT's default
    intra_op_spinning: bool = True
    # On GPU: ONNX Runtime's TensorRT provider options (fp16, workspace, profile shapes);
    # empty: the CUDA provider alone. The engines are cached in the model's folder.
    tensorrt: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class FamilyParams(ModelParams):
    """What every model of a dual-encoder family carries: exp(logit_scale), and SigLIP's
    logit_bias, so that zero-shot classification needs no other call."""

    logit_scale: float
    logit_bias: float | None = None


@dataclass(frozen=True, kw_only=True)
class GraphParams(SessionParams):
    """A model serving one exported graph (``onnx_model``). ``pad_values``: inputs the
    model pads to the longest of a batch (ragged token inputs), with their pad value."""

    logit_scale: float | None = None  # BLIP graphs have none
    logit_bias: float | None = None
    pad_values: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TokenizerParams(FamilyParams, InputLimits):
    """``<family>_tokenizer``: truncation (with special tokens), the pad id, and the token
    ids' element type (the text graph's: int32 in a TensorRT export); ``pad_to``: the length
    every text is padded to (SigLIP's 64, as trained; 0: the longest of a batch), on
    ``padding_side`` (the checkpoint's tokenizer's)."""

    max_length: int
    pad_token_id: int
    ids_dtype: str = "int64"
    pad_to: int = 0
    padding_side: str = "right"


@dataclass(frozen=True, kw_only=True)
class TextParams(TokenizerParams, SessionParams):
    """``<family>_text`` of the python runtime: the tokenizer and the text graph, which runs a
    batch in groups of similar length when that saves work (runtime.text.length_groups):
    ``length_group_tokens`` is what one more graph call costs, in token positions (0: one
    call, padded to the longest)."""

    length_group_tokens: int = 16


@dataclass(frozen=True, kw_only=True)
class ImageParams(FamilyParams, InputLimits):
    """``<family>_image_preprocessor``: decode threads (0: one per core); ``on_device``:
    resize, crop and normalise on the instance's device (``repo build --preprocess device``)
    rather than on the decode threads."""

    decode_threads: int = 0
    on_device: bool = False


@dataclass(frozen=True, kw_only=True)
class SegmentParams(ImageParams):
    """``<family>_segment``: the models it calls and the labels it takes."""

    text_model: str
    image_model: str
    encoder_max_batch_size: int
    max_labels: int


@dataclass(frozen=True, kw_only=True)
class BlipParams(SessionParams, InputLimits):
    """BLIP's raw models (``blip_itm``): the checkpoint's kind, token ids and positions;
    ``on_device`` as ImageParams'."""

    kind: str
    bos_token_id: int
    sep_token_id: int
    max_text_length: int
    on_device: bool = False


@dataclass(frozen=True, kw_only=True)
class BlipGenerateParams(BlipParams):
    """``blip_caption`` and ``blip_vqa``: how the generation engine runs. The vision encoder
    (admission threads) and the decoder (engine thread) run at the same time in one process,
    each with its own intra-op pool: spinning threads of one would take the cores the other
    works on, so they do not spin by default."""

    intra_op_spinning: bool = False
    max_batch_rows: int = 64  # decoder rows decoded together
    admission_threads: int = 2  # image decoding and encoders of arriving requests
    # Requests admitted or waiting at once; beyond, a request is refused as overloaded
    # at once (it would only wait, and then miss its deadline).
    max_pending: int = 256
