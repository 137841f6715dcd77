"""Secure by default: loopback only, TLS and mutual TLS, an API key, no model loading from
outside, no HTTP when asked. Real servers, real certificates made at test time."""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from vlpserve.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConnectionSecurityError,
)
from vlpserve.errors import ConfigError
from vlpserve.serve import Security, TritonServer, api_key_from

KEY = "test-key-3f9a2c"


def _listening(port: int) -> set[str]:
    """IPv4 addresses listening on ``port`` (from /proc/net/tcp and tcp6, where gRPC puts
    an IPv4-mapped address; "::" for an IPv6 socket on every address)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            if table == "tcp6" and not address.startswith("0000000000000000FFFF0000"):
                found.add("::")
                continue
            tail = address[-8:]  # little-endian IPv4
            found.add(".".join(str(int(tail[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_every_endpoint_listens_on_loopback_by_default(triton) -> None:
    for port in (triton.grpc_port, triton.http_port, triton.metrics_port):
        assert _listening(port) == {"127.0.0.1"}, port


def test_host_and_no_http(clip_repo: Path) -> None:
    security = Security(host="127.0.0.2", http=False)
    with TritonServer(clip_repo, security=security) as server:
        assert server.grpc_url.startswith("127.0.0.2:")
        assert _listening(server.grpc_port) == {"127.0.0.2"}
        assert _listening(server.metrics_port) == {"127.0.0.2"}
        assert _listening(server.http_port) == set()  # --no-http: nothing listens
        with Client(server.grpc_url) as client:
            assert client.embed_texts(["on 127.0.0.2"]).shape == (1, 16)


@pytest.fixture(scope="module")
def keyed(clip_repo: Path):
    with TritonServer(clip_repo, security=Security(api_key=KEY)) as server:
        yield server


def test_api_key_is_required_and_never_retried(keyed, caplog) -> None:
    caplog.set_level(logging.INFO, logger="vlpserve.client")
    with Client(keyed.grpc_url, api_key=KEY) as client:
        expected = client.embed_texts(["a cat"])
    for key in (None, "wrong-key"):
        started = time.monotonic()
        with Client(keyed.grpc_url, api_key=key, retries=5) as client:
            with pytest.raises(AuthenticationError) as info:
                client.embed_texts(["a cat"])
            assert client.ready()  # health stays open, for probes
        assert time.monotonic() - started < 1.0 and "retrying" not in caplog.text
        assert KEY not in str(info.value) and "wrong-key" not in str(info.value)
    assert KEY not in keyed.log_tail()

    async def with_key() -> np.ndarray:
        async with AsyncClient(keyed.grpc_url, api_key=KEY) as client:
            return await client.embed_texts(["a cat"])

    import asyncio

    np.testing.assert_allclose(asyncio.run(with_key()), expected, atol=1e-6)


def test_http_takes_the_same_key(keyed) -> None:
    base = f"http://{keyed.http_url}"
    assert urllib.request.urlopen(f"{base}/v2/health/ready", timeout=5).status == 200
    config = f"{base}/v2/models/clip_text/config"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(config, timeout=5)
    assert info.value.code == 403
    request = urllib.request.Request(config, headers={"authorization": f"Bearer {KEY}"})
    assert urllib.request.urlopen(request, timeout=5).status == 200


def test_models_cannot_be_loaded_or_unloaded_from_outside(keyed) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(keyed.grpc_url))
    metadata = (("triton-grpc-protocol-authorization", f"Bearer {KEY}"),)  # even with the key
    for call in (
        lambda: stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="clip_text"), timeout=10, metadata=metadata
        ),
        lambda: stub.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="clip_text"), timeout=10, metadata=metadata
        ),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert "restricted" in info.value.details()
    base = f"http://{keyed.http_url}/v2/repository/models/clip_text/unload"
    request = urllib.request.Request(
        base, data=b"{}", method="POST", headers={"authorization": f"Bearer {KEY}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 403
    with Client(keyed.grpc_url, api_key=KEY) as client:
        assert client.ready() and client.embed_texts(["still served"]).shape == (1, 16)


def test_api_key_from_file_or_environment(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(f"{KEY}\n")
    assert api_key_from(path, {}) == KEY
    assert api_key_from(None, {"VLPSERVE_API_KEY": KEY}) == KEY
    assert api_key_from(None, {}) is None
    path.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        api_key_from(path, {})
    with pytest.raises(ConfigError, match="one word"):
        Security(api_key="two words")


@pytest.fixture(scope="module")
def tls_server(clip_repo: Path, certificates):
    security = Security(tls_cert=certificates["server_cert"], tls_key=certificates["server_key"])
    with TritonServer(clip_repo, security=security) as server:
        yield server


def test_tls(tls_server, certificates, triton) -> None:
    url = f"localhost:{tls_server.grpc_port}"
    with Client(url, tls_ca=certificates["ca"]) as client:
        served = client.embed_texts(["over TLS"])
    with Client(triton.grpc_url) as plain:
        np.testing.assert_allclose(served, plain.embed_texts(["over TLS"]), atol=1e-6)
    for options in ({}, {"tls_ca": certificates["other_ca"]}):  # plaintext; an untrusted CA
        started = time.monotonic()
        client = Client(url, retries=5, **options)
        with client, pytest.raises(ConnectionSecurityError):
            client.embed_texts(["refused"])
        assert time.monotonic() - started < 2.0  # at once, not after the retries


def test_mutual_tls(clip_repo: Path, certificates) -> None:
    security = Security(
        tls_cert=certificates["server_cert"],
        tls_key=certificates["server_key"],
        tls_ca=certificates["ca"],
    )
    with TritonServer(clip_repo, security=security) as server:
        url = f"localhost:{server.grpc_port}"
        client = Client(url, tls_ca=certificates["ca"], retries=5)
        with client, pytest.raises(ConnectionSecurityError, match="client certificate"):
            client.embed_texts(["no certificate"])
        identity = {"tls_cert": certificates["client_cert"], "tls_key": certificates["client_key"]}
        with Client(url, tls_ca=certificates["ca"], **identity) as client:
            assert client.embed_texts(["with a certificate"]).shape == (1, 16)


def test_security_options_are_checked(certificates, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both"):
        Security(tls_cert=certificates["server_cert"])
    with pytest.raises(ConfigError, match="does not exist"):
        Security(tls_cert=tmp_path / "none.pem", tls_key=certificates["server_key"])
    assert "admin_key" not in repr(Security(api_key=KEY)) and KEY not in repr(Security(api_key=KEY))
