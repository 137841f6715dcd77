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
    """--host moves gRPC alone: metrics (plaintext) stay on loopback unless named."""
    security = Security(host="127.0.0.2", http=False)
    with TritonServer(clip_repo, security=security) as server:
        assert server.grpc_url.startswith("127.0.0.2:")
        assert _listening(server.grpc_port) == {"127.0.0.2"}
        assert _listening(server.metrics_port) == {"127.0.0.1"}
        assert _listening(server.http_port) == set()  # --no-http: nothing listens
        with Client(server.grpc_url) as client:
            assert client.embed_texts(["on 127.0.0.2"]).shape == (1, 16)


def test_each_endpoint_listens_where_it_is_told(clip_repo: Path) -> None:
    security = Security(host="127.0.0.2", http_host="127.0.0.3", metrics_host="127.0.0.4")
    with TritonServer(clip_repo, security=security) as server:
        assert _listening(server.grpc_port) == {"127.0.0.2"}
        assert _listening(server.http_port) == {"127.0.0.3"}
        assert _listening(server.metrics_port) == {"127.0.0.4"}
        assert server.http_url.startswith("127.0.0.3:")
        assert server.metrics_url.startswith("http://127.0.0.4:")
        ready = f"http://{server.http_url}/v2/health/ready"
        assert urllib.request.urlopen(ready, timeout=5).status == 200
        with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
            assert b"nv_inference" in response.read()


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"host": "0.0.0.0"}, "gRPC on 0.0.0.0"),
        ({"host": "10.1.2.3", "tls": True}, "gRPC on 10.1.2.3"),  # TLS alone admits anyone
        ({"http_host": "0.0.0.0", "tls": True, "mutual": True}, "HTTP on 0.0.0.0"),
        ({"metrics_host": "0.0.0.0"}, "metrics on 0.0.0.0"),
        ({"host": "::", "http_host": "0.0.0.0"}, "gRPC on :: and HTTP on 0.0.0.0"),
        ({"host": "0.0.0.0", "api_key": KEY}, None),
        ({"host": "0.0.0.0", "tls": True, "mutual": True, "metrics_host": "0.0.0.0"}, None),
        ({"http_host": "0.0.0.0", "metrics_host": "0.0.0.0", "api_key": KEY}, None),
        ({"host": "0.0.0.0", "http_host": "0.0.0.0", "insecure": True}, None),
        ({"host": "127.0.0.5", "http_host": "localhost", "metrics_host": "::1"}, None),
        ({"http_host": "0.0.0.0", "http": False}, None),  # no HTTP, nothing exposed
    ],
)
def test_exposing_needs_a_key_or_client_certificates(
    options: dict, refused: str | None, certificates
) -> None:
    options = dict(options)
    if options.pop("tls", False):
        options |= {"tls_cert": certificates["server_cert"], "tls_key": certificates["server_key"]}
    if options.pop("mutual", False):
        options["tls_ca"] = certificates["ca"]
    if refused is None:
        Security(**options)
        return
    with pytest.raises(ConfigError) as info:
        Security(**options)
    message = str(info.value)
    assert message.startswith(refused) and "would answer anyone" in message
    assert "--api-key-file" in message and "--insecure" in message


def test_serve_refuses_an_open_exposure_and_starts_nothing(
    clip_repo: Path, capsys, tmp_path: Path
) -> None:
    from vlpserve.cli import main

    before = {p.name for p in Path("/proc").iterdir() if p.name.isdigit()}
    assert main(["serve", str(clip_repo), "--host", "0.0.0.0"]) == 1
    assert "gRPC on 0.0.0.0 would answer anyone" in capsys.readouterr().err
    argv = ["serve", str(clip_repo), "--openai-port", "1", "--openai-host", "0.0.0.0"]
    assert main(argv) == 1
    assert "front door on 0.0.0.0" in capsys.readouterr().err
    assert main(["openai", "--triton", "127.0.0.1:1", "--host", "0.0.0.0"]) == 1
    assert "--insecure" in capsys.readouterr().err
    key = tmp_path / "server-key"
    key.write_text(KEY)
    keyed = ["serve", str(clip_repo), "--api-key-file", str(key), "--openai-port", "1"]
    assert main(keyed) == 1  # the front door would answer without the server's key
    assert "--openai-key-file" in capsys.readouterr().err
    assert main([*keyed, "--openai-key-file", str(key)]) == 1  # the same key
    assert "key of their own" in capsys.readouterr().err
    started = {p.name for p in Path("/proc").iterdir() if p.name.isdigit()} - before
    assert not any("tritonserver" in _comm(pid) for pid in started)


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text()
    except OSError:
        return ""


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
    # The raw log, not log_tail() (which redacts): tritonserver's own lines too.
    assert keyed.log_path.read_text(errors="replace") and KEY not in keyed.log_path.read_text()

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


def test_what_no_caller_needs_is_closed_even_with_the_key(keyed) -> None:
    """Shared memory (system and CUDA), trace and log settings answer the launcher alone:
    the pip build's published CVEs (2025-23319/23320/23334) go through shared memory."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(keyed.grpc_url))
    metadata = (("triton-grpc-protocol-authorization", f"Bearer {KEY}"),)
    calls = {
        "system shared memory": lambda: stub.SystemSharedMemoryStatus(
            pb.SystemSharedMemoryStatusRequest(), timeout=10, metadata=metadata
        ),
        "register": lambda: stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name="r", key="/triton_x", byte_size=64),
            timeout=10,
            metadata=metadata,
        ),
        "CUDA shared memory": lambda: stub.CudaSharedMemoryStatus(
            pb.CudaSharedMemoryStatusRequest(), timeout=10, metadata=metadata
        ),
        "trace": lambda: stub.TraceSetting(pb.TraceSettingRequest(), timeout=10, metadata=metadata),
        "logging": lambda: stub.LogSettings(pb.LogSettingsRequest(), timeout=10, metadata=metadata),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert "restricted" in info.value.details(), name
    base = f"http://{keyed.http_url}"
    for path in (
        "/v2/systemsharedmemory/status",
        "/v2/cudasharedmemory/status",
        "/v2/trace/setting",
        "/v2/logging",
    ):
        request = urllib.request.Request(base + path, headers={"authorization": f"Bearer {KEY}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403, path
    # What callers use still answers them, and health answers anyone.
    stats = stub.ModelStatistics(
        pb.ModelStatisticsRequest(name="clip_text"), timeout=10, metadata=metadata
    )
    assert stats.model_stats
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


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
