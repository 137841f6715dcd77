"""benchmarks/gpu_carry.py: a bundle cut into parts that fit the device tool's calls, and
joined, checked and unpacked on the other side, one call at a time. (The whole path, with
the real wheels and gpu-check, was tried by hand: benchmarks/RESULTS.md.)"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from vlpserve.benchmarks import gpu_carry


def _bundle(tmp_path: Path) -> tuple[Path, Path]:
    """A site folder with an executable and 3 MB of incompressible bytes, packed as
    ``prepare`` packs it."""
    import os

    site = tmp_path / "site"
    (site / "pkg" / "bin").mkdir(parents=True)
    (site / "pkg" / "data.bin").write_bytes(os.urandom(3 << 20))
    tool = site / "pkg" / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho ok\n")
    tool.chmod(0o755)
    blob = tmp_path / "site.tar.xz"
    with blob.open("wb") as target:
        xz = subprocess.Popen(["xz", "-T0", "-c"], stdin=subprocess.PIPE, stdout=target)
        assert xz.stdin is not None
        with tarfile.open(fileobj=xz.stdin, mode="w|") as tar:
            tar.add(site, arcname="site")
        xz.stdin.close()
        assert xz.wait() == 0
    return site, blob


def test_parts_travel_one_call_at_a_time(tmp_path: Path) -> None:
    site, blob = _bundle(tmp_path)
    here = tmp_path / "here"
    here.mkdir()
    parts = gpu_carry.split(blob, here, 1 << 20)
    assert len(parts) == 4 and all(p.stat().st_size <= 1 << 20 for p in parts)
    manifest = {"sha256": gpu_carry.sha256(parts), "parts": [p.name for p in parts]}
    (here / gpu_carry.MANIFEST).write_text(json.dumps(manifest))
    calls = gpu_carry.calls(manifest, "--size base")
    assert [c["carry"][1] for c in calls] == [f"build/gpu-carry/part-0{i}" for i in range(1, 5)]
    assert calls[0]["command"] == "python3 benchmarks/gpu_carry.py device --size base"

    there = tmp_path / "there"
    there.mkdir()
    unpacked = tmp_path / "unpacked" / "site"
    (there / gpu_carry.MANIFEST).write_bytes((here / gpu_carry.MANIFEST).read_bytes())
    for count, part in enumerate(parts, start=1):
        (there / part.name).write_bytes(part.read_bytes())  # this call's carry
        left = gpu_carry.unpack(there, unpacked)
        assert left == ("" if count == 4 else f"{count} of 4 parts here")
    assert (unpacked / "pkg" / "data.bin").read_bytes() == (site / "pkg" / "data.bin").read_bytes()
    tool = unpacked / "pkg" / "bin" / "tool"
    assert subprocess.run([str(tool)], capture_output=True, text=True).stdout == "ok\n"
    assert gpu_carry.unpack(there, unpacked) == ""  # once per bundle: a rerun keeps it


def test_a_damaged_part_is_refused(tmp_path: Path) -> None:
    _, blob = _bundle(tmp_path)
    parts = gpu_carry.split(blob, tmp_path, 1 << 20)
    manifest = {"sha256": gpu_carry.sha256(parts), "parts": [p.name for p in parts]}
    (tmp_path / gpu_carry.MANIFEST).write_text(json.dumps(manifest))
    data = bytearray(parts[1].read_bytes())
    data[100] ^= 0xFF
    parts[1].write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="sha256 differs"):
        gpu_carry.unpack(tmp_path, tmp_path / "site")


def test_parts_fit_a_call_beside_the_tree() -> None:
    assert 0 < gpu_carry.tree_mib() < gpu_carry.CALL_LIMIT_MIB / 2
