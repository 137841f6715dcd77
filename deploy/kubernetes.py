"""Kubernetes manifests for a repository on object storage: ``vlpserve deploy kubernetes``.

Plain Kubernetes (``--format kubernetes``): a Deployment whose pods run ``vlpserve serve``
on the repository's URL, a headless Service (every pod's address, for clients that spread
their calls: ``Client("dns:///<name>-pods.<ns>.svc:8001")``), a ClusterIP Service, a
PodDisruptionBudget, a HorizontalPodAutoscaler on queue pressure with the prometheus-adapter
rule that makes the metric, a ServiceMonitor for Prometheus, and a NetworkPolicy (gRPC from
the namespace or the pods a selector names, metrics from the monitoring namespace). Pods
expose gRPC and metrics; HTTP, which has no TLS, stays on the pod's loopback, where the exec
probes (``vlpserve health``) reach it. KServe (``--format kserve``): an InferenceService on
KServe's Triton runtime, whose container runs ``vlpserve kserve``: the runtime's tritonserver
arguments become ``vlpserve serve``'s, so the launcher's guards (model control closed, the API
key, the stub watch and drain) hold there too.

Every object is a plain dict, written as YAML, one file per object.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from vlpserve.deploy.sizing import MIB, RepositoryShape, split_triton_s3
from vlpserve.errors import ConfigError
from vlpserve.serve.launcher import REMOTE_SCHEMES

Object = dict[str, Any]

GRPC_PORT = 8001
HTTP_PORT = 8000
METRICS_PORT = 8002
KSERVE_GRPC_PORT = 9000  # KServe's Triton runtime; the port must be named h2c
KSERVE_HTTP_PORT = 8080  # the runtime's --http-port (kept on the pod's loopback)
PRESTOP_S = 5  # endpoints drop the pod before it is told to stop
TLS_DIR = "/etc/vlpserve/tls"
KEY_DIR = "/etc/vlpserve/api-key"
KEY_FILE = "api-key"
QUEUE_METRIC = "nv_inference_queue_duration_us"
COMPUTE_METRIC = "nv_inference_compute_infer_duration_us"
PRESSURE_METRIC = "vlpserve_queue_compute_ratio"
IMAGE = "vlpserve:latest"
NGC_TRITONSERVER = "/opt/tritonserver/bin/tritonserver"

CONTAINER_SECURITY: Object = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
# Secret files readable by their owner only (0400); the kubelet adds the group's read bit
# for the pods' fsGroup, which is how the non-root server reads them.
SECRET_MODE = 0o400
POD_SECURITY: Object = {"fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}}


class Format(StrEnum):
    KUBERNETES = "kubernetes"
    KSERVE = "kserve"


@dataclass(frozen=True, kw_only=True)
class DeployOptions:
    """What ``vlpserve deploy kubernetes`` renders."""

    repo: str  # s3://host:port/bucket/prefix, gs://..., as://...
    name: str = "vlpserve"
    namespace: str = "default"
    image: str = IMAGE
    replicas: int = 2
    max_replicas: int = 8
    gpus: int = 0  # per pod
    cpu: str = "4"
    memory_bytes: int | None = None  # default: from the repository
    shm_bytes: int | None = None  # default: from the repository
    grace_s: int = 30  # the server's own drain time (vlpserve serve --grace-seconds)
    startup_s: int | None = None  # default: from the repository
    target_pressure: float = 0.5  # queue time / compute time per pod
    aws_secret: str | None = None  # a Secret of AWS_* variables for the store
    service_account: str | None = None  # the pods' (KServe: the one naming the S3 secret)
    tls_secret: str | None = None  # a kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt)
    mutual_tls: bool = False
    api_key_secret: str | None = None  # a Secret with the key under "api-key"
    insecure: bool = False  # pods answer gRPC with neither a key nor client certificates
    grpc_from: dict[str, str] = field(default_factory=dict)  # pod labels; {}: the namespace
    monitoring_namespace: str = "monitoring"  # where Prometheus scrapes metrics from
    format: Format = Format.KUBERNETES
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.repo.startswith(REMOTE_SCHEMES):
            raise ConfigError(f"{self.repo}: pods read the repository from s3://, gs:// or as://")
        if self.replicas < 1 or self.max_replicas < self.replicas:
            raise ConfigError("need 1 <= replicas <= max replicas")
        if self.gpus < 0 or self.grace_s < 1 or self.target_pressure <= 0:
            raise ConfigError("gpus >= 0, grace >= 1 s and a positive target pressure")
        if self.mutual_tls and not self.tls_secret:
            raise ConfigError("mutual TLS needs --tls-secret (its ca.crt signs the clients)")
        if self.format is Format.KSERVE and self.tls_secret:
            raise ConfigError(
                "KServe's Service speaks plaintext gRPC (h2c) to the pods: no --tls-secret "
                "with --format kserve; --api-key-secret guards the calls"
            )
        self.cpus  # noqa: B018 - a bad quantity is refused here, not at render time
        if not (self.api_key_secret or self.mutual_tls or self.insecure):
            raise ConfigError(
                "the pods would answer gRPC from anyone who reaches them: add --api-key-secret, "
                "or --tls-secret with --mutual-tls (client certificates), or --insecure"
            )

    @property
    def cpus(self) -> int:
        """The CPUs a pod's server may use: its CPU request (and limit), rounded up."""
        text = self.cpu.strip()
        try:
            value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        except ValueError as exc:
            raise ConfigError(f"--cpu {self.cpu!r}: expected a CPU quantity (4, 3500m)") from exc
        if value <= 0:
            raise ConfigError(f"--cpu {self.cpu!r}: must be > 0")
        return max(1, math.ceil(value))

    @property
    def selector(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": "vlpserve", "app.kubernetes.io/instance": self.name}

    @property
    def all_labels(self) -> dict[str, str]:
        return {**self.selector, "app.kubernetes.io/component": "inference", **self.labels}

    def metadata(self, name: str | None = None, **extra: Any) -> Object:
        return {
            "name": name or self.name,
            "namespace": self.namespace,
            "labels": dict(self.all_labels),
            **extra,
        }


def termination_grace_s(grace_s: int) -> int:
    """Long enough for ``vlpserve serve`` to stop cleanly: the pre-stop pause, then the
    server's own stop, bounded by its grace (generation drained, in-flight requests
    finished, tritonserver killed when the grace is up), and a margin."""
    return PRESTOP_S + grace_s + 10


def quantity(n_bytes: int) -> str:
    """A Kubernetes quantity in Mi."""
    return f"{math.ceil(n_bytes / MIB)}Mi"


def render(options: DeployOptions, shape: RepositoryShape) -> dict[str, Object]:
    """File name -> object, for ``options.format``."""
    if options.format is Format.KSERVE:
        return {"inferenceservice.yaml": inference_service(options, shape)}
    return {
        "deployment.yaml": deployment(options, shape),
        "service.yaml": service(options),
        "service-pods.yaml": headless_service(options),
        "poddisruptionbudget.yaml": disruption_budget(options),
        "horizontalpodautoscaler.yaml": autoscaler(options),
        "prometheus-adapter-rules.yaml": adapter_rules(options),
        "servicemonitor.yaml": service_monitor(options),
        "networkpolicy.yaml": network_policy(options),
    }


def _resources(options: DeployOptions, shape: RepositoryShape) -> Object:
    memory = quantity(options.memory_bytes or shape.memory_bytes)
    disk = quantity(shape.disk_bytes)  # a pod filling the node's disk is evicted first
    requests: Object = {"cpu": options.cpu, "memory": memory, "ephemeral-storage": disk}
    # The CPU limit equal to the request: the server then sees that many CPUs (its cgroup's
    # quota, or an exclusive cpuset under the static CPU manager) and sizes its auto layout,
    # and the memory above, for them rather than for the node's count.
    limits: Object = {"cpu": options.cpu, "memory": memory, "ephemeral-storage": disk}
    if options.gpus:
        requests["nvidia.com/gpu"] = str(options.gpus)
        limits["nvidia.com/gpu"] = str(options.gpus)
    return {"requests": requests, "limits": limits}


def _shm_volume(options: DeployOptions, shape: RepositoryShape) -> Object:
    size = quantity(options.shm_bytes or shape.shm_bytes)
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def _serve_args(options: DeployOptions, startup_s: int) -> list[str]:
    args = [
        "serve",
        options.repo,
        "--host",
        "0.0.0.0",
        "--metrics-host",
        "0.0.0.0",
        "--grpc-port",
        str(GRPC_PORT),
        "--http-port",
        str(HTTP_PORT),
        "--metrics-port",
        str(METRICS_PORT),
    ]
    if options.tls_secret:
        args += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"]
        if options.mutual_tls:
            args += ["--tls-ca", f"{TLS_DIR}/ca.crt"]
    return args + _launcher_args(options, startup_s)


def _launcher_args(options: DeployOptions, startup_s: int) -> list[str]:
    """``vlpserve serve`` options every pod takes, the Deployment's and KServe's alike."""
    args = [
        "--grace-seconds",
        str(options.grace_s),
        "--startup-timeout",
        str(startup_s),
        "--tritonserver",
        NGC_TRITONSERVER,
        "--log-stdout",
    ]
    if options.api_key_secret:
        args += ["--api-key-file", f"{KEY_DIR}/{KEY_FILE}"]
    if options.insecure:
        args.append("--insecure")
    return args


def health_probe(port: int = HTTP_PORT, *, live: bool = False) -> Object:
    """An exec probe: ``vlpserve health`` asks HTTP on the pod's loopback (HTTP is never
    exposed; gRPC may need client certificates that a kubelet gRPC probe cannot present)."""
    command = ["vlpserve", "health", "--http-port", str(port)]
    return {"exec": {"command": [*command, "--live"] if live else command}, "timeoutSeconds": 5}


def deployment(options: DeployOptions, shape: RepositoryShape) -> Object:
    startup_s = options.startup_s or shape.startup_seconds(options.gpus)
    args = _serve_args(options, startup_s)
    mounts: list[Object] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[Object] = [
        _shm_volume(options, shape),
        {"name": "tmp", "emptyDir": {}},
    ]
    if options.tls_secret:
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        secret = {"secretName": options.tls_secret, "defaultMode": SECRET_MODE}
        volumes.append({"name": "tls", "secret": secret})
    if options.api_key_secret:
        volume, mount = _api_key_volume(options)
        volumes.append(volume)
        mounts.append(mount)
    container: Object = {
        "name": "vlpserve",
        "image": options.image,
        "command": ["vlpserve"],
        "args": args,
        "env": [{"name": "HOME", "value": "/tmp"}],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": {
            **health_probe(),
            "periodSeconds": 10,
            "failureThreshold": math.ceil(startup_s / 10),
        },
        "readinessProbe": {**health_probe(), "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**health_probe(live=True), "periodSeconds": 10, "failureThreshold": 3},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_S)]}}},
        "resources": _resources(options, shape),
        "volumeMounts": mounts,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    if options.aws_secret:
        container["envFrom"] = [{"secretRef": {"name": options.aws_secret}}]
    pod_spec: Object = {
        "terminationGracePeriodSeconds": termination_grace_s(options.grace_s),
        "securityContext": copy.deepcopy(POD_SECURITY),
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": volumes,
    }
    if options.service_account:
        pod_spec["serviceAccountName"] = options.service_account
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": options.metadata(),
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": dict(options.selector)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": dict(options.all_labels)},
                "spec": pod_spec,
            },
        },
    }


