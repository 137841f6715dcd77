"""The serving contract: model names, tensor names and element types the server exposes.

The repository builder, the validator and the client all import this module, so a name is
written once. Shapes are not here: they are read from the exported graphs.

Every family has two levels:

* tensor level: the exported graphs (``<family>_text_encoder``, ``<family>_image_encoder``);
* raw level: text as BYTES and encoded images as BYTES (``<family>_text``, ``<family>_image``),
  served as ensembles over Python-backend pre-processing models (``<family>_text`` in the
  ``python`` runtime: one model that tokenizes and runs the graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Family(StrEnum):
    """Model families vlpserve exports and serves."""

    CLIP = "clip"
    GROUPVIT = "groupvit"
    BLIP = "blip"
    SIGLIP = "siglip"  # SigLIP and SigLIP 2 (FixRes checkpoints: the same architecture)


# Tensor names shared by every family.
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
PIXEL_VALUES = "pixel_values"
TEXT_EMBEDS = "text_embeds"
IMAGE_EMBEDS = "image_embeds"
GROUP_EMBEDS = "group_embeds"
GROUPING = "grouping"
TEXT = "TEXT"
IMAGE = "IMAGE"
LABELS = "LABELS"
LABEL_MAP = "label_map"
SCORES = "scores"
FRACTIONS = "fractions"
TOKEN_COUNT = "TOKEN_COUNT"  # tokens of each text, as the served tokenizer counts them

# The encoded images the raw models take. What users upload: phone photos (JPEG; HEIC, an
# iPhone's default; AVIF), screenshots (PNG), web images. PIL knows some 40 formats (TIFF,
# ICO, PPM, TGA, SGI, DDS, JPEG 2000; EPS runs Ghostscript), each a decoder an attacker may
# aim at. PIL's names, comma-separated. HEIF is pillow-heif's (libheif; [runtime] installs
# it), AVIF Pillow's own (11.3+ wheels, libavif).
IMAGE_FORMATS = "JPEG,PNG,WEBP,GIF,BMP,HEIF,AVIF"
# How JPEGs are decoded: "exact", in full, bit-equal to the Hugging Face processor; "fast",
# at the smallest of libjpeg's 1/2, 1/4, 1/8 DCT scales that leaves twice the model's input
# (runtime.images), parity-gated (tests/model_repository/test_photos.py).
DECODE = ("exact", "fast")

# BLIP graphs.
LOGITS = "logits"
POSITION_IDS = "position_ids"
ENCODER_HIDDEN_STATES = "encoder_hidden_states"
ENCODER_ATTENTION_MASK = "encoder_attention_mask"
IMAGE_FEAT = "image_feat"
TEXT_FEAT = "text_feat"
ITM_LOGITS = "itm_logits"
QUESTION_EMBEDS = "question_embeds"


class BlipKind(StrEnum):
    """The three BLIP checkpoint kinds."""

    CAPTION = "caption"
    ITM = "itm"
    VQA = "vqa"


def cache_names(layers: int) -> tuple[list[str], list[str]]:
    """Decoder cache tensor names: self-attention (past.i.key/value), cross (cross.i.key/value).

    The first decoder step outputs ``present.i.*`` and ``cross.i.*``; the step graph takes
    ``past.i.*`` and ``cross.i.*`` and outputs ``present.i.*``.
    """
    own = [f"past.{i}.{part}" for i in range(layers) for part in ("key", "value")]
    cross = [f"cross.{i}.{part}" for i in range(layers) for part in ("key", "value")]
    return own, cross


# Model-config parameter carrying exp(logit_scale), the temperature of zero-shot classification.
PARAM_LOGIT_SCALE = "logit_scale"
# ... and SigLIP's logit_bias: its probabilities are sigmoid(logit_scale * cos + logit_bias).
PARAM_LOGIT_BIAS = "logit_bias"


@dataclass(frozen=True)
class Tensor:
    """A named tensor and its numpy element type ("object" for BYTES)."""

    name: str
    dtype: str


@dataclass(frozen=True)
class ModelContract:
    """The public face of one served model."""

    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


# Element types token ids may have: int64, or int32 for graphs exported for TensorRT.
IDS_DTYPES = ("int64", "int32")
# A segmentation's label map on the wire: the smallest type that holds the label count
# (repo build --max-labels); the client hands users int32 whatever came.
LABEL_MAP_DTYPES = ("uint8", "uint16")


def label_map_dtype(max_labels: int) -> str:
    """The label map's element type for up to ``max_labels`` labels."""
    if not 1 <= max_labels <= 65_536:
        raise ValueError(f"max_labels must be in 1..65536, got {max_labels}")
    return "uint8" if max_labels <= 256 else "uint16"


