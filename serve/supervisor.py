"""Watching a running tritonserver from outside: its Python-backend stubs and their memory.

Triton 2.51 keeps a model "ready" after its stub process dies (SIGKILL, out of memory) and
answers INTERNAL "Stub process ... is not healthy" to every request, for as long as one
waits: a load balancer would keep sending traffic to it. ``StubWatch`` notices a stub gone
within a poll interval and reloads that model (a config override that differs, so Triton
really reloads it, through the model-repository protocol only the launcher holds the key
of); the other models keep serving meanwhile.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

STUB = "triton_python_backend_stub"
PROC = Path("/proc")


@dataclass(frozen=True)
class Stub:
    """One Python-backend stub process: its pid and the model it serves."""

    pid: int
    model: str


def _stat(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": the name may hold spaces, so split after the ")"
    return text[text.rindex(")") + 2 :].split()


def _live(field: int, value: int) -> list[int]:
    """Live (not zombie) processes whose stat ``field`` (1: parent, 2: group) is ``value``."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and fields[field] == str(value) and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def children(parent: int) -> list[int]:
    """Live (not zombie) child processes of ``parent``."""
    return _live(1, parent)


def in_group(group: int) -> list[int]:
    """Live (not zombie) processes of process group ``group`` (a tritonserver started in a
    session of its own leads one, and its stubs are in it)."""
    return _live(2, group)


def stubs(server_pid: int) -> list[Stub]:
    """The stubs tritonserver ``server_pid`` runs; a stub's second argument is its
    ``<repository>/<model>/<version>/model.py``."""
    found = []
    for pid in children(server_pid):
        try:
            argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and argv[0].decode(errors="replace").endswith(STUB):
            found.append(Stub(pid, Path(argv[1].decode(errors="replace")).parts[-3]))
    return found


_OUTSTANDING = re.compile(r"^vlpserve_generation_outstanding\{[^}]*\} ([0-9.eE+-]+)$", re.M)


def outstanding(metrics_text: str) -> float:
    """Generation requests admitted and not finished, over every model (Triton's metrics
    page; the gauge ``vlpserve_generation_outstanding``)."""
    return sum(float(value) for value in _OUTSTANDING.findall(metrics_text))


def metrics_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 when it is gone)."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory(server_pid: int) -> dict[str, int]:
    """Resident bytes of tritonserver and of each stub (``<model> <pid>``)."""
    found = {"tritonserver": rss_bytes(server_pid)}
    for stub in stubs(server_pid):
        found[f"{stub.model} {stub.pid}"] = rss_bytes(stub.pid)
    return found


class StubWatch:
    """A thread that reloads a model whose stub died (``restart(model)``). Every way out of
    it but ``stop()`` and the server's exit (which the launcher sees) records a ``failure``:
    a reload that fails, or a server not ready to take the reload for ``give_up_s`` while
    a model has no stub. A server that is not ready for a while (too busy to answer the
    check, or shutting down, when its stubs leave too) is waited for, not given up on."""

    def __init__(
        self,
        server_pid: int,
        restart: Callable[[str], None],
        ready: Callable[[], bool],
        running: Callable[[], bool],
        *,
        interval_s: float = 0.5,
        give_up_s: float = 30.0,
    ) -> None:
        self.server_pid = server_pid
        self.restart = restart
        self.ready = ready
        self.running = running
        self.interval_s = interval_s
        self.give_up_s = give_up_s
        self.failure: str | None = None
        self.restarts: list[str] = []
        self._stop = threading.Event()
        self._known = stubs(server_pid)
        self._thread = threading.Thread(target=self._run, name="stub-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        waiting_since: float | None = None  # a model without its stub, the server not ready
        while not self._stop.wait(self.interval_s):
            alive = {stub.pid for stub in stubs(self.server_pid)}
            dead = sorted({stub.model for stub in self._known if stub.pid not in alive})
            if not dead:
                waiting_since = None
                continue
            if not self.running():
                return  # the server exited: the launcher reports it
            if not self.ready():
                waiting_since = waiting_since or time.monotonic()
                if time.monotonic() - waiting_since >= self.give_up_s:
                    self.failure = (
                        f"model {', '.join(dead)} lost its stub and the server was not ready "
                        f"to reload it for {self.give_up_s:.0f} s"
                    )
                    logger.error("%s", self.failure)
                    return
                continue
            waiting_since = None
            for model in dead:
                if self._stop.is_set():
                    return
                logger.error("the stub of model %s died: reloading the model", model)
                try:
                    self.restart(model)
                except Exception as exc:  # reported; the server is then not healthy
                    self.failure = f"model {model} lost its stub and could not be reloaded: {exc}"
                    logger.error("%s", self.failure)
                    return
                self.restarts.append(model)
            self._known = stubs(self.server_pid)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
