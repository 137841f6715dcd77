"""Launch the real tritonserver binary, wait until it serves, keep it healthy, stop it.

By default the binary comes from the nvidia-pytriton wheel, whose Python backend needs the
stub built for the running Python copied beside it and the interpreter's LIBDIR on
LD_LIBRARY_PATH. The stub finds its packages through the first ``python3`` on PATH, so the
running interpreter's bin folder goes first there.

tritonserver dies with the process that launched it (Linux: the parent-death signal), so a
killed ``vlpserve serve`` leaves no server holding its ports; its stubs exit with it. Models
are loaded once at start (explicit model control): callers cannot load or unload them.
Models that ``repo build`` left to the server (``auto``) get a layout sized for the CPUs the
server may use (model_repository.placement): tritonserver reads a local repository through
an overlay that holds their sized configs; from object storage they are reloaded sized.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from vlpserve.errors import ServeError
from vlpserve.layout import CONFIG_FILE
from vlpserve.model_repository.config import read_config, to_text
from vlpserve.model_repository.placement import Layout, auto_layout, is_auto, override, summary
from vlpserve.ort import usable_cpus
from vlpserve.serve.drain import calls, waves
from vlpserve.serve.logsink import MAX_BYTES, LogSink
from vlpserve.serve.security import Security, dial
from vlpserve.serve.supervisor import StubWatch, memory, metrics_text, outstanding

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


REMOTE_SCHEMES = ("s3://", "gs://", "as://")  # repositories tritonserver reads itself
PR_SET_PDEATHSIG = 1
BIND_RETRIES = 3  # free ports can be taken between choosing them and tritonserver binding


def _die_with_parent(parent: int, cpus: frozenset[int] | None = None) -> Any:
    """A preexec function: the child gets SIGKILL when ``parent`` dies, and runs on ``cpus``
    (with every thread and process it starts) where given (Linux)."""

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return arm if sys.platform.startswith("linux") else None


class _Spawner:
    """Starts child processes from one thread that lives as long as the process: Linux
    sends the parent-death signal when the *thread* that forked a child ends, so a server
    started from a short-lived thread (a pool's) would be killed with it."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _serve(self) -> None:
        while True:
            job, result = self._jobs.get()
            try:
                result.set_result(job())
            except BaseException as exc:  # handed to the caller
                result.set_exception(exc)

    def run(self, job: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="spawner", daemon=True)
                self._thread.start()
        result: Future[Any] = Future()
        self._jobs.put((job, result))
        return result.result()


_SPAWNER = _Spawner()


@dataclass
class TritonServer:
    """A tritonserver process serving ``repository``; a context manager.

    Ports default to free ones. ``security`` says where it listens (127.0.0.1 by default),
    with which TLS and API key. ``grace_s`` bounds a stop: in-flight requests finish, new
    ones are refused. With ``supervise``, a model whose stub process dies is reloaded
    (``StubWatch``); ``healthy()`` turns False when that fails. ``tritonserver`` names
    another installation's binary (an NGC container's), whose own backends are then used.
    ``cpus`` pins the server and its model stubs to those CPUs (a load generator on the
    others then does not take the server's cores); graphs whose threads are not set take one
    per CPU given. ``layout`` (a layout file's) sizes every model that has a role; without
    one, the models built ``auto`` get ``auto_layout`` for the CPUs it may use (``placed``
    then says what each model got).
    """

    repository: (
        Path | str
    )  # a folder, or s3://host:port/bucket/prefix, gs://, as:// (Triton reads it)
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    security: Security = field(default_factory=Security)
    grace_s: float = 30.0
    supervise: bool = True
    tritonserver: Path | None = None
    startup_timeout_s: float = 180.0
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()
    log_path: Path | None = None
    log_max_bytes: int = MAX_BYTES  # the log file rotates there (one previous file kept)
    log_echo: IO[bytes] | None = None  # also write tritonserver's log there (stdout)
    cpus: frozenset[int] | None = None  # the CPUs it and its model stubs run on (Linux)
    layout: Layout | None = None
    placed: dict[str, str] = field(default_factory=dict, init=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)
    _watch: StubWatch | None = field(default=None, init=False, repr=False)
    _log: LogSink | None = field(default=None, init=False, repr=False)
    _chosen: tuple[str, ...] = field(default=(), init=False, repr=False)
    _served: Path | str | None = field(default=None, init=False, repr=False)  # what it reads

    def __post_init__(self) -> None:
        if self.cpus is not None:
            self.cpus = frozenset(self.cpus)
            usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
            if not self.cpus or not self.cpus <= usable:
                raise ServeError(
                    f"cpus {sorted(self.cpus)}: this process may run on CPUs {sorted(usable)} only"
                )
        if not str(self.repository).startswith(REMOTE_SCHEMES):
            self.repository = Path(self.repository).resolve()
        self._chosen = tuple(
            name for name in ("grpc_port", "http_port", "metrics_port") if not getattr(self, name)
        )
        self._choose_ports()

    def _choose_ports(self) -> None:
        for name in self._chosen:
            setattr(self, name, free_port())

    @property
    def grpc_url(self) -> str:
        return f"{self.security.dial_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{dial(self.security.http_host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{dial(self.security.metrics_host)}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self, backends: Path | None) -> list[str]:
        binary = self.tritonserver or pytriton_root() / "bin" / "tritonserver"
        args = [
            str(binary),
            f"--model-repository={self._served or self.repository}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
            "--model-control-mode=explicit",
            "--load-model=*",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--exit-timeout-secs={max(1, round(self.grace_s))}",
            *self.security.arguments(),
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
        if self._workdir is not None:  # generation models stop admitting while it exists
            env["VLPSERVE_DRAIN_FILE"] = str(self._drain_file)
        return env

    @property
    def _drain_file(self) -> Path:
        return Path(self._workdir.name if self._workdir else ".") / "draining"

    def drain(self, timeout_s: float) -> bool:
        """Within ``timeout_s``: stop generation models taking new requests and wait until
        the ones they took have had their final responses (Triton waits for other models'
        requests itself, not for a decoupled model's), then unload the models whose work
        reaches other models, callers first, each once its requests have answered (see
        serve/drain.py). True when nothing is left in flight."""
        self._drain_file.touch()
        deadline = time.monotonic() + timeout_s
        while self.running():
            if outstanding(metrics_text(self.metrics_url)) == 0:
                break
            if time.monotonic() >= deadline:
                logger.warning("generation requests still in flight after %.0f s", timeout_s)
                return False
            time.sleep(0.1)
        if not self.running():
            return True
        try:
            with self.admin() as admin:
                return admin.unload_callers(deadline)
        except Exception as exc:  # the stop goes on: tritonserver's own stop still follows
            logger.warning("could not unload the ensembles before stopping: %s", exc)
            return False

    def start(self) -> TritonServer:
        """Start the server and block until it is ready (ServeError on failure)."""
        if isinstance(self.repository, Path) and not self.repository.is_dir():
            raise ServeError(f"model repository {self.repository} does not exist")
        self._workdir = tempfile.TemporaryDirectory(prefix="vlpserve-triton-")
        workdir = Path(self._workdir.name)
        backends = None if self.tritonserver else prepare_backends(pytriton_root(), workdir)
        self._served = self._overlay(workdir) or self.repository
        log_path = self.log_path = self.log_path or workdir / "tritonserver.log"
        try:
            for attempt in range(BIND_RETRIES + 1):
                self._launch(backends, log_path)
                if self._wait_ready():
                    break
                if not self._chosen or attempt == BIND_RETRIES:
                    raise ServeError("tritonserver could not bind its ports:\n" + self.log_tail())
                logger.info("a chosen port was taken meanwhile: choosing others")
                self._choose_ports()
            if not isinstance(self.repository, Path):
                self._reload()
            if self.supervise and self._process is not None:
                self._watch = StubWatch(
                    self._process.pid, self.restart_model, self.serving, self.running
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _layout(self) -> tuple[Layout, int]:
        cpus = len(self.cpus) if self.cpus else usable_cpus()
        return self.layout or auto_layout(cpus), cpus

    def _plan(self, configs: dict[str, Any]) -> dict[str, Any]:
        """The models to size here, with their new configs (see the class docstring)."""
        layout, cpus = self._layout()
        return {
            name: changed
            for name, config in sorted(configs.items())
            if (self.layout is not None or is_auto(config))
            and (changed := override(config, layout, cpus=cpus)) is not None
        }

    def _overlay(self, workdir: Path) -> Path | None:
        """A local repository with models to size: a repository in ``workdir`` whose sized
        models have their new config.pbtxt and link everything else to the original, so
        tritonserver loads each model once, as sized (None: nothing to size)."""
        if not isinstance(self.repository, Path):
            return None
        configs = {
            path.parent.name: read_config(path) for path in self.repository.glob(f"*/{CONFIG_FILE}")
        }
        changes = self._plan(configs)
        if not changes:
            return None
        overlay = workdir / "repository"
        overlay.mkdir()
        for entry in self.repository.iterdir():
            if entry.name not in changes:
                (overlay / entry.name).symlink_to(entry)
                continue
            (overlay / entry.name).mkdir()
            for part in entry.iterdir():
                if part.name != CONFIG_FILE:
                    (overlay / entry.name / part.name).symlink_to(part)
            (overlay / entry.name / CONFIG_FILE).write_text(to_text(changes[entry.name]))
        self._placed(changes)
        return overlay

    def _reload(self) -> None:
        """A remote repository (S3): each model was loaded as built; the ones to size are
        reloaded, side by side. A reloaded model keeps serving until its new instances are
        ready."""
        with self.admin() as admin:
            changes = self._plan(admin.configs())
            if not changes:
                return
            with ThreadPoolExecutor(max_workers=len(changes)) as pool:
                loads = {name: pool.submit(admin.load, name, c) for name, c in changes.items()}
        for name, load in loads.items():
            if load.exception() is not None:
                raise ServeError(f"{name}: loading its layout failed: {load.exception()}")
        self._placed(changes)

    def _placed(self, changes: dict[str, Any]) -> None:
        layout, cpus = self._layout()
        self.placed = {name: summary(config) for name, config in changes.items()}
        source = "the layout file" if self.layout else "auto"
        logger.info("layout for %d CPU(s) (%s): %s", cpus, source, layout.describe())
        for name, what in self.placed.items():
            logger.info("  %s: %s", name, what)

    def _launch(self, backends: Path | None, log_path: Path) -> None:
        if self._log is not None:  # a launch that lost its ports: its output is all read
            self._log.join(timeout_s=5)
        self._log = LogSink(
            log_path,
            max_bytes=self.log_max_bytes,
            echo=self.log_echo,
            redact=self.security.redact,
        )
        logger.info("starting tritonserver on gRPC %s", self.grpc_url)
        command, env = self.command(backends), self.environment()
        self._process = _SPAWNER.run(
            lambda: subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C in a terminal reaches the launcher only
                preexec_fn=_die_with_parent(os.getpid(), self.cpus),
            )
        )
        assert self._process.stdout is not None
        self._log.start(self._process.stdout)

    def _wait_ready(self) -> bool:
        """True once ready; False when tritonserver exited because a port was taken."""
        process = self._process
        if process is None:
            raise ServeError("tritonserver was not started")
        deadline = time.monotonic() + self.startup_timeout_s
        with self.admin() as admin:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    if self._log is not None:
                        self._log.join(timeout_s=5)  # its last lines, on file
                    if "already in use" in self.log_tail():
                        return False
                    raise ServeError(
                        f"tritonserver exited with code {process.returncode}:\n" + self.log_tail()
                    )
                if admin.ready(timeout_s=2):
                    return True
                time.sleep(0.25)
        raise ServeError(
            f"tritonserver not ready after {self.startup_timeout_s:.0f} s:\n" + self.log_tail()
        )

    def metadata(self) -> dict[str, str]:
        """The server's name and version, as it reports them."""
        with self.admin() as admin:
            return admin.metadata()

    def admin(self) -> _Admin:
        """A gRPC connection for the launcher's own calls (readiness, model reloads)."""
        return _Admin(self.grpc_url, self.security)

    def restart_model(self, model: str) -> None:
        """Reload ``model`` (its stub died): Triton reloads only a changed config, so the
        override carries a restart count."""
        with self.admin() as admin:
            admin.reload(model)

    def serving(self) -> bool:
        """Running and ready (False while it shuts down)."""
        if not self.running():
            return False
        with self.admin() as admin:
            return admin.ready(timeout_s=2)

    def healthy(self) -> bool:
        """Running, and every model's stub alive or reloaded."""
        return self.running() and not (self._watch and self._watch.failure)

    @property
    def restarts(self) -> list[str]:
        """Models reloaded because their stub died, in order."""
        return list(self._watch.restarts) if self._watch else []

    def failure(self) -> str | None:
        """Why the server is not healthy, if it is not."""
        if self._watch and self._watch.failure:
            return self._watch.failure
        if self._process is not None and self._process.poll() is not None:
            return f"tritonserver exited with code {self._process.returncode}"
        return None

    def memory(self) -> dict[str, int]:
        """Resident bytes of tritonserver and of each of its stubs."""
        return memory(self._process.pid) if self._process is not None else {}

    def log_tail(self, lines: int = 40) -> str:
        if self._log is None:
            return ""
        return self.security.redact(self._log.tail(lines))

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float | None = None) -> int | None:
        """Within ``timeout_s`` (default: the grace time) of being called: drain generation
        (up to 0.75 of it), then SIGTERM (in-flight requests finish, new ones are refused),
        then SIGKILL when the time is up; returns the exit code."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.grace_s)
        if self._watch is not None:
            self._watch.stop()  # the stubs leave during shutdown: no reloads now
            self._watch = None
        if self.running():
            self.drain(0.75 * max(0.0, deadline - time.monotonic()))
        process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    logger.warning("tritonserver did not stop in time: killing it")
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            code = process.returncode
            # A safeguard: stubs normally leave with their tritonserver, but one killed from
            # outside could leave some behind; they are still in its process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            if self._log is not None:
                self._log.join(timeout_s=5)  # the pipe closes once every writer is gone
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


class _Admin:
    """The launcher's gRPC calls to its own server: health, and model reloads with the
    model-repository key only it holds."""

    def __init__(self, url: str, security: Security) -> None:
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        credentials = security.channel_credentials()
        self.security = security
        self.channel = (
            grpc.secure_channel(url, credentials) if credentials else grpc.insecure_channel(url)
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def ready(self, timeout_s: float) -> bool:
        import grpc
        from tritonclient.grpc import service_pb2 as pb

        try:
            return bool(self.stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout_s).ready)
        except grpc.RpcError:
            return False  # not listening yet

    def metadata(self, timeout_s: float = 10) -> dict[str, str]:
        from tritonclient.grpc import service_pb2 as pb

        found = self.stub.ServerMetadata(
            pb.ServerMetadataRequest(), timeout=timeout_s, metadata=self.security.metadata()
        )
        return {"name": found.name, "version": found.version}

    def reload(self, model: str, timeout_s: float = 300) -> None:
        from tritonclient.grpc import service_pb2 as pb

        found = self.stub.ModelConfig(
            pb.ModelConfigRequest(name=model), timeout=30, metadata=self.security.metadata()
        ).config
        restarts = found.parameters["vlpserve_restarts"]
        restarts.string_value = str(int(restarts.string_value or "0") + 1)
        self.load(model, found, timeout_s)

    def load(self, model: str, config: Any, timeout_s: float = 300) -> None:
        """(Re)load ``model`` with ``config`` (a ``model_config_pb2.ModelConfig``) instead of
        its config.pbtxt."""
        from google.protobuf import json_format
        from tritonclient.grpc import service_pb2 as pb

        request = pb.RepositoryModelLoadRequest(model_name=model)
        request.parameters["config"].string_param = json_format.MessageToJson(config)
        self.stub.RepositoryModelLoad(
            request, timeout=timeout_s, metadata=self.security.metadata(admin=True)
        )

    def configs(self, timeout_s: float = 10) -> dict[str, Any]:
        """The configuration of every ready model."""
        from tritonclient.grpc import service_pb2 as pb

        index = self.stub.RepositoryIndex(
            pb.RepositoryIndexRequest(ready=True),
            timeout=timeout_s,
            metadata=self.security.metadata(admin=True),
        )
        return {
            model.name: self.stub.ModelConfig(
                pb.ModelConfigRequest(name=model.name),
                timeout=timeout_s,
                metadata=self.security.metadata(),
            ).config
            for model in index.models
        }

    def unloading(self, models: set[str], timeout_s: float = 10) -> set[str]:
        """Those of ``models`` not yet fully unloaded (a request in flight holds its model)."""
        from tritonclient.grpc import service_pb2 as pb

        index = self.stub.RepositoryIndex(
            pb.RepositoryIndexRequest(),
            timeout=timeout_s,
            metadata=self.security.metadata(admin=True),
        )
        return {m.name for m in index.models if m.name in models and m.state != "UNAVAILABLE"}

    def unload_callers(self, deadline: float) -> bool:
        """Unload the models that call others, in waves (serve/drain.py), each wave once
        the one before has answered its requests; False when ``deadline`` came first."""
        from tritonclient.grpc import service_pb2 as pb

        for wave in waves(calls(self.configs())):
            for model in wave:
                self.stub.RepositoryModelUnload(
                    pb.RepositoryModelUnloadRequest(model_name=model),
                    timeout=10,
                    metadata=self.security.metadata(admin=True),
                )
            while left := self.unloading(set(wave)):
                if time.monotonic() >= deadline:
                    logger.warning("requests still in flight at %s", ", ".join(sorted(left)))
                    return False
                time.sleep(0.05)
        return True

    def __enter__(self) -> _Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()
