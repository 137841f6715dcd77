"""Export checkpoints to parity-checked, optimized ONNX graphs."""

from collections.abc import Callable
from typing import Any

from vlpserve.contract import Family
from vlpserve.export.blip import export_blip
from vlpserve.export.clip import export_clip
from vlpserve.export.common import ExportOptions, Precision, ProgressFn, read_report
from vlpserve.export.groupvit import export_groupvit

EXPORTERS: dict[Family, Callable[..., dict[str, Any]]] = {
    Family.CLIP: export_clip,
    Family.GROUPVIT: export_groupvit,
    Family.BLIP: export_blip,
}


def export(family: Family | str, options: ExportOptions, progress: ProgressFn | None = None) -> Any:
    """Export a checkpoint of ``family`` (``"clip"``, ``"groupvit"``, ``"blip"``); returns
    the report."""
    exporter = EXPORTERS[Family(family)]
    return exporter(options, progress) if progress else exporter(options)


__all__ = [
    "EXPORTERS",
    "ExportOptions",
    "Precision",
    "export",
    "export_blip",
    "export_clip",
    "export_groupvit",
    "read_report",
]
