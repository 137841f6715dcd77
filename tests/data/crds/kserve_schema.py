"""Write serving.kserve.io_inferenceservices.schema.json from KServe's published SDK.

KServe's InferenceService CRD is 1 MB of YAML (every pod and container field, three times);
its Python SDK on PyPI carries the same API as generated OpenAPI models: every KServe type's
fields, their JSON names and types. This script turns the SDK's models into a strict JSON
schema (unknown fields are errors), whose Kubernetes types (V1Container, V1Volume, ...) are
references into the Kubernetes OpenAPI definitions that kubernetes-validate bundles, so that
the test checks pod and container fields against the same pinned Kubernetes version.

Run by hand when moving to another KServe release:

    pip download --no-deps kserve==0.21.0 -d /tmp/kserve && cd /tmp/kserve && unzip -q *.whl
    python tests/data/crds/kserve_schema.py /tmp/kserve 0.21.0
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import kubernetes_validate

K8S_VERSION = "1.37.0"
K8S_DEFS = "https://kubernetes.io/api/_definitions.json"
OUT = Path(__file__).with_name("serving.kserve.io_inferenceservices.schema.json")


def k8s_definitions() -> dict[str, Any]:
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    path = root / f"v{K8S_VERSION}-local-strict" / "_definitions.json"
    return dict(json.loads(path.read_text())["$defs"])


def load_models(sdk: Path) -> dict[str, type]:
    """Every model class of kserve.models, by name, without kserve/__init__.py (which
    brings a model server's imports)."""
    package = types.ModuleType("kserve")
    package.__path__ = [str(sdk / "kserve")]
    sys.modules["kserve"] = package
    found = {}
    for path in sorted((sdk / "kserve" / "models").glob("*.py")):
        module = importlib.import_module(f"kserve.models.{path.stem}")
        for name, value in vars(module).items():
            if isinstance(value, type) and hasattr(value, "openapi_types"):
                found[name] = value
    return found


def main(sdk: Path, version: str) -> None:
    models = load_models(sdk)
    k8s = k8s_definitions()
    definitions: dict[str, Any] = {}
    unchecked: set[str] = set()

    spelled = {  # the SDK spells Go import paths: k8s.io/api/autoscaling/v2
        "".join(p[:1].upper() + p[1:] for p in key.replace("io.k8s.", "k8s.io.", 1).split(".")): key
        for key in k8s
    }

    def k8s_ref(name: str) -> dict[str, Any]:
        if name in spelled:  # K8sIoApiAutoscalingV2MetricSpec: io.k8s.api.autoscaling.v2...
            return {"$ref": f"{K8S_DEFS}#/$defs/{spelled[name]}"}
        match = re.fullmatch(r"V1(\w+)", name)
        if name.endswith("Quantity"):  # ResourceQuantity, V1beta1MetricQuantity (no model)
            return {"$ref": f"{K8S_DEFS}#/$defs/io.k8s.apimachinery.pkg.api.resource.Quantity"}
        if not match:
            raise KeyError(name)
        kind = match.group(1)
        for prefix in ("io.k8s.api.core.v1.", "io.k8s.apimachinery.pkg.apis.meta.v1."):
            if prefix + kind in k8s:
                return {"$ref": f"{K8S_DEFS}#/$defs/{prefix}{kind}"}
        raise KeyError(name)

    def schema(type_name: str) -> dict[str, Any]:
        type_name = type_name.strip()
        simple = {"str": "string", "int": "integer", "bool": "boolean", "float": "number"}
        if type_name in simple:
            return {"type": simple[type_name]}
        if type_name in ("object", "datetime"):
            return {}
        if type_name.startswith("list["):
            return {"type": "array", "items": schema(type_name[5:-1])}
        if type_name.startswith("dict("):
            _, value = type_name[5:-1].split(",", 1)
            return {"type": "object", "additionalProperties": schema(value)}
        cls = models.get(type_name)
        if cls is None and type_name.startswith("Knative"):  # status only; no model in the SDK
            unchecked.add(type_name)
            return {}
        if cls is None:
            return k8s_ref(type_name)
        if type_name not in definitions:
            definitions[type_name] = {}  # placeholder against cycles
            properties = {
                cls.attribute_map[attr]: schema(kind) for attr, kind in cls.openapi_types.items()
            }
            definitions[type_name] = {
                "type": "object",
                "properties": properties,
                "additionalProperties": False,
            }
        return {"$ref": f"#/$defs/{type_name}"}

    root = schema("V1beta1InferenceService")
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://vlpserve.test/crds/serving.kserve.io_inferenceservices.schema.json",
        "description": (
            f"InferenceService serving.kserve.io/v1beta1, from the KServe {version} Python SDK's "
            f"OpenAPI models (tests/data/crds/kserve_schema.py); Kubernetes types from "
            f"kubernetes-validate's v{K8S_VERSION} strict definitions. Not checked (status "
            f"types the SDK does not model): {', '.join(sorted(unchecked))}."
        ),
        **root,
        "$defs": definitions,
    }
    OUT.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"{OUT}: {len(definitions)} KServe types")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
