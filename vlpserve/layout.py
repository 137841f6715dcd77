"""Files on disk that more than one package reads: the export folder and a model's folder.

The export writes an export folder, the repository builder reads it and writes each model's
version folder, and the Python-backend models read that. Every file name is spelled here.

    <export>/export_report.json          ExportFolder.report
    <export>/<graph>/model.onnx          ExportFolder.graph(graph)
    <export>/tokenizer/tokenizer.json    ExportFolder.tokenizer
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
        """The folder of the checkpoint's fast tokenizer."""
        return self.root / TOKENIZER_DIR

    @property
    def tokenizer_file(self) -> Path:
        return self.tokenizer / TOKENIZER_FILE


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
