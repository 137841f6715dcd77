"""Kubernetes manifests: every object validated offline and strictly against the schemas of a
pinned Kubernetes version, the custom resources against their published schemas, and what
the schemas cannot see: ports, selectors, /dev/shm measured on a real server, metric names
scraped from a real server."""

from __future__ import annotations

import copy
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import yaml
from referencing import Registry, Resource

from vlpserve.cli import main
from vlpserve.client import Client
from vlpserve.deploy import DeployOptions, Format, inspect, render
from vlpserve.deploy import kubernetes as k8s
from vlpserve.deploy.sizing import MIB
from vlpserve.errors import ConfigError
from vlpserve.model_repository.placement import auto_layout
from vlpserve.ort import usable_cpus
from vlpserve.serve import TritonServer
from vlpserve.serve.supervisor import stubs

K8S_VERSION = "1.33"  # the oldest Kubernetes the manifests are for
CRDS = Path(__file__).resolve().parent.parent / "data" / "crds"
REPO_URL = "s3://minio.storage.svc:9000/models/prod"


def _objects(repo: Path, **options: Any) -> dict[str, dict[str, Any]]:
    """Rendered objects; an API key unless the test names how callers are checked."""
    if not any(options.get(k) for k in ("api_key_secret", "mutual_tls", "insecure")):
        options["api_key_secret"] = "vlpserve-key"
    deploy = DeployOptions(repo=REPO_URL, **options)
    return render(deploy, inspect(repo, cpus=deploy.cpus))


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural schema as the API server applies it: unknown fields are errors
    (pruned and refused by kubectl's strict field validation), except where the schema
    keeps them."""
    schema = copy.deepcopy(schema)
    keeps = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and not keeps:
        schema["additionalProperties"] = False
    for key, value in schema.items():
        if isinstance(value, dict):
            schema[key] = (
                _strict(value)
                if key != "properties"
                else {name: _strict(sub) for name, sub in value.items()}
            )
        elif isinstance(value, list):
            schema[key] = [_strict(v) if isinstance(v, dict) else v for v in value]
    return schema


def _service_monitor_schema() -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / "monitoring.coreos.com_servicemonitors.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(version["schema"]["openAPIV3Schema"])


def _kserve_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((CRDS / "serving.kserve.io_inferenceservices.schema.json").read_text())
    version = re.search(r"v(\d+\.\d+\.\d+) strict", schema["description"]).group(1)
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    definitions = json.loads((root / f"v{version}-local-strict" / "_definitions.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_every_object_is_valid_for_kubernetes(clip_repo: Path) -> None:
    objects = _objects(clip_repo, api_key_secret="vlpserve-key", tls_secret="vlpserve-tls")
    kinds = set()
    for name, obj in objects.items():
        kinds.add(obj["kind"])
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, _service_monitor_schema())
        else:
            assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True), name
    assert kinds == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "ServiceMonitor",
        "NetworkPolicy",
    }
    services = [o for o in objects.values() if o["kind"] == "Service"]
    assert sorted(s["spec"].get("clusterIP", "") for s in services) == ["", "None"]


def test_validation_is_strict(clip_repo: Path) -> None:
    """A misspelled field fails each schema: the checks above can fail."""
    objects = _objects(clip_repo)
    deployment = copy.deepcopy(objects["deployment.yaml"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    monitor = copy.deepcopy(objects["servicemonitor.yaml"])
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, _service_monitor_schema())
    service = _objects(clip_repo, format=Format.KSERVE)["inferenceservice.yaml"]
    service["spec"]["predictor"]["model"]["storageURI"] = "s3://x"
    with pytest.raises(jsonschema.ValidationError):
        _kserve_validator().validate(service)
    service = _objects(clip_repo, format=Format.KSERVE)["inferenceservice.yaml"]
    service["spec"]["predictor"]["model"]["ports"][0]["containerport"] = 1  # a Kubernetes type
    with pytest.raises(jsonschema.ValidationError):
        _kserve_validator().validate(service)


def test_kserve_inference_service(clip_repo: Path) -> None:
    objects = _objects(clip_repo, format=Format.KSERVE, gpus=1, service_account="s3-reader")
    with pytest.raises(ConfigError, match="h2c"):
        DeployOptions(repo=REPO_URL, format=Format.KSERVE, tls_secret="t", mutual_tls=True)
    with pytest.raises(ConfigError, match="anyone"):
        DeployOptions(repo=REPO_URL, format=Format.KSERVE)
    (service,) = objects.values()
    _kserve_validator().validate(service)
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["protocolVersion"] == "v2"
    assert model["modelFormat"] == {"name": "triton"}
    assert model["runtime"] == "kserve-tritonserver"
    assert model["storageUri"] == "s3://models/prod"  # the endpoint lives in the S3 secret
    assert [p["name"] for p in model["ports"]] == ["h2c"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert predictor["serviceAccountName"] == "s3-reader"
    mounts = {m["name"]: m["mountPath"] for m in model["volumeMounts"]}
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert set(mounts) == set(volumes) == {"dshm", "tmp", "api-key"}
    assert mounts["dshm"] == "/dev/shm" and volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    _, container = _pod(_objects(clip_repo))  # the Deployment's pod: the same guards
    assert model["securityContext"] == container["securityContext"]
    assert predictor["automountServiceAccountToken"] is False
    assert model["command"] == ["vlpserve", "kserve"]


# KServe's Triton runtime (config/runtimes/kserve-tritonserver.yaml, ClusterServingRuntime
# kserve-tritonserver): its container's args. KServe merges an InferenceService's container
# into it (MergeRuntimeContainers): the command is the InferenceService's, the args are the
# runtime's followed by the InferenceService's.
KSERVE_RUNTIME_ARGS = [
    "tritonserver",
    "--model-store=/mnt/models",
    "--grpc-port=9000",
    "--http-port=8080",
    "--allow-grpc=true",
    "--allow-http=true",
]


def test_kserve_pod_runs_as_kserve_merges_it(clip_repo: Path, tmp_path: Path) -> None:
    """The command and args KServe's pod would run, run here (a local folder standing for
    /mnt/models, 127.0.0.2 for the pod's address, free ports): it serves, the probes pass,
    the API key guards the calls and nobody can unload a model."""
    import subprocess
    import sys

    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc

    from tests.serve.helpers import Serve
    from vlpserve.client import AuthenticationError
    from vlpserve.serve import free_port

    (service,) = _objects(clip_repo, format=Format.KSERVE, api_key_secret="key").values()
    model = service["spec"]["predictor"]["model"]
    command = [*model["command"], *KSERVE_RUNTIME_ARGS, *model["args"]]
    key_file = tmp_path / "api-key"
    key_file.write_text("kserve-key\n")
    grpc_port, http_port = free_port(), free_port()
    here = {
        "--model-store=/mnt/models": f"--model-store={clip_repo}",
        "--grpc-port=9000": f"--grpc-port={grpc_port}",
        "--http-port=8080": f"--http-port={http_port}",
        "0.0.0.0": "127.0.0.2",
        f"{k8s.KEY_DIR}/{k8s.KEY_FILE}": str(key_file),
        str(k8s.KSERVE_HTTP_PORT): str(http_port),
    }
    command = [here.get(a, a) for a in command]
    at = command.index("--tritonserver")  # the image's binary; here the embedded one
    del command[at : at + 2]
    assert command[0] == "vlpserve"
    with Serve(None, *command[1:], "--metrics-port", str(free_port())) as serve:
        serve.wait_for("serving;")
        for probe in ("startupProbe", "readinessProbe"):
            probe_command = [here.get(a, a) for a in model[probe]["exec"]["command"]]
            run = [sys.executable, "-m", "vlpserve", *probe_command[1:]]
            done = subprocess.run(run, capture_output=True, timeout=30)
            assert done.returncode == 0, (probe, done.stderr)
        url = f"127.0.0.2:{grpc_port}"
        with Client(url, api_key="kserve-key") as client:
            assert client.embed_texts(["through KServe's command"]).shape == (1, 16)
        with Client(url, retries=0) as client, pytest.raises(AuthenticationError):
            client.embed_texts(["no key"])
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))
        metadata = (("triton-grpc-protocol-authorization", "Bearer kserve-key"),)
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name="clip_text"),
                timeout=10,
                metadata=metadata,
            )
        assert "restricted" in info.value.details()
        with pytest.raises(OSError):  # HTTP stays on the pod's loopback
            urllib.request.urlopen(f"http://127.0.0.2:{http_port}/v2/health/ready", timeout=5)


def _pod(objects: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    template = objects["deployment.yaml"]["spec"]["template"]
    return template, template["spec"]["containers"][0]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_ports_selectors_and_grace(clip_repo: Path) -> None:
    objects = _objects(clip_repo, grace_s=40)
    template, container = _pod(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["args"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["vlpserve", "health"], probe
        # the port the server's HTTP listens on, on the pod's loopback (never exposed)
        assert command[command.index("--http-port") + 1] == args[args.index("--http-port") + 1]
    assert "--http-host" not in args and "http" not in ports
    labels = template["metadata"]["labels"]
    deployment = objects["deployment.yaml"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], labels)
    for name in ("service.yaml", "service-pods.yaml"):
        spec = objects[name]["spec"]
        assert _matches(spec["selector"], labels), name
        for port in spec["ports"]:
            assert port["targetPort"] in ports, name
    assert _matches(objects["poddisruptionbudget.yaml"]["spec"]["selector"]["matchLabels"], labels)
    monitor = objects["servicemonitor.yaml"]["spec"]
    service = objects["service.yaml"]
    assert _matches(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }
    target = objects["horizontalpodautoscaler.yaml"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])

    # The pod outlives the server's own stop: the pre-stop pause, then the server's stop,
    # which the launcher bounds by the grace (tritonserver killed when it is up), and a margin.
    grace = float(args[args.index("--grace-seconds") + 1])
    assert grace == 40
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert template["spec"]["terminationGracePeriodSeconds"] >= pre_stop + grace + 5
    # The start-up probe waits at least as long as the server itself does.
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= float(args[args.index("--startup-timeout") + 1])


def test_secrets_are_mounted_where_the_server_reads_them(clip_repo: Path) -> None:
    objects = _objects(
        clip_repo, tls_secret="tls", mutual_tls=True, api_key_secret="key", aws_secret="s3"
    )
    template, container = _pod(objects)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "tls"
    assert volumes["api-key"]["secret"]["secretName"] == "key"
    args = container["args"]
    for flag, volume in (
        ("--tls-cert", "tls"),
        ("--tls-key", "tls"),
        ("--tls-ca", "tls"),
        ("--api-key-file", "api-key"),
    ):
        assert args[args.index(flag) + 1].startswith(mounts[volume] + "/"), flag
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]
    for name in ("tls", "api-key"):  # owner-read only (the kubelet adds fsGroup's read bit)
        assert volumes[name]["secret"]["defaultMode"] == 0o400, name
    assert template["spec"]["automountServiceAccountToken"] is False
    disk = _size_bytes(container["resources"]["limits"]["ephemeral-storage"])
    assert disk >= inspect(clip_repo).disk_bytes > 512 * MIB  # the copied repository, the log
    assert "--log-stdout" in args
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert mounts["tmp"] == "/tmp" and mounts["dshm"] == "/dev/shm"
    assert args[:2] == ["serve", REPO_URL]
    with pytest.raises(ConfigError, match="s3://"):
        DeployOptions(repo="/local/folder")
    with pytest.raises(ConfigError, match="mutual TLS"):
        DeployOptions(repo=REPO_URL, mutual_tls=True)


def test_pods_are_not_open_by_default(clip_repo: Path) -> None:
    with pytest.raises(ConfigError, match="anyone who reaches them") as info:
        DeployOptions(repo=REPO_URL)
    assert "--api-key-secret" in str(info.value) and "--insecure" in str(info.value)
    with pytest.raises(ConfigError, match="anyone"):  # TLS without client certificates
        DeployOptions(repo=REPO_URL, tls_secret="tls")
    _, container = _pod(_objects(clip_repo, insecure=True))
    assert "--insecure" in container["args"]
    _, container = _pod(_objects(clip_repo, tls_secret="tls", mutual_tls=True))
    assert "--insecure" not in container["args"] and "--tls-ca" in container["args"]


def test_network_policy(clip_repo: Path) -> None:
    objects = _objects(clip_repo, grpc_from={"app": "search"}, monitoring_namespace="prom")
    policy = objects["networkpolicy.yaml"]
    assert kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    template, container = _pod(objects)
    assert _matches(policy["spec"]["podSelector"]["matchLabels"], template["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(rules) == {"grpc", "metrics"} <= {p["name"] for p in container["ports"]}
    assert rules["grpc"] == [{"podSelector": {"matchLabels": {"app": "search"}}}]
    namespace = {"kubernetes.io/metadata.name": "prom"}
    assert rules["metrics"] == [{"namespaceSelector": {"matchLabels": namespace}}]
    default = _objects(clip_repo)["networkpolicy.yaml"]["spec"]["ingress"][0]["from"]
    assert default == [{"podSelector": {"matchLabels": {}}}]  # any pod of the namespace
    service_ports = {p["name"] for p in objects["service.yaml"]["spec"]["ports"]}
    assert service_ports == {"grpc", "metrics"}  # HTTP is not published


def test_the_rendered_pod_serves_as_rendered(clip_repo: Path, certificates, tmp_path: Path) -> None:
    """The container's args, run here as the pod runs them (the repository a local folder,
    the Secrets' files the test's certificates and key, 127.0.0.2 standing for the pod's
    address, free ports): the exec probes pass, gRPC answers a client certificate and the
    key on the pod's address, metrics answer there, HTTP does not leave loopback."""
    import subprocess
    import sys

    from tests.serve.helpers import Serve
    from vlpserve.serve import free_port

    objects = _objects(clip_repo, tls_secret="tls", mutual_tls=True, api_key_secret="key")
    _, container = _pod(objects)
    key_file = tmp_path / "api-key"
    key_file.write_text("rendered-key\n")
    ports = {str(k8s.GRPC_PORT): free_port(), str(k8s.HTTP_PORT): free_port()}
    ports[str(k8s.METRICS_PORT)] = free_port()
    here = {
        REPO_URL: str(clip_repo),
        "0.0.0.0": "127.0.0.2",
        f"{k8s.TLS_DIR}/tls.crt": str(certificates["server_cert"]),
        f"{k8s.TLS_DIR}/tls.key": str(certificates["server_key"]),
        f"{k8s.TLS_DIR}/ca.crt": str(certificates["ca"]),
        f"{k8s.KEY_DIR}/{k8s.KEY_FILE}": str(key_file),
        **{k: str(v) for k, v in ports.items()},
    }
    args = [here.get(a, a) for a in container["args"]]
    at = args.index("--tritonserver")  # the image's binary; here the embedded one
    del args[at : at + 2]
    assert args[0] == "serve"
    with Serve(Path(args[1]), *args[2:]) as serve:
        assert "Started GRPCInferenceService" in serve.wait_for("serving;")  # kubectl logs
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = [here.get(a, a) for a in container[probe]["exec"]["command"]]
            run = [sys.executable, "-m", "vlpserve", *command[1:]]
            done = subprocess.run(run, capture_output=True, timeout=30)
            assert done.returncode == 0, (probe, done.stderr)
        grpc_port, http_port = ports[str(k8s.GRPC_PORT)], ports[str(k8s.HTTP_PORT)]
        url = f"127.0.0.2:{grpc_port}"
        identity = {"tls_cert": certificates["client_cert"], "tls_key": certificates["client_key"]}
        with Client(url, tls_ca=certificates["ca"], api_key="rendered-key", **identity) as c:
            assert c.embed_texts(["from the pod's address"]).shape == (1, 16)
        metrics = f"http://127.0.0.2:{ports[str(k8s.METRICS_PORT)]}/metrics"
        with urllib.request.urlopen(metrics, timeout=10) as response:
            assert b"nv_inference_count" in response.read()
        with pytest.raises(OSError):  # the pod's address: HTTP is not there
            urllib.request.urlopen(f"http://127.0.0.2:{http_port}/v2/health/ready", timeout=5)
        stopped = subprocess.run(
            [sys.executable, "-m", "vlpserve", "health", "--http-port", str(free_port())],
            capture_output=True,
            timeout=30,
        )
        assert stopped.returncode == 1 and b"not ready" in stopped.stderr  # the probe can fail


