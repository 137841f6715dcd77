"""The launcher: clear errors when the server cannot start, clean shutdown on signals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlpserve.errors import ServeError
from vlpserve.serve import TritonServer


def test_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="does not exist"):
        TritonServer(tmp_path / "nope").start()


def test_cpus_outside_the_process_affinity_are_refused(tmp_path: Path) -> None:
    outside = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(ServeError, match="may run on CPUs"):
        TritonServer(tmp_path, cpus=frozenset({outside}))
    with pytest.raises(ServeError, match="may run on CPUs"):
        TritonServer(tmp_path, cpus=frozenset())


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


def test_the_log_file_is_bounded_and_the_server_never_waits_on_it(clip_repo: Path) -> None:
    """Verbose logging (lines per request) through a 64 KiB file: it rotates, one previous
    file kept, never more on disk; every request is served; the tail reads across."""
    from vlpserve.client import Client

    limit = 65_536
    with TritonServer(clip_repo, log_verbose=1, log_max_bytes=limit) as server:
        assert server.log_path is not None
        previous = server.log_path.with_name(server.log_path.name + ".1")
        with Client(server.grpc_url, timeout_s=30) as client:
            for i in range(400):
                assert client.embed_texts([f"text {i}"]).shape == (1, 16)
                if i % 50 == 0:
                    assert server.log_path.stat().st_size <= limit
        assert previous.is_file() and previous.stat().st_size <= limit  # it rotated
        assert server.log_path.stat().st_size <= limit
        assert len(server.log_tail(2000).splitlines()) > 100


def test_log_stdout_echoes_tritonserver(clip_repo: Path) -> None:
    """`serve --log-stdout` (the manifests' setting): tritonserver's own lines on stdout,
    whole, beside serve's."""
    from tests.serve.helpers import Serve

    with Serve(clip_repo, "--log-stdout") as serve:
        output = serve.wait_for("serving;")
    assert "Started GRPCInferenceService at" in output
    assert all(line.endswith("\n") for line in serve.output)
