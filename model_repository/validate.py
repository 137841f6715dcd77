"""Check a built model repository: every config parses, names and dtypes follow the serving
contract, encoder configs agree with their graphs, ensemble steps connect."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from vlpserve.contract import (
    BLIP_GRAPHS,
    DUAL_ENCODERS,
    IDS_DTYPES,
    INPUT_IDS,
    LABEL_MAP,
    LABEL_MAP_DTYPES,
    Family,
    ModelContract,
    blip_models,
    embedding_models,
)
from vlpserve.errors import RepositoryError
from vlpserve.export.common import graph_io
from vlpserve.layout import CONFIG_FILE, ModelFolder
from vlpserve.model_repository.config import numpy_dtype, read_config


@dataclass
class ValidationReport:
    """What validate_repository found: models checked per family, and the problems."""

    models: list[str] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _io(tensors: object) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {t.name: (numpy_dtype(t.data_type), tuple(t.dims)) for t in tensors}  # type: ignore[attr-defined]


def _check_contract(config: pb.ModelConfig, contract: ModelContract, problems: list[str]) -> None:
    for kind, declared, expected in (
        ("input", config.input, contract.inputs),
        ("output", config.output, contract.outputs),
    ):
        got = {name: dtype for name, (dtype, _) in _io(declared).items()}
        want = {t.name: t.dtype for t in expected}
        if got != want:
            problems.append(f"{config.name}: {kind}s {got} differ from the contract's {want}")


def _check_graph(config: pb.ModelConfig, folder: ModelFolder, problems: list[str]) -> None:
    graph = folder.graph()
    if not graph.is_file():
        problems.append(f"{config.name}: {graph} is missing")
        return
    batch = 1 if config.max_batch_size > 0 else 0
    for kind, declared, described in zip(
        ("input", "output"), (config.input, config.output), graph_io(graph), strict=True
    ):
        from_graph = {
            t["name"]: (
                t["dtype"],
                tuple(d if isinstance(d, int) and d > 0 else -1 for d in t["shape"][batch:]),
            )
            for t in described
        }
        if _io(declared) != from_graph:
            problems.append(
                f"{config.name}: config {kind}s {_io(declared)} differ from the graph's "
                f"{from_graph}"
            )


def _ids_dtype(text_encoder: pb.ModelConfig | None) -> str:
    """The token id type a text encoder's config declares (int32 in a TensorRT export), which
    its tokenizer must produce; int64 where it declares another (the contract check says so)."""
    for tensor in text_encoder.input if text_encoder else ():
        if tensor.name == INPUT_IDS:
            found = numpy_dtype(tensor.data_type)
            return found if found in IDS_DTYPES else "int64"
    return "int64"


def _label_map_dtype(segment: pb.ModelConfig | None) -> str:
    """The label map type a segmentation model's config declares (by its ``max_labels``);
    uint8 where it declares another (the contract check says so)."""
    for tensor in segment.output if segment else ():
        if tensor.name == LABEL_MAP:
            found = numpy_dtype(tensor.data_type)
            return found if found in LABEL_MAP_DTYPES else "uint8"
    return "uint8"


def validate_repository(repo: Path | str) -> ValidationReport:
    """Validate every model of a repository; raise RepositoryError listing all problems."""
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"{repo} is not a folder")
    report = ValidationReport()
    configs: dict[str, pb.ModelConfig] = {}
    for path in sorted(repo.glob(f"*/{CONFIG_FILE}")):
        config = read_config(path)
        if config.name != path.parent.name:
            report.problems.append(f"{path}: name {config.name!r} differs from its folder")
        configs[config.name] = config
    report.models = sorted(configs)
    if not configs:
        report.problems.append(f"{repo} holds no model (no */{CONFIG_FILE})")
    for kind in BLIP_GRAPHS:
        blip = blip_models(kind)
        names = [blip.raw.name, *(blip.graph(g) for g in blip.graphs)]
        if not any(name in configs for name in names):
            continue
        if Family.BLIP.value not in report.families:
            report.families.append(Family.BLIP.value)
        for name in names:
            if name not in configs:
                report.problems.append(f"blip {kind}: model {name} is missing")
            elif name == blip.raw.name:
                _check_contract(configs[name], blip.raw, report.problems)
            else:
                _check_graph(configs[name], ModelFolder.of(repo, name), report.problems)
    for family in DUAL_ENCODERS:
        models = embedding_models(
            family,
            _ids_dtype(configs.get(f"{family.value}_text_encoder")),
            _label_map_dtype(configs.get(f"{family.value}_segment")),
        )
        contracts = models.all()
        present = [c for c in contracts if c.name in configs]
        if not present:
            continue
        report.families.append(family.value)
        graphs = {models.text_encoder.name, models.image_encoder.name}
        for contract in contracts:
            if contract.name not in configs:
                report.problems.append(f"{family.value}: model {contract.name} is missing")
                continue
            config = configs[contract.name]
            _check_contract(config, contract, report.problems)
            if contract.name in graphs:  # both runtimes keep the graph as <model>/1/model.onnx
                _check_graph(config, ModelFolder.of(repo, contract.name), report.problems)
    for config in configs.values():
        for step in config.ensemble_scheduling.step:
            target = configs.get(step.model_name)
            if target is None:
                report.problems.append(f"{config.name}: step model {step.model_name} is missing")
                continue
            inputs = {t.name for t in target.input}
            outputs = {t.name for t in target.output}
            if not set(step.input_map) <= inputs or not set(step.output_map) <= outputs:
                report.problems.append(
                    f"{config.name}: step {step.model_name} maps tensors it does not have"
                )
    report.families.sort()
    if report.problems:
        raise RepositoryError(
            f"{repo}: {len(report.problems)} problem(s):\n  " + "\n  ".join(report.problems)
        )
    return report
