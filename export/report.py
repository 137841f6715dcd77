"""The export report: what an export folder holds, written and read here only.

``ExportReport.write`` puts ``export_report.json`` beside the graphs; the repository builder,
the demo and the benchmarks read it back with ``ExportReport.read``, typed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlpserve.errors import ConfigError
from vlpserve.layout import PREPROCESSOR_DIR, TOKENIZER_DIR, ExportFolder


@dataclass(frozen=True, kw_only=True)
class GraphReport:
    """One exported graph: file, inputs and outputs (name, numpy dtype, shape with axis
    names for dynamic axes), precision, fusions and the parity figures of each check."""

    path: str  # relative to the export folder
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    opset: int
    size_bytes: int
    precision: str
    fusions: dict[str, int] = field(default_factory=dict)
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    plain_path: str | None = None
    target: str = "onnxruntime"  # or "tensorrt": standard operators, and a profile
    # TensorRT's optimization profile per input: {"min": shape, "opt": shape, "max": shape}.
    profile: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    @property
    def worst_cosine(self) -> float | None:
        return min((c["cosine_min"] for c in self.parity.values()), default=None)

    @property
    def worst_abs_diff(self) -> float | None:
        return max((c["max_abs_diff"] for c in self.parity.values()), default=None)


@dataclass(frozen=True, kw_only=True)
class ExportReport:
    """Everything later steps need to know about an export, and its provenance.

    Dual encoders (CLIP, GroupViT, SigLIP) set ``logit_scale`` and ``embedding_dim``
    (SigLIP also ``logit_bias``); BLIP sets ``kind``, ``bos_token_id``, ``sep_token_id`` and
    ``num_layers``. ``ids_dtype`` is the text graphs' token id type (int32 for TensorRT
    exports); ``text_padding`` how texts are padded: "longest" of a batch, or "max_length"
    (``max_text_length`` tokens, SigLIP's), on ``padding_side``.
    """

    family: str
    source: str  # hub id or folder the checkpoint came from
    precision: str
    opset: int
    max_text_length: int
    pad_token_id: int
    image_size: int
    graphs: dict[str, GraphReport]
    versions: dict[str, str]
    tokenizer: str = TOKENIZER_DIR
    preprocessor: str = PREPROCESSOR_DIR
    logit_scale: float | None = None
    embedding_dim: int | None = None
    kind: str | None = None
    ids_dtype: str = "int64"
    logit_bias: float | None = None
    text_padding: str = "longest"
    padding_side: str = "right"
    bos_token_id: int | None = None
    sep_token_id: int | None = None
    num_layers: int | None = None

    def tokenizer_options(self) -> dict[str, Any]:
        """How the served tokenizer (runtime.text.TextTokenizer) must run for this export."""
        return {
            "max_length": self.max_text_length,
            "pad_id": self.pad_token_id,
            "ids_dtype": self.ids_dtype,
            "pad_to": self.max_text_length if self.text_padding == "max_length" else 0,
            "padding_side": self.padding_side,
        }

    def required(self, name: str) -> Any:
        """A family-specific field, or ConfigError naming what the export lacks."""
        value = getattr(self, name)
        if value is None:
            raise ConfigError(f"the {self.family} export report has no {name}")
        return value

    def write(self, folder: Path | str) -> Path:
        path = ExportFolder(Path(folder)).report
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path | str) -> ExportReport:
        """The report of an export folder; ConfigError when it is not one."""
        path = ExportFolder(Path(folder)).report
        if not path.is_file():
            raise ConfigError(f"{folder} is not an export folder: {path.name} is missing")
        try:
            data = json.loads(path.read_text())
            names = {f.name for f in dataclasses.fields(cls)}
            graphs = {k: GraphReport(**v) for k, v in data.pop("graphs").items()}
            return cls(graphs=graphs, **{k: v for k, v in data.items() if k in names})
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{path} is not a report this vlpserve can read: {exc}") from exc
