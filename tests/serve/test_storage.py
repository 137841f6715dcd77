"""A repository on object storage: pushed with ``vlpserve repo push`` to a real
S3-compatible server on loopback (moto), read by tritonserver itself."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from vlpserve.cli import main
from vlpserve.client import Client
from vlpserve.errors import ConfigError, RepositoryError, ServeError
from vlpserve.model_repository.placement import auto_layout
from vlpserve.model_repository.storage import KEEP, push
from vlpserve.ort import usable_cpus
from vlpserve.serve import TritonServer
from vlpserve.serve.launcher import free_port

TEXTS = ["a photo of a cat", "a diagram of a bridge"]


@pytest.fixture(scope="module")
def store() -> Iterator[str]:
    """A real S3-compatible server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(store: str, monkeypatch: pytest.MonkeyPatch):
    """Test credentials for boto3 and tritonserver (both read the AWS_* variables)."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "vlpserve-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "vlpserve-test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return boto3.client("s3", endpoint_url=store)


def _keys(s3, bucket: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_served_from_object_storage(s3, store: str, clip_repo: Path, triton) -> None:
    s3.create_bucket(Bucket="models")
    argv = ["repo", "push", str(clip_repo), "s3://models/prod/v1", "--endpoint-url", store]
    assert main(argv) == 0
    keys = _keys(s3, "models")
    assert "prod/v1/clip_text_encoder/config.pbtxt" in keys
    assert f"prod/v1/clip_image/1/{KEEP}" in keys  # the ensemble's empty version folder
    assert not [key for key in keys if "__pycache__" in key]

    host = store.removeprefix("http://")
    image = np.full((32, 32, 3), 200, dtype=np.uint8)
    with (
        TritonServer(f"s3://{host}/models/prod/v1") as server,
        Client(server.grpc_url) as remote,
        Client(triton.grpc_url) as local,
    ):
        np.testing.assert_allclose(
            remote.embed_texts(TEXTS), local.embed_texts(TEXTS), rtol=0, atol=1e-6
        )
        np.testing.assert_allclose(  # through the ensemble
            remote.embed_images([image]), local.embed_images([image]), rtol=0, atol=1e-6
        )
        # The auto layout reaches models read from the store too (reloaded, sized).
        expected = auto_layout(usable_cpus())
        assert "clip_image_encoder" in server.placed
        stats = grpcclient.InferenceServerClient(server.grpc_url)
        config = stats.get_model_config("clip_image_encoder").config
        stats.close()
        assert config.instance_group[0].count == expected.encoder_instances


def test_ensembles_need_the_markers(s3, store: str, clip_repo: Path) -> None:
    """Without them the ensemble's version folder does not exist and Triton refuses them:
    the reason push writes them."""
    s3.create_bucket(Bucket="bare")
    push(clip_repo, "s3://bare/v1", endpoint_url=store)
    for key in _keys(s3, "bare"):
        if key.endswith(KEEP):
            s3.delete_object(Bucket="bare", Key=key)
    host = store.removeprefix("http://")
    with pytest.raises(ServeError, match="clip_image"):
        TritonServer(f"s3://{host}/bare/v1", startup_timeout_s=60).start()


def test_push_errors(s3, store: str, clip_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="s3://"):
        push(clip_repo, "gs://models/v1", endpoint_url=store)
    with pytest.raises(RepositoryError, match="not a folder"):
        push(tmp_path / "nope", "s3://models/v1", endpoint_url=store)
    with pytest.raises(RepositoryError, match="cannot write"):
        push(clip_repo, "s3://no-such-bucket/v1", endpoint_url=store)


def test_deploy_sizes_from_the_store(s3, store: str, clip_repo: Path, tmp_path: Path) -> None:
    """`vlpserve deploy kubernetes` reads the pushed repository's configs and sizes from the
    store itself: the same shape as the local folder's."""
    from vlpserve.deploy import inspect

    s3.create_bucket(Bucket="deploy")
    push(clip_repo, "s3://deploy/v1", endpoint_url=store)
    url = f"s3://{store.removeprefix('http://')}/deploy/v1"
    assert inspect(url) == inspect(clip_repo)
    assert main(["deploy", "kubernetes", "--repo", url, "--out", str(tmp_path), "--insecure"]) == 0
    assert (tmp_path / "deployment.yaml").is_file()
    assert main(["deploy", "kubernetes", "--repo", f"{url}-missing", "--out", str(tmp_path)]) == 1


@pytest.fixture(scope="module")
def https_store(certificates) -> Iterator[str]:
    """The same S3-compatible server over HTTPS on 127.0.0.1 (moto's application behind
    werkzeug with the test's certificate); yields its endpoint URL."""
    import threading

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    port = free_port()
    app = DomainDispatcherApplication(create_backend_app)
    identity = (str(certificates["server_cert"]), str(certificates["server_key"]))
    server = make_server("127.0.0.1", port, app, threaded=True, ssl_context=identity)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_a_store_over_https(
    https_store: str, certificates, clip_repo: Path, tmp_path: Path, monkeypatch
) -> None:
    """Triton's spelling of a store over TLS, s3://https://host:port/bucket/prefix: the
    sizing reads it over HTTPS (the CA from AWS_CA_BUNDLE), and deploy renders it."""
    import boto3
    import yaml

    from vlpserve.deploy import inspect
    from vlpserve.deploy.sizing import split_triton_s3

    for name, value in (("AWS_ACCESS_KEY_ID", "t"), ("AWS_SECRET_ACCESS_KEY", "t")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(certificates["ca"]))
    boto3.client("s3", endpoint_url=https_store).create_bucket(Bucket="tls")
    push(clip_repo, "s3://tls/v1", endpoint_url=https_store)
    url = f"s3://{https_store}/tls/v1"  # s3://https://127.0.0.1:port/tls/v1
    assert split_triton_s3(url) == (https_store, "tls", "v1")
    assert split_triton_s3("s3://minio:9000/b/p") == ("http://minio:9000", "b", "p")
    assert split_triton_s3("s3://b/p/q") == (None, "b", "p/q")
    assert inspect(url) == inspect(clip_repo)
    argv = ["deploy", "kubernetes", "--repo", url, "--out", str(tmp_path), "--insecure"]
    assert main(argv) == 0
    deployment = yaml.safe_load((tmp_path / "deployment.yaml").read_text())
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["serve", url]
    kserve = ["--format", "kserve", "--out", str(tmp_path / "ks")]
    assert main([*argv[:4], *kserve, "--insecure"]) == 0
    service = yaml.safe_load((tmp_path / "ks" / "inferenceservice.yaml").read_text())
    assert service["spec"]["predictor"]["model"]["storageUri"] == "s3://tls/v1"
