"""Export checkpoints to parity-checked, optimized ONNX graphs."""

from collections.abc import Callable

from vlpserve.contract import Family
from vlpserve.export.blip import export_blip
from vlpserve.export.clip import export_clip
from vlpserve.export.common import ExportOptions, Precision, Target
from vlpserve.export.groupvit import export_groupvit
from vlpserve.export.report import ExportReport, GraphReport
from vlpserve.export.siglip import export_siglip
from vlpserve.progress import ProgressFn, no_progress

EXPORTERS: dict[Family, Callable[[ExportOptions, ProgressFn], ExportReport]] = {
    Family.CLIP: export_clip,
    Family.GROUPVIT: export_groupvit,
    Family.BLIP: export_blip,
    Family.SIGLIP: export_siglip,
}


def export(
    family: Family | str, options: ExportOptions, progress: ProgressFn = no_progress
) -> ExportReport:
    """Export a checkpoint of ``family`` (``"clip"``, ``"groupvit"``, ``"blip"``,
    ``"siglip"``); returns the report, also written into the export folder."""
    return EXPORTERS[Family(family)](options, progress)


__all__ = [
    "EXPORTERS",
    "ExportOptions",
    "ExportReport",
    "GraphReport",
    "Precision",
    "Target",
    "export",
    "export_blip",
    "export_clip",
    "export_groupvit",
    "export_siglip",
]
