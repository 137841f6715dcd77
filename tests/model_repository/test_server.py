"""The launcher: clear errors when the server cannot start, clean shutdown on signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlpserve.client import Client
from vlpserve.errors import ServeError
from vlpserve.serve import TritonServer, free_port


def test_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="does not exist"):
        TritonServer(tmp_path / "nope").start()


def test_broken_model_fails_with_log_tail(tmp_path: Path) -> None:
    model = tmp_path / "broken" / "1"
    model.mkdir(parents=True)
    (tmp_path / "broken" / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
        'input { name: "X" data_type: TYPE_FP32 dims: [1] }\n'
        'output { name: "Y" data_type: TYPE_FP32 dims: [1] }\n'
    )
    (model / "model.py").write_text("raise RuntimeError('deliberately broken model')\n")
    server = TritonServer(tmp_path, startup_timeout_s=60)
    with pytest.raises(ServeError, match="exited with code") as info:
        server.start()
    assert "deliberately broken model" in str(info.value)
    assert not server.running()


def test_cli_serve_stops_cleanly_on_sigint(python_repo: Path) -> None:
    grpc_port = free_port()
    command = [sys.executable, "-m", "vlpserve", "serve", str(python_repo)]
    command += ["--grpc-port", str(grpc_port), "--http-port", str(free_port())]
    command += ["--metrics-port", str(free_port())]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline().decode()
            lines.append(line)
            if "serving" in line or not line:
                break
        assert f"gRPC     localhost:{grpc_port}" in "".join(lines), "".join(lines)
        with Client(f"localhost:{grpc_port}") as client:
            assert client.ready()
            assert client.embed_texts(["served by the CLI"]).shape == (1, 16)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err.decode()
    assert "stopped" in out.decode()