def _service_ports(names: Sequence[str]) -> list[Object]:
    ports = {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    found = []
    for name in names:
        port: Object = {"name": name, "port": ports[name], "targetPort": name, "protocol": "TCP"}
        if name == "grpc":
            port["appProtocol"] = "kubernetes.io/h2c"
        found.append(port)
    return found


def service(options: DeployOptions) -> Object:
    """One virtual address for every pod (a gRPC connection to it stays on one pod)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": options.metadata(),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(options.selector),
            "ports": _service_ports(["grpc", "metrics"]),
        },
    }


def headless_service(options: DeployOptions) -> Object:
    """Every ready pod's address under one DNS name, for clients that spread calls."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": options.metadata(f"{options.name}-pods"),
        "spec": {
            "clusterIP": "None",
            "selector": dict(options.selector),
            "ports": _service_ports(["grpc"]),
        },
    }


def disruption_budget(options: DeployOptions) -> Object:
    budget: Object = {"maxUnavailable": 1} if options.replicas > 1 else {"minAvailable": 0}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": options.metadata(),
        "spec": {"selector": {"matchLabels": dict(options.selector)}, **budget},
    }


def autoscaler(options: DeployOptions) -> Object:
    """Scale on the pods' mean queue-to-compute time ratio: requests waiting longer than
    they compute mean the pods are saturated."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": options.metadata(),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": options.name,
            },
            "minReplicas": options.replicas,
            "maxReplicas": options.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": PRESSURE_METRIC},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": f"{round(options.target_pressure * 1000)}m",
                        },
                    },
                }
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 30,
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                },
            },
        },
    }


def pressure_query() -> str:
    """PromQL for the ratio, per pod, in prometheus-adapter's template."""
    matchers = "<<.LabelMatchers>>"
    return (
        f"sum(rate({QUEUE_METRIC}{{{matchers}}}[1m])) by (<<.GroupBy>>) / "
        f"clamp_min(sum(rate({COMPUTE_METRIC}{{{matchers}}}[1m])) by (<<.GroupBy>>), 1)"
    )


