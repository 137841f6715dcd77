"""Carry what ``vlpserve gpu-check`` needs to a lent GPU machine that has no network, in as
few calls as the device tool's 64 MiB per call allows, and run it there.

The lent machines (benchmarks/RESULTS.md, the device tool's KINDS.md) have Python 3.12,
PyTorch with CUDA 13, transformers 5, numpy 2 and a CPU-only onnxruntime; no tritonclient
and no tritonserver. The check needs, besides the repository itself:

* ``nvidia-pytriton`` (tritonserver 2.51 and its Python backend stub for 3.12),
* ``numpy<2`` for that stub (built with pybind11 2.10: pyproject.toml, [serve]),
* ``tritonclient`` and ``python-rapidjson`` (the bench's client),
* ``onnxruntime-gpu`` (built for CUDA 13 and cuDNN 9 for CUDA 13, which the image has):
  without it the served graphs would run on the CPU, and gpu-check says so and measures
  nothing.

Both steps run as a file, ``python3 benchmarks/gpu_carry.py prepare|device``: it imports
nothing but the standard library. ``prepare`` (here) downloads them for the machine's
Python, installs them into one folder (``pip install --target``), packs that folder as one
xz tarball (its contents compress far better than the wheels: 329 MB of wheels become
251 MB) and cuts it into parts that fit
a call beside the working tree. It prints the calls: each carries one part, and runs
``device``, which keeps the part (build/ outputs stay on a warm machine) and, once every part
is there, joins and checks them, unpacks the folder and runs ``vlpserve gpu-check`` with it
first on PYTHONPATH (the server's stubs inherit it).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FOLDER = Path("build/gpu-carry")  # relative to the repository root, here and there
MANIFEST = "manifest.json"
WHEELS = (
    "nvidia-pytriton==0.7.0",
    "numpy==1.26.4",
    "tritonclient==2.73.0",
    "python-rapidjson==1.25",
    "onnxruntime-gpu==1.31.1",
)
PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64")
CALL_LIMIT_MIB = 64  # the device tool's: working tree and carried paths together
SITE = Path("/tmp/vlpserve-gpu-site")  # where ``device`` unpacks the folder


def _foreign(python_version: str) -> list[str]:
    """pip options for wheels of another interpreter (the machine's)."""
    options = ["--only-binary=:all:", "--python-version", python_version, "--implementation"]
    options.append("cp")
    for platform in PLATFORMS:
        options += ["--platform", platform]
    return options


def tree_mib(root: Path = ROOT) -> float:
    """What the working tree weighs when it travels (tracked and untracked-not-ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    total = sum((root / name.decode()).stat().st_size for name in listed if name)
    return total / 2**20


def split(blob: Path, folder: Path, part_bytes: int) -> list[Path]:
    """``blob`` cut into ``part-NN`` files of at most ``part_bytes``."""
    parts: list[Path] = []
    with blob.open("rb") as source:
        while chunk := source.read(part_bytes):
            part = folder / f"part-{len(parts) + 1:02d}"
            part.write_bytes(chunk)
            parts.append(part)
    return parts


def sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as source:
            while chunk := source.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def prepare(python_version: str, out: Path, part_mib: float | None = None) -> dict[str, object]:
    """Download, install into one folder, pack, cut; returns (and writes) the manifest."""
    wheels, site = out / f"wheels-{python_version}", out / "site"
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    foreign = _foreign(python_version)
    download = [*pip, "download", "-q", "--no-deps", *foreign, "-d", str(wheels)]
    subprocess.run([*download, *WHEELS], check=True)
    found = sorted(wheels.glob("*.whl"))
    shutil.rmtree(site, ignore_errors=True)
    install = [*pip, "install", "-q", "--no-deps", "--no-compile", *foreign, "--target", str(site)]
    subprocess.run([*install, *map(str, found)], check=True)
    bundle = out / "site.tar.xz"
    # xz on every core here (the CUDA provider alone is 284 MB unpacked); the machine there
    # unpacks with Python's own lzma.
    with bundle.open("wb") as target:
        xz = subprocess.Popen(["xz", "-T0", "-6", "-c"], stdin=subprocess.PIPE, stdout=target)
        assert xz.stdin is not None
        with tarfile.open(fileobj=xz.stdin, mode="w|") as tar:
            tar.add(site, arcname="site")
        xz.stdin.close()
        if xz.wait() != 0:
            raise RuntimeError("xz failed")
    for old in out.glob("part-*"):
        old.unlink()
    limit = part_mib if part_mib is not None else CALL_LIMIT_MIB - tree_mib() - 2
    parts = split(bundle, out, int(limit * 2**20))
    manifest: dict[str, object] = {
        "python": python_version,
        "wheels": [path.name for path in found],
        "sha256": sha256(parts),
        "parts": [part.name for part in parts],
        "bytes": bundle.stat().st_size,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    bundle.unlink()
    return manifest


class Joined(io.RawIOBase):
    """The parts read back to back, as one stream."""

    def __init__(self, parts: list[Path]) -> None:
        self.parts = list(parts)
        self.current: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self.current is None:
                if not self.parts:
                    return 0
                self.current = self.parts.pop(0).open("rb")
            count = self.current.readinto(buffer)
            if count:
                return count
            self.current.close()
            self.current = None


def calls(manifest: dict[str, object], device_args: str = "") -> list[dict[str, object]]:
    """The device tool calls, back to back on one warm machine: each carries a part."""
    # Run as a file: the package's __init__ imports tritonclient, which is not there yet.
    command = f"python3 benchmarks/gpu_carry.py device {device_args}".strip()
    return [
        {"carry": [str(FOLDER / MANIFEST), str(FOLDER / str(part))], "command": command}
        for part in manifest["parts"]  # type: ignore[attr-defined]
    ]


def unpack(folder: Path, site: Path) -> str:
    """Join and check the parts, unpack the folder into ``site`` (once per bundle); returns
    what is still missing ("" when unpacked)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    missing = [name for name in manifest["parts"] if not (folder / name).is_file()]
    if missing:
        return f"{len(manifest['parts']) - len(missing)} of {len(manifest['parts'])} parts here"
    marker = site / ".bundle"
    if marker.is_file() and marker.read_text() == manifest["sha256"]:
        return ""
    parts = [folder / name for name in manifest["parts"]]
    if sha256(parts) != manifest["sha256"]:
        raise SystemExit("the parts do not add up to the bundle prepared (sha256 differs)")
    staging = site.parent / f".{site.name}.unpacking"
    shutil.rmtree(site, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(fileobj=io.BufferedReader(Joined(parts), 1 << 20), mode="r|xz") as tar:
        tar.extractall(staging, filter="fully_trusted")  # our own bundle, checked above
    (staging / "site").rename(site)
    shutil.rmtree(staging, ignore_errors=True)
    marker.write_text(manifest["sha256"])
    return ""


def first_on_path(*folders: Path) -> Path:
    """Put ``folders`` first on this interpreter's import path, for every process it starts
    (a .pth line in its site-packages). PYTHONPATH is not enough: the Python backend's stub
    does not read it (seen here: "No module named 'tritonclient'" with it set), and a venv
    on top of the image's own venv would not see the image's packages. The site folder's
    numpy 1.26 then comes before the image's numpy 2."""
    import site as sitemodule

    purelib = Path(sitemodule.getsitepackages()[0])
    line = f"import sys; sys.path[0:0] = {[str(f) for f in folders]!r}\n"
    pth = purelib / "00-vlpserve-gpu-carry.pth"
    pth.write_text(line)
    return pth


def device(folder: Path, site: Path, check_args: list[str]) -> int:
    """One call on the lent machine: report the parts; with all of them, run the check."""
    missing = unpack(folder, site)
    if missing:
        print(f"gpu-carry: {missing}; carry the next part")
        return 0
    out = Path(os.environ.get("OUT", "build/gpu-check-out")) / "gpu-check"
    first_on_path(site, ROOT)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    probe = "import numpy, onnxruntime; print('numpy', numpy.__version__, 'onnxruntime', "
    probe += "onnxruntime.__version__, onnxruntime.get_available_providers())"
    subprocess.run([sys.executable, "-c", probe], env=env, check=False)
    command = [sys.executable, "-m", "vlpserve", "gpu-check", "--out", str(out), *check_args]
    return subprocess.run(command, env=env, cwd=ROOT, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 benchmarks/gpu_carry.py")
    sub = parser.add_subparsers(dest="step", required=True)
    here = sub.add_parser("prepare", help="here: download, pack and cut what must travel")
    here.add_argument("--python-version", default="3.12", help="the lent machine's Python")
    here.add_argument("--part-mib", type=float, default=None, help="default: what fits a call")
    here.add_argument("--check-args", default="", help="gpu-check options for the last call")
    there = sub.add_parser("device", help="there, in each call: keep the part; run when whole")
    there.add_argument("--site", default=str(SITE))
    args, rest = parser.parse_known_args(argv)
    if args.step == "prepare":
        manifest = prepare(args.python_version, ROOT / FOLDER, args.part_mib)
        print(json.dumps(manifest, indent=2))
        for index, call in enumerate(calls(manifest, args.check_args), start=1):
            print(f"call {index}: carry={json.dumps(call['carry'])} command={call['command']!r}")
        return 0
    return device(ROOT / FOLDER, Path(args.site), rest)


if __name__ == "__main__":
    raise SystemExit(main())
