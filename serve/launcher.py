"""Launch the real tritonserver binary and wait until it serves.

By default the binary comes from the nvidia-pytriton wheel, whose Python backend needs the
stub built for the running Python copied beside it and the interpreter's LIBDIR on
LD_LIBRARY_PATH. The stub finds its packages through the first ``python3`` on PATH, so the
running interpreter's bin folder goes first there.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from vlpserve.errors import ServeError

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pytriton_root() -> Path:
    """The tritonserver folder inside the installed nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    for location in (spec.submodule_search_locations or []) if spec else []:
        root = Path(location) / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            return root
    raise ServeError(
        "tritonserver not found: install it with `pip install 'vlpserve[serve]'` "
        "or pass --tritonserver PATH"
    )


def prepare_backends(root: Path, cache: Path) -> Path:
    """A backends folder whose Python backend has the stub for this interpreter."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServeError(f"the pytriton wheel has no Python backend stub for Python {version}")
    target = cache / "backends"
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in (root / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, python_dir / item.name)
    shutil.copy2(stub, python_dir / stub.name)
    return target


@dataclass
class TritonServer:
    """A tritonserver process serving ``repository``; a context manager.

    Ports default to free ones. ``tritonserver`` names another installation's binary (an
    NGC container's), whose own backends are then used.
    """

    repository: Path
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    tritonserver: Path | None = None
    startup_timeout_s: float = 180.0
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.repository = Path(self.repository).resolve()
        self.grpc_port = self.grpc_port or free_port()
        self.http_port = self.http_port or free_port()
        self.metrics_port = self.metrics_port or free_port()

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"localhost:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://localhost:{self.metrics_port}/metrics"

    def command(self, backends: Path | None) -> list[str]:
        binary = self.tritonserver or pytriton_root() / "bin" / "tritonserver"
        args = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--exit-timeout-secs=10",
        ]
        if backends:
            args.append(f"--backend-directory={backends}")
        return args + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
        libdirs = [sysconfig.get_config_var("LIBDIR") or ""]
        if not self.tritonserver:
            # The stub's RPATH is relative to its place in the wheel, which the copy leaves.
            libdirs.append(str(pytriton_root().parent.parent / "nvidia_pytriton.libs"))
        libdirs.append(env.get("LD_LIBRARY_PATH", ""))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libdirs if p)
        return env

    def start(self) -> TritonServer:
        """Start the server and block until it is ready (ServeError on failure)."""
        if not self.repository.is_dir():
            raise ServeError(f"model repository {self.repository} does not exist")
        self._workdir = tempfile.TemporaryDirectory(prefix="vlpserve-triton-")
        workdir = Path(self._workdir.name)
        backends = None if self.tritonserver else prepare_backends(pytriton_root(), workdir)
        self.log_path = self.log_path or workdir / "tritonserver.log"
        log = self.log_path.open("wb")
        logger.info("starting tritonserver on gRPC %s", self.grpc_url)
        self._process = subprocess.Popen(
            self.command(backends),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient

        process = self._process
        if process is None:
            raise ServeError("tritonserver was not started")
        client = grpcclient.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise ServeError(
                        f"tritonserver exited with code {process.returncode}:\n" + self.log_tail()
                    )
                try:
                    if client.is_server_ready(client_timeout=2):
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.25)
        finally:
            client.close()
        raise ServeError(
            f"tritonserver not ready after {self.startup_timeout_s:.0f} s:\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning("tritonserver did not stop in %.0f s: killing it", timeout_s)
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            code = process.returncode
        if self._workdir is not None:
            if self.log_path and self.log_path.is_relative_to(self._workdir.name):
                self.log_path = None
            self._workdir.cleanup()
            self._workdir = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