def _shm_in_use(server_pid: int) -> dict[str, int]:
    """Bytes of the Python backend's shared-memory regions each model's stubs map."""
    found: dict[str, int] = {}
    for stub in stubs(server_pid):
        regions = set()
        for line in Path(f"/proc/{stub.pid}/maps").read_text().splitlines():
            path = line.split()[-1]
            if path.startswith("/dev/shm/triton_python_backend_shm_region"):
                regions.add(path)
        found[stub.model] = found.get(stub.model, 0) + sum(Path(p).stat().st_size for p in regions)
    return found


def _size_bytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2]) * MIB


def test_dev_shm_covers_what_a_real_server_uses(clip_repo: Path) -> None:
    """Full batches of large images and long texts through every Python-backend model of
    the repository: the region each model's stubs grew fits that model's share, the total
    fits the rendered /dev/shm with room to spare, and the memory limit holds it besides.
    Sized for the CPUs the server here has, as a pod's is for its CPU limit."""
    shape = inspect(clip_repo, cpus=usable_cpus())
    objects = render(DeployOptions(repo=REPO_URL, insecure=True), shape)
    template, container = _pod(objects)
    (shm,) = [v for v in template["spec"]["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    size = _size_bytes(shm["emptyDir"]["sizeLimit"])
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)  # ~3 MB as PNG
    with TritonServer(clip_repo) as server, Client(server.grpc_url) as client:
        before = _shm_in_use(server.pid)
        for _ in range(3):
            client.embed_images([noise] * 8)
            client.embed_texts(["a long caption " * 400] * 8)
        used = _shm_in_use(server.pid)
    python_models = {m.name for m in shape.models if m.backend == "python"}
    assert set(used) == python_models
    assert used["clip_image_preprocessor"] > 8 * before["clip_image_preprocessor"]  # it grew
    for model in shape.models:
        if model.backend == "python":
            assert used[model.name] <= model.shm_bytes, (model.name, used[model.name] / MIB)
    assert sum(used.values()) <= size / 2, (sum(used.values()) / MIB, size / MIB)
    assert _size_bytes(container["resources"]["limits"]["memory"]) > size


def test_autoscaling_metrics_are_ones_tritonserver_exports(clip_repo: Path, triton) -> None:
    """Every metric the adapter rule reads, scraped from our tritonserver after a call."""
    with Client(triton.grpc_url) as client:
        client.embed_texts(["a photo of a cat"])
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as response:
        exported = set(re.findall(r"^(\w+)\{", response.read().decode(), re.MULTILINE))
    config = yaml.safe_load(
        _objects(clip_repo)["prometheus-adapter-rules.yaml"]["data"]["config.yaml"]
    )
    (rule,) = config["rules"]
    used = set(re.findall(r"\b(nv_\w+)", rule["seriesQuery"] + rule["metricsQuery"]))
    assert used == {k8s.QUEUE_METRIC, k8s.COMPUTE_METRIC}
    assert used <= exported, used - exported
    assert rule["name"]["as"] == k8s.PRESSURE_METRIC
    hpa = _objects(clip_repo)["horizontalpodautoscaler.yaml"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == k8s.PRESSURE_METRIC


def test_cli_writes_the_files(clip_repo: Path, tmp_path: Path) -> None:
    argv = ["deploy", "kubernetes", "--repo", REPO_URL, "--sizing-from", str(clip_repo)]
    assert main([*argv, "--out", str(tmp_path / "open")]) == 1  # no key, no certificates
    assert not (tmp_path / "open").exists()
    argv += ["--api-key-secret", "key", "--grpc-from", "app=search,tier=web"]
    assert main([*argv, "--out", str(tmp_path / "k8s"), "--replicas", "3", "--gpus", "1"]) == 0
    files = sorted(p.name for p in (tmp_path / "k8s").iterdir())
    assert "deployment.yaml" in files and len(files) == 8
    policy = yaml.safe_load((tmp_path / "k8s" / "networkpolicy.yaml").read_text())
    grpc_from = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert grpc_from == {"app": "search", "tier": "web"}
    deployment = yaml.safe_load((tmp_path / "k8s" / "deployment.yaml").read_text())
    assert deployment["spec"]["replicas"] == 3
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert main([*argv, "--out", str(tmp_path / "ks"), "--format", "kserve"]) == 0
    assert [p.name for p in (tmp_path / "ks").iterdir()] == ["inferenceservice.yaml"]
    assert main([*argv, "--out", str(tmp_path / "bad"), "--replicas", "0"]) == 1


def test_sizing_covers_siglip(python_repo: Path) -> None:
    """SigLIP's models are sized as CLIP's are: /dev/shm for each Python-backend instance,
    memory for the weights of its graphs."""
    from vlpserve.contract import embedding_models

    shape = inspect(python_repo)
    siglip = {m.name: m for m in shape.models if m.name.startswith("siglip_")}
    assert set(siglip) == {m.name for m in embedding_models("siglip").all()}
    for name in ("siglip_text", "siglip_text_encoder", "siglip_image_encoder"):
        assert siglip[name].shm_bytes > 0 and siglip[name].weight_bytes > 0, name
    assert siglip["siglip_image_preprocessor"].shm_bytes > 2 * 20 * MIB  # a batch of images


def test_pods_are_sized_for_the_layout_their_cpus_get(clip_repo: Path) -> None:
    """A repository built auto: the pod's CPU limit equals its request, so the server sizes
    its layout for those CPUs, and the memory and /dev/shm are sized for that layout."""
    shapes = {cpus: inspect(clip_repo, cpus=cpus) for cpus in (1, 16)}
    for cpus, shape in shapes.items():
        (encoder,) = [m for m in shape.models if m.name == "clip_image_encoder"]
        assert encoder.instances == auto_layout(cpus).encoder_instances
    assert shapes[16].memory_bytes > shapes[1].memory_bytes
    assert shapes[16].shm_bytes > shapes[1].shm_bytes
    for cpu, count in (("16", 16), ("3500m", 4), ("0.5", 1)):
        objects = _objects(clip_repo, cpu=cpu)
        _, container = _pod(objects)
        assert container["resources"]["limits"]["cpu"] == cpu
        assert container["resources"]["requests"]["cpu"] == cpu
        assert DeployOptions(repo=REPO_URL, cpu=cpu, insecure=True).cpus == count
    with pytest.raises(ConfigError, match="expected a CPU quantity"):
        DeployOptions(repo=REPO_URL, cpu="four", insecure=True)
