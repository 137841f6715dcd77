"""Deployments by checkpoint name, as ``vlpserve demo`` and ``vlpserve bench`` make them:
the checkpoint (the hub's, or the same architecture with seeded weights where the hub is out
of reach), its export (reused when current) and one repository holding them all."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from vlpserve.contract import Family
from vlpserve.errors import ConfigError
from vlpserve.export.checkpoints import (
    BLIP_BASE_HUB_IDS,
    CLIP_BASE_HUB_ID,
    GROUPVIT_BASE_HUB_ID,
    Size,
    build_blip,
    build_clip,
    build_groupvit,
)
from vlpserve.export.common import ExportOptions, Precision
from vlpserve.export.report import ExportReport
from vlpserve.export.siglip_checkpoints import SIGLIP_BASE_HUB_ID, build_siglip
from vlpserve.layout import ExportFolder
from vlpserve.model_repository.builder import RepositoryOptions, build_repository
from vlpserve.model_repository.config import Device, Preprocess
from vlpserve.model_repository.placement import Layout
from vlpserve.model_repository.runtime.params import InputLimits
from vlpserve.progress import progress

logger = logging.getLogger(__name__)

# name -> (family, hub id, seeded builder)
CHECKPOINTS: dict[str, tuple[Family, str, Callable[..., Path]]] = {
    "clip": (Family.CLIP, CLIP_BASE_HUB_ID, build_clip),
    "groupvit": (Family.GROUPVIT, GROUPVIT_BASE_HUB_ID, build_groupvit),
    "siglip": (Family.SIGLIP, SIGLIP_BASE_HUB_ID, build_siglip),
    **{
        f"blip-{kind}": (
            Family.BLIP,
            BLIP_BASE_HUB_IDS[kind],
            lambda out, kind=kind, **kw: build_blip(out, kind=kind, **kw),
        )
        for kind in ("caption", "itm", "vqa")
    },
}


def hub_reachable(repo_id: str, timeout_s: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers for ``repo_id`` right now."""
    try:
        from huggingface_hub import model_info

        model_info(repo_id, timeout=timeout_s)
    except Exception:  # offline, DNS failure, gated repo: all mean "not usable here"
        return False
    return True


def checkpoint(workdir: Path, name: str, size: Size = Size.BASE) -> str:
    """The hub id of checkpoint ``name`` when the hub answers (base size), else a folder
    with the same architecture and seeded random weights (built once)."""
    _, hub_id, builder = CHECKPOINTS[name]
    if size is Size.BASE and hub_reachable(hub_id):
        print(f"using {hub_id} from the Hugging Face hub")
        return hub_id
    folder = workdir / f"{hub_id.split('/')[-1]}-seeded-{size.value}"
    if size is Size.BASE:
        print(
            f"the Hugging Face hub is out of reach: using the {hub_id} architecture with "
            "SEEDED RANDOM WEIGHTS (costs are real, labels and scores are meaningless)"
        )
    if not (folder / "config.json").is_file():
        builder(folder, size=size, seed=0)
    return str(folder)


def exported(workdir: Path, name: str, source: str, precision: Precision) -> Path:
    """The export of ``source`` at ``precision`` in ``workdir``, made unless it is current."""
    family = CHECKPOINTS[name][0]
    suffix = "" if precision is Precision.FP32 else f"-{precision.value}"
    export_dir = workdir / f"export-{name}{suffix}"
    if ExportFolder(export_dir).report.is_file():
        report = ExportReport.read(export_dir)
        if report.source == source and report.precision == precision.value:
            print(f"reusing the export in {export_dir}")
            return export_dir
    from vlpserve.export import export

    with progress(f"export {family.value} ({precision.value})") as step:
        export(family, ExportOptions(model=source, out=export_dir, precision=precision), step)
    return export_dir


def prepare_repository(
    workdir: Path,
    names: tuple[str, ...],
    *,
    size: Size = Size.BASE,
    models: dict[str, str] | None = None,
    device: Device = Device.CPU,
    precision: Precision = Precision.FP32,
    encoder_instances: int | None = None,
    encoder_threads: int | None = None,
    preprocess: Preprocess = Preprocess.HOST,
    max_queue_delay_us: int | None = None,
    decode: str = "exact",
    layout: Layout | None = None,
) -> tuple[Path, dict[str, tuple[str, Path]]]:
    """Checkpoints (``models`` by name, else the hub's or seeded ones), their exports and
    one repository ``<workdir>/model_repository``, built afresh.

    Returns:
        The repository and, per checkpoint name, its source and export folder.
    """
    unknown = set(names) - set(CHECKPOINTS)
    if unknown:
        raise ConfigError(f"unknown checkpoints {sorted(unknown)}; known: {sorted(CHECKPOINTS)}")
    workdir.mkdir(parents=True, exist_ok=True)
    repo = workdir / "model_repository"
    # An output folder: built afresh, so the server loads only these checkpoints (models of
    # an earlier run would take memory and load time, and be served unasked).
    if repo.exists():
        shutil.rmtree(repo)
    deployed = {}
    for name in names:
        source = (models or {}).get(name) or checkpoint(workdir, name, size)
        export_dir = exported(workdir, name, source, Precision(precision))
        build_repository(
            RepositoryOptions(
                export_dir=export_dir,
                out=repo,
                device=device,
                encoder_instances=encoder_instances,
                encoder_threads=encoder_threads,
                preprocess=preprocess,
                max_queue_delay_us=max_queue_delay_us,
                layout=layout,
                limits=InputLimits(decode=decode),
            )
        )
        deployed[name] = (source, export_dir)
    return repo, deployed