def adapter_rule() -> Object:
    """The prometheus-adapter custom-metrics rule that exposes ``PRESSURE_METRIC``."""
    return {
        "seriesQuery": f'{QUEUE_METRIC}{{namespace!="",pod!=""}}',
        "resources": {
            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        },
        "name": {"matches": f"^{QUEUE_METRIC}$", "as": PRESSURE_METRIC},
        "metricsQuery": pressure_query(),
    }


def adapter_rules(options: DeployOptions) -> Object:
    """A ConfigMap holding the rule, in prometheus-adapter's config format: merge its
    ``rules`` into the adapter's configuration (its Helm chart: ``rules.custom``)."""
    import yaml

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": options.metadata(f"{options.name}-adapter-rules"),
        "data": {"config.yaml": yaml.safe_dump({"rules": [adapter_rule()]}, sort_keys=False)},
    }


def service_monitor(options: DeployOptions) -> Object:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": options.metadata(),
        "spec": {
            "selector": {"matchLabels": dict(options.selector)},
            "namespaceSelector": {"matchNames": [options.namespace]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }


def network_policy(options: DeployOptions) -> Object:
    """Ingress to the pods: gRPC from the namespace's pods (or those ``grpc_from`` names),
    metrics from the monitoring namespace; nothing else (HTTP is on the pods' loopback)."""
    grpc_peer: Object = {"podSelector": {"matchLabels": dict(options.grpc_from)}}
    monitoring = {"kubernetes.io/metadata.name": options.monitoring_namespace}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": options.metadata(),
        "spec": {
            "podSelector": {"matchLabels": dict(options.selector)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [grpc_peer],
                    "ports": [{"port": "grpc", "protocol": "TCP"}],
                },
                {
                    "from": [{"namespaceSelector": {"matchLabels": monitoring}}],
                    "ports": [{"port": "metrics", "protocol": "TCP"}],
                },
            ],
        },
    }


