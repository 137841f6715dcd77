"""Export checkpoints to parity-checked, optimized ONNX graphs."""

from vlpserve.export.clip import export_clip
from vlpserve.export.common import ExportOptions, Precision, read_report

__all__ = ["ExportOptions", "Precision", "export_clip", "read_report"]