@dataclass(frozen=True)
class EmbeddingModels:
    """The models of a dual-encoder family (CLIP-like): encoders, pre-processing, raw level.
    ``ids_dtype``: the text graph's token id type (the export report's ``ids_dtype``);
    ``label_map_dtype``: GroupViT's label map on the wire (``label_map_dtype(max_labels)``)."""

    family: Family
    ids_dtype: str = "int64"
    label_map_dtype: str = "uint8"

    def __post_init__(self) -> None:
        if self.ids_dtype not in IDS_DTYPES:
            raise ValueError(f"token ids are one of {IDS_DTYPES}, got {self.ids_dtype!r}")
        if self.label_map_dtype not in LABEL_MAP_DTYPES:
            raise ValueError(f"label maps are one of {LABEL_MAP_DTYPES}")

    @property
    def text_encoder(self) -> ModelContract:
        return ModelContract(
            f"{self.family.value}_text_encoder",
            (Tensor(INPUT_IDS, self.ids_dtype), Tensor(ATTENTION_MASK, "int64")),
            (Tensor(TEXT_EMBEDS, "float32"),),
        )

    @property
    def image_encoder(self) -> ModelContract:
        outputs: tuple[Tensor, ...] = (Tensor(IMAGE_EMBEDS, "float32"),)
        if self.family is Family.GROUPVIT:
            outputs += (Tensor(GROUP_EMBEDS, "float32"), Tensor(GROUPING, "float32"))
        return ModelContract(
            f"{self.family.value}_image_encoder", (Tensor(PIXEL_VALUES, "float32"),), outputs
        )

    @property
    def tokenizer(self) -> ModelContract:
        return ModelContract(
            f"{self.family.value}_tokenizer",
            (Tensor(TEXT, "object"),),
            (
                Tensor(INPUT_IDS, self.ids_dtype),
                Tensor(ATTENTION_MASK, "int64"),
                Tensor(TOKEN_COUNT, "int32"),
            ),
        )

    @property
    def image_preprocessor(self) -> ModelContract:
        return ModelContract(
            f"{self.family.value}_image_preprocessor",
            (Tensor(IMAGE, "object"),),
            (Tensor(PIXEL_VALUES, "float32"),),
        )

    @property
    def text(self) -> ModelContract:
        return ModelContract(
            f"{self.family.value}_text",
            (Tensor(TEXT, "object"),),
            (Tensor(TEXT_EMBEDS, "float32"), Tensor(TOKEN_COUNT, "int32")),
        )

    @property
    def image(self) -> ModelContract:
        return ModelContract(
            f"{self.family.value}_image",
            (Tensor(IMAGE, "object"),),
            (Tensor(IMAGE_EMBEDS, "float32"),),
        )

    @property
    def segment(self) -> ModelContract:
        """GroupViT only: an encoded image and label texts -> label map at the image's size."""
        return ModelContract(
            f"{self.family.value}_segment",
            (Tensor(IMAGE, "object"), Tensor(LABELS, "object")),
            (
                Tensor(LABEL_MAP, self.label_map_dtype),
                Tensor(SCORES, "float32"),
                Tensor(FRACTIONS, "float32"),
            ),
        )

    def all(self) -> tuple[ModelContract, ...]:
        models = (
            self.text_encoder,
            self.image_encoder,
            self.tokenizer,
            self.image_preprocessor,
            self.text,
            self.image,
        )
        return models + ((self.segment,) if self.family is Family.GROUPVIT else ())


DUAL_ENCODERS = (Family.CLIP, Family.GROUPVIT, Family.SIGLIP)


def embedding_models(
    family: Family | str, ids_dtype: str = "int64", label_map_dtype: str = "uint8"
) -> EmbeddingModels:
    """Contract of a dual-encoder family by name (``"clip"``, ``"groupvit"``)."""
    family = Family(family)
    if family not in DUAL_ENCODERS:
        raise ValueError(f"{family.value} is not a dual-encoder family")
    return EmbeddingModels(family, ids_dtype, label_map_dtype)


# BLIP raw-level tensors.
PROMPT = "PROMPT"
QUESTION = "QUESTION"
MAX_NEW_TOKENS = "MAX_NEW_TOKENS"
NUM_BEAMS = "NUM_BEAMS"
REPETITION_PENALTY = "REPETITION_PENALTY"
STREAM = "STREAM"
ITM_SCORE = "ITM_SCORE"
ITC_SCORE = "ITC_SCORE"

# Stream (decoupled) errors reach gRPC clients as text without a status code: the server
# starts invalid-input messages with this, after "[request id: <id>] ".
STREAM_INVALID_INPUT = "invalid input: "
# ... and refusals of an overloaded or stopping generation model with these.
STREAM_OVERLOADED = "overloaded: "
STREAM_STOPPING = "stopping: "

BLIP_GRAPHS: dict[str, tuple[str, ...]] = {
    "caption": ("vision_encoder", "decoder_first", "decoder_step"),
    "itm": ("vision_encoder", "itm_head", "text_feat"),
    "vqa": ("vision_encoder", "question_encoder", "decoder_first", "decoder_step"),
}


@dataclass(frozen=True)
class BlipModels:
    """The models of one BLIP checkpoint kind: its graphs and one raw-level model."""

    kind: str

    def graph(self, name: str) -> str:
        """Tensor-level model name of a graph, e.g. ``blip_caption_decoder_step``."""
        return f"blip_{self.kind}_{name}"

    @property
    def graphs(self) -> tuple[str, ...]:
        return BLIP_GRAPHS[self.kind]

    @property
    def raw(self) -> ModelContract:
        name = f"blip_{self.kind}"
        if self.kind == "itm":
            return ModelContract(
                name,
                (Tensor(IMAGE, "object"), Tensor(TEXT, "object")),
                (Tensor(ITM_SCORE, "float32"), Tensor(ITC_SCORE, "float32")),
            )
        text = PROMPT if self.kind == "caption" else QUESTION
        return ModelContract(
            name,
            (
                Tensor(IMAGE, "object"),
                Tensor(text, "object"),
                Tensor(MAX_NEW_TOKENS, "int32"),
                Tensor(NUM_BEAMS, "int32"),
                Tensor(REPETITION_PENALTY, "float32"),
                Tensor(STREAM, "bool"),
            ),
            (Tensor(TEXT, "object"),),
        )


def blip_models(kind: str) -> BlipModels:
    """Contract of a BLIP checkpoint kind (``"caption"``, ``"itm"``, ``"vqa"``)."""
    if kind not in BLIP_GRAPHS:
        raise ValueError(f"BLIP kind must be one of {sorted(BLIP_GRAPHS)}, got {kind!r}")
    return BlipModels(kind)