def kserve_storage_uri(repo: str) -> str:
    """KServe's spelling of the repository: the endpoint moves to the storage secret."""
    if repo.startswith("s3://"):
        _, bucket, prefix = split_triton_s3(repo)
        return f"s3://{bucket}/{prefix}".rstrip("/")
    return repo


def _api_key_volume(options: DeployOptions) -> tuple[Object, Object]:
    """The API key Secret's volume and its read-only mount where ``serve`` reads it."""
    volume = {
        "name": "api-key",
        "secret": {
            "secretName": options.api_key_secret,
            "items": [{"key": KEY_FILE, "path": KEY_FILE}],
            "defaultMode": SECRET_MODE,
        },
    }
    return volume, {"name": "api-key", "mountPath": KEY_DIR, "readOnly": True}


def inference_service(options: DeployOptions, shape: RepositoryShape) -> Object:
    """KServe's InferenceService on its Triton runtime (the v2 protocol). The pods run our
    image with ``vlpserve kserve`` as the command: KServe appends these args to its runtime's
    (``tritonserver --model-store=/mnt/models --grpc-port=9000 --http-port=8080 ...``), and
    the command turns them into ``vlpserve serve /mnt/models ...``: gRPC on the pod's
    address, HTTP on its loopback (the exec probes), model control closed."""
    startup_s = options.startup_s or shape.startup_seconds(options.gpus)
    args = ["--host", "0.0.0.0", *_launcher_args(options, startup_s)]
    mounts: list[Object] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[Object] = [_shm_volume(options, shape), {"name": "tmp", "emptyDir": {}}]
    if options.api_key_secret:
        volume, mount = _api_key_volume(options)
        volumes.append(volume)
        mounts.append(mount)
    probe = health_probe(KSERVE_HTTP_PORT)
    model: Object = {
        "modelFormat": {"name": "triton"},
        "protocolVersion": "v2",
        "runtime": "kserve-tritonserver",
        "storageUri": kserve_storage_uri(options.repo),
        "image": options.image,
        "command": ["vlpserve", "kserve"],
        "args": args,
        "env": [{"name": "HOME", "value": "/tmp"}],
        "ports": [{"name": "h2c", "containerPort": KSERVE_GRPC_PORT, "protocol": "TCP"}],
        "resources": _resources(options, shape),
        "volumeMounts": mounts,
        "startupProbe": {
            **probe,
            "periodSeconds": 10,
            "failureThreshold": math.ceil(startup_s / 10),
        },
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2},
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    predictor: Object = {
        "minReplicas": options.replicas,
        "maxReplicas": options.max_replicas,
        "terminationGracePeriodSeconds": termination_grace_s(options.grace_s),
        "securityContext": copy.deepcopy(POD_SECURITY),
        "automountServiceAccountToken": False,
        "model": model,
        "volumes": volumes,
    }
    if options.service_account:
        predictor["serviceAccountName"] = options.service_account
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": options.metadata(
            annotations={"serving.kserve.io/deploymentMode": "RawDeployment"}
        ),
        "spec": {"predictor": predictor},
    }


def write(objects: dict[str, Object], out: Path) -> list[Path]:
    """Write one YAML file per object into ``out``; returns their paths."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, obj in objects.items():
        path = out / name
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        paths.append(path)
    return paths
