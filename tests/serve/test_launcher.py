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
