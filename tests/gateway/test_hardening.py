"""The front door exposed: bounded work per request, fair to small callers, slow senders cut
off, its own key and TLS. Real sockets on loopback, a real tritonserver behind."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from vlpserve.client import AuthenticationError, Client
from vlpserve.errors import ConfigError
from vlpserve.gateway.app import GatewayOptions
from vlpserve.gateway.server import GatewayThread
from vlpserve.serve import Security, TritonServer, free_port


def _post(url: str, body: bytes, key: str | None = None, timeout: float = 60) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"{url}/embeddings", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text or b"{}")
        except ValueError:  # uvicorn's own plain-text answers (503 over the connection limit)
            return exc.code, {"raw": text.decode(errors="replace")}


@pytest.fixture(scope="module")
def door(triton) -> Iterator[GatewayThread]:
    """Short deadlines and few connections, so that the tests see them act."""
    options = GatewayOptions(
        triton=triton.grpc_url, head_timeout_s=1.0, body_timeout_s=1.0, max_connections=6
    )
    thread = GatewayThread(options, "127.0.0.1", free_port()).start()
    yield thread
    thread.stop()


def test_items_per_request_are_bounded(door) -> None:
    body = json.dumps({"model": "clip", "input": ["x"] * 2049}).encode()
    status, answer = _post(door.url, body)
    assert status == 400 and "2049 items, more than 2048" in answer["error"]["message"]
    status, answer = _post(door.url, json.dumps({"model": "clip", "input": ["x"] * 3}).encode())
    assert status == 200 and len(answer["data"]) == 3


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_deeply_nested_json_is_a_400(door, opening: str) -> None:
    status, answer = _post(door.url, (opening * 200_000).encode())
    assert status == 400 and "nested too deeply" in answer["error"]["message"]


def test_a_large_request_does_not_starve_small_ones(door, triton) -> None:
    """2048 long texts in flight; a 12-text request sent once the large one is being
    computed is answered long before it (it queues behind one part of it, not all of it).
    Three batches, so it shares the client's queue of chunks (a single chunk skips it)."""
    import tritonclient.grpc as grpcclient

    texts = [f"text number {i} " + "with a long tail of words " * 8 for i in range(2048)]
    large = json.dumps({"model": "clip", "input": texts}).encode()
    small = json.dumps({"model": "clip", "input": [f"small {i}" for i in range(12)]}).encode()
    stats = grpcclient.InferenceServerClient(triton.grpc_url)

    def served() -> int:
        entry = stats.get_inference_statistics("clip_text", as_json=True)["model_stats"][0]
        return int(entry["inference_stats"]["success"].get("count", 0))

    finished: dict[str, float] = {}

    def send_large() -> None:
        assert _post(door.url, large, timeout=300)[0] == 200
        finished["large"] = time.monotonic()

    before = served()
    started = time.monotonic()
    thread = threading.Thread(target=send_large)
    thread.start()
    while served() < before + 40 and thread.is_alive():  # the large one is being computed
        time.sleep(0.01)
    sent = time.monotonic()
    assert _post(door.url, small)[0] == 200
    finished["small"] = time.monotonic()
    thread.join(300)
    stats.close()
    large_took = finished["large"] - started
    assert finished["small"] < finished["large"], finished
    assert finished["small"] - sent < 0.25 * large_took, (finished["small"] - sent, large_took)


def _trickling(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing ``sock`` within ``seconds`` (one byte trickled
    every 0.2 s meanwhile), or None if it kept it open."""
    deadline = time.monotonic() + seconds
    received = b""
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"x")
        except OSError:
            return received
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return received
        if not data:
            return received
        received += data
    return None


def test_slow_senders_are_cut_off_and_others_served(door) -> None:
    port = int(door.url.rsplit(":", 1)[1].split("/")[0])
    heads = [
        _trickling(port, b"POST /v1/embeddings HTTP/1.1\r\nHost: a\r\nX-Slow: ") for _ in range(3)
    ]
    body_head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: a\r\ncontent-type: application/json\r\n"
        b"content-length: 100000\r\n\r\n{"
    )
    body = _trickling(port, body_head)
    try:
        # Meanwhile, a whole request is served.
        ok = json.dumps({"model": "clip", "input": ["meanwhile"]}).encode()
        assert _post(door.url, ok)[0] == 200
        for sock in heads:  # no request head after 1 s: closed without an answer
            assert _closed_within(sock, 5.0) == b""
        answer = _closed_within(body, 5.0)  # the body never completes: 408
        assert answer is not None and answer.startswith(b"HTTP/1.1 408")
    finally:
        for sock in [*heads, body]:
            sock.close()
    assert _post(door.url, ok)[0] == 200


def test_connections_are_bounded(door) -> None:
    port = int(door.url.rsplit(":", 1)[1].split("/")[0])
    idle = [_trickling(port, b"GET /v1/mod") for _ in range(6)]
    try:
        ok = json.dumps({"model": "clip", "input": ["over the limit"]}).encode()
        assert _post(door.url, ok)[0] == 503  # beyond max_connections
        time.sleep(2.0)  # their head deadline passes: the server closes them
        assert _post(door.url, ok)[0] == 200
    finally:
        for sock in idle:
            sock.close()


def test_the_front_door_has_its_own_key_and_tls(clip_repo: Path, certificates) -> None:
    with pytest.raises(ConfigError, match="key of their own"):
        GatewayOptions(triton="x:1", api_key="same", triton_api_key="same")
    security = Security(api_key="server-key")
    with TritonServer(clip_repo, security=security) as server:
        options = GatewayOptions(
            triton=server.grpc_url,
            api_key="door-key",
            triton_api_key="server-key",
            tls_cert=str(certificates["server_cert"]),
            tls_key=str(certificates["server_key"]),
        )
        door = GatewayThread(options, "127.0.0.1", free_port()).start()
        try:
            assert door.url.startswith("https://")
            context = ssl.create_default_context(cafile=str(certificates["ca"]))
            body = json.dumps({"model": "clip", "input": ["over TLS"]}).encode()
            request = urllib.request.Request(
                f"{door.url}/embeddings",
                data=body,
                headers={"content-type": "application/json", "authorization": "Bearer door-key"},
            )
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                assert len(json.loads(response.read())["data"]) == 1
            plain = door.url.replace("https://", "http://")
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                urllib.request.urlopen(f"{plain}/models", timeout=10)
            # The front door's key opens nothing on Triton itself.
            client = Client(server.grpc_url, api_key="door-key", retries=0)
            with client, pytest.raises(AuthenticationError):
                client.embed_texts(["raw model, the door's key"])
        finally:
            door.stop()
