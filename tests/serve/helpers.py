"""`vlpserve serve` run as a user runs it, in a process of its own, for the fault tests:
every wait is bounded, and whatever it started is killed at the end."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from vlpserve.serve import free_port
from vlpserve.serve.supervisor import children, stubs


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Serve:
    """``python -m vlpserve serve <repo> ...`` with free ports; a context manager."""

    def __init__(self, repo: Path | None, *options: str) -> None:
        """``repo`` None: ``options`` are the whole command line after ``vlpserve``."""
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        command = [sys.executable, "-m", "vlpserve"]
        if repo is not None:
            command += ["serve", str(repo), "--grpc-port", str(self.grpc_port)]
            command += [
                "--http-port",
                str(self.http_port),
                "--metrics-port",
                str(self.metrics_port),
            ]
        command += options
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in iter(self.process.stdout.readline, b""):
            self._lines.put(line.decode(errors="replace"))
        self._lines.put(None)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_for(self, text: str, timeout_s: float = 180) -> str:
        """The output so far once a line holds ``text`` (AssertionError with it otherwise)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
            if text in line:
                return "".join(self.output)
        self.errors.seek(0)
        stderr = self.errors.read().decode(errors="replace")[-3000:]
        raise AssertionError(f"no {text!r} from vlpserve serve:\n{''.join(self.output)}{stderr}")

    def tritonserver(self) -> int:
        (pid,) = [p for p in children(self.process.pid) if "tritonserver" in _exe(p)]
        return pid

    def tree(self) -> list[int]:
        """The serve process, its tritonserver and every stub."""
        server = self.tritonserver()
        return [self.process.pid, server, *(stub.pid for stub in stubs(server))]

    def stop(self, signum: int, timeout_s: float) -> tuple[int, str, str]:
        """Send ``signum``; (exit code, everything it printed, its stderr) once it exits."""
        self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        while not self._lines.empty():
            line = self._lines.get()
            if line is not None:
                self.output.append(line)
        self.errors.seek(0)
        return code, "".join(self.output), self.errors.read().decode(errors="replace")

    def __enter__(self) -> Serve:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # tritonserver dies with its parent
            self.process.wait(timeout=30)
        self.errors.close()


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""
