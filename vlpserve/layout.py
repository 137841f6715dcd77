"""Files on disk that more than one package reads: the export folder and a model's folder.

The export writes an export folder, the repository builder reads it and writes each model's
version folder, and the Python-backend models read that. Every file name is spelled here.

    <export>/export_report.json          ExportFolder.report
    <export>/<graph>/model.onnx          ExportFolder.graph(graph)
    <export>/tokenizer/tokenizer.json    ExportFolder.tokenizer (or spiece.model: SigLIP's)
    <export>/preprocessor/preprocessor_config.json

    <repository>/<model>/config.pbtxt
    <repository>/<model>/1/model.onnx    ModelFolder.graph()         one graph per model
    <repository>/<model>/1/<graph>.onnx  ModelFolder.graph(graph)    BLIP's raw models
    <repository>/<model>/1/tokenizer/, preprocessor_config.json, model.py
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPORT_FILE = "export_report.json"
GRAPH_FILE = "model.onnx"
PLAIN_GRAPH_FILE = "model.plain.onnx"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "spiece.model"  # SigLIP's tokenizer has no tokenizer.json
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
PREPROCESSOR_DIR = "preprocessor"
PREPROCESSOR_FILE = "preprocessor_config.json"
CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.py"
ENGINE_CACHE = "tensorrt_cache"  # ONNX Runtime TensorRT engines, built on first load
VERSION = "1"


@dataclass(frozen=True)
class _Folder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def tokenizer(self) -> Path:
        """The folder of the checkpoint's tokenizer."""
        return self.root / TOKENIZER_DIR

    @property
    def tokenizer_file(self) -> Path:
        return self.tokenizer / TOKENIZER_FILE

    @property
    def sentencepiece_file(self) -> Path:
        return self.tokenizer / SENTENCEPIECE_FILE

    @property
    def tokenizer_config(self) -> Path:
        return self.tokenizer / TOKENIZER_CONFIG_FILE

    @property
    def has_tokenizer(self) -> bool:
        """A tokenizer the server can run: a tokenizer.json, or SigLIP's SentencePiece model."""
        return self.tokenizer_file.is_file() or self.sentencepiece_file.is_file()


@dataclass(frozen=True)
class ExportFolder(_Folder):
    """Where ``vlpserve export`` puts each file."""

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    def graph(self, name: str) -> Path:
        return self.root / name / GRAPH_FILE

    def plain_graph(self, name: str) -> Path:
        """The graph before ONNX Runtime's fusions (``--keep-plain``)."""
        return self.root / name / PLAIN_GRAPH_FILE

    @property
    def preprocessor(self) -> Path:
        """The folder of the checkpoint's image processor."""
        return self.root / PREPROCESSOR_DIR

    @property
    def preprocessor_file(self) -> Path:
        return self.preprocessor / PREPROCESSOR_FILE


@dataclass(frozen=True)
class ModelFolder(_Folder):
    """The version folder of one model in a repository (``<repository>/<model>/1``)."""

    @classmethod
    def of(cls, repository: Path, model: str) -> ModelFolder:
        return cls(Path(repository) / model / VERSION)

    def graph(self, name: str | None = None) -> Path:
        """``model.onnx``, or ``<name>.onnx`` for a model that runs several graphs."""
        return self.root / (f"{name}.onnx" if name else GRAPH_FILE)

    @property
    def preprocessor_file(self) -> Path:
        return self.root / PREPROCESSOR_FILE

    @property
    def engine_cache(self) -> Path:
        """Where ONNX Runtime's TensorRT provider keeps its engines and timing cache."""
        return self.root / ENGINE_CACHE

    @property
    def model_file(self) -> Path:
        return self.root / MODEL_FILE
