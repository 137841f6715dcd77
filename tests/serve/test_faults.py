"""Faults, each against the real server: SIGINT / SIGTERM (under load: in-flight requests
and streams finish), SIGKILL of ``vlpserve serve`` (nothing outlives it), of tritonserver
(calls fail fast, the same client works again once a server is back), of one stub (the
model serves again, the others never stop), and abandoned requests that are not computed."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.serve.helpers import Serve, alive, port_free
from vlpserve.benchmarks.photos import CORPUS, corpus_photo
from vlpserve.client import Client, DeadlineExceeded, ServerUnavailable
from vlpserve.errors import ClientError
from vlpserve.serve import TritonServer, free_port
from vlpserve.serve.supervisor import stubs


def _gone(pids: list[int], timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly(clip_repo: Path, signum: int) -> None:
    with Serve(clip_repo) as serve:
        banner = serve.wait_for("serving")
        assert f"gRPC     127.0.0.1:{serve.grpc_port}" in banner
        with Client(serve.grpc_url) as client:
            assert client.embed_texts(["served by the CLI"]).shape == (1, 16)
        tree = serve.tree()
        code, out, err = serve.stop(signum, timeout_s=60)
    assert code == 0, err
    assert "stopped (tritonserver exit code 0)" in out
    assert _gone(tree) and port_free(serve.grpc_port) and port_free(serve.http_port)


class _Load:
    """Threads calling ``call`` in a loop until stopped; each outcome with its times.
    With ``leave_when_refused``, a thread stops once the server refuses it (ServerUnavailable),
    as a client behind a load balancer does: the balancer takes a draining server out.

    A call starts when it is sent, unless it says it starts once the server has surely
    taken it (``awaiting_admission()``, then ``admitted()``: a stream's first piece). A
    stream sent a moment before SIGTERM can reach the model after the drain began and is
    rightly refused: it never started."""

    _marks = threading.local()

    @classmethod
    def awaiting_admission(cls) -> None:
        cls._marks.at = math.inf

    @classmethod
    def admitted(cls) -> None:
        if cls._marks.at == math.inf:
            cls._marks.at = time.monotonic()

    def __init__(self, calls: list[Callable[[], object]], leave_when_refused: bool = False) -> None:
        self.outcomes: list[tuple[float, float, object]] = []  # (started, ended, result)
        self.stopping = threading.Event()
        self.leave = leave_when_refused
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(c,)) for c in calls]
        for thread in self.threads:
            thread.start()

    def _loop(self, call: Callable[[], object]) -> None:
        while not self.stopping.is_set():
            self._marks.at = None
            sent = time.monotonic()
            try:
                result: object = call()
            except Exception as exc:  # recorded, judged by the test
                result = exc
            started = self._marks.at if self._marks.at is not None else sent
            with self.lock:
                self.outcomes.append((started, time.monotonic(), result))
            if self.leave and isinstance(result, ServerUnavailable):
                return

    def stop(self) -> list[tuple[float, float, object]]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        return self.outcomes


def test_sigterm_under_load_finishes_what_is_in_flight(python_repo: Path, photos) -> None:
    """Embeddings and BLIP streams in flight at SIGTERM finish (every stream with its final
    answer), new calls are refused with ServerUnavailable, and the server exits 0 within
    its grace time. The callers leave once refused, as behind a load balancer: Triton 2.51
    itself can hang or abort when calls keep arriving through its own shutdown
    (README, Security and operations)."""
    grace = 10
    with Serve(python_repo, "--grace-seconds", str(grace)) as serve:
        serve.wait_for("serving")
        clip = Client(serve.grpc_url, retries=0, timeout_s=60)
        blip = Client(serve.grpc_url, family="blip", retries=0, timeout_s=60)

        def stream() -> list[str]:
            _Load.awaiting_admission()
            pieces = []
            for piece in blip.stream_caption(photos["chelsea.png"], max_new_tokens=256):
                _Load.admitted()  # the model had taken it: a first piece came back
                pieces.append(piece)
            return pieces

        load = _Load(
            [lambda: clip.embed_texts(["a photo of a cat"] * 3)]
            + [lambda: clip.embed_images([photos["coffee.png"]])]
            + [stream] * 4,
            leave_when_refused=True,
        )
        time.sleep(2.0)
        stopped: list[tuple[int, str, str]] = []
        stopper = threading.Thread(
            target=lambda: stopped.append(serve.stop(signal.SIGTERM, timeout_s=grace + 10))
        )
        signalled = time.monotonic()
        stopper.start()
        # While the streams drain, a new generation call is refused, saying why. (The load's
        # own next calls may come only once the port is closed: refused all the same.)
        refusal = None
        while refusal is None and time.monotonic() < signalled + grace:
            try:
                blip.caption([photos["coffee.png"]], max_new_tokens=1)
            except ServerUnavailable as exc:
                refusal = exc
        stopper.join(timeout=grace + 15)
        took = time.monotonic() - signalled
        code, _, err = stopped[0]
        outcomes = load.stop()
        clip.close()
        blip.close()
    assert code == 0 and took < grace, (code, took, err)
    in_flight = [o for o in outcomes if o[0] < signalled < o[1]]
    for _, _, result in in_flight:
        assert not isinstance(result, Exception), result  # finished, streams complete
        if isinstance(result, list):  # a stream: all of its 256 tokens arrived
            assert result and "".join(result)
    assert any(isinstance(r, list) for _, _, r in in_flight), "no stream was in flight"
    assert any(not isinstance(r, list) for _, _, r in in_flight), "no embedding was in flight"
    errors = [r for _, _, r in outcomes if isinstance(r, Exception)]
    assert errors, "no call was refused"  # new calls were refused ...
    assert all(isinstance(e, ServerUnavailable) for e in errors), errors[:3]  # ... as such
    assert refusal is not None and "the server is stopping" in str(refusal), refusal


def _cpu_ticks(pid: int) -> int:
    """User and system CPU time of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.mark.parametrize("through", ["serve", "tritonserver"])
def test_an_ensemble_whose_first_step_runs_at_sigterm_answers(
    clip_repo: Path, through: str
) -> None:
    """An image request whose decoding (the ensemble's first step) is running when SIGTERM
    comes gets its embeddings: `vlpserve serve` unloads the ensembles, callers first, and
    signals tritonserver once they have answered (serve/drain.py). The control signals
    tritonserver itself: the second step is then refused, as Triton 2.51 does."""
    photo = corpus_photo(CORPUS[0])  # the 4000x3000 camera JPEG
    with Serve(clip_repo, "--grace-seconds", "20") as serve:
        serve.wait_for("serving")
        (decoder,) = [s.pid for s in stubs(serve.tritonserver()) if "preprocessor" in s.model]
        idle = _cpu_ticks(decoder)
        client = Client(serve.grpc_url, retries=0, timeout_s=60)
        result: list[object] = []
        call = threading.Thread(
            target=lambda: result.append(_outcome(lambda: client.embed_images([photo] * 8)))
        )
        call.start()
        # Decoding: 0.2 s of CPU spent out of the 2 s or so that eight such photos take.
        deadline = time.monotonic() + 30
        while _cpu_ticks(decoder) - idle < 0.2 * os.sysconf("SC_CLK_TCK"):
            assert time.monotonic() < deadline and call.is_alive(), result
            time.sleep(0.01)
        if through == "serve":
            code, out, err = serve.stop(signal.SIGTERM, timeout_s=40)
        else:
            os.kill(serve.tritonserver(), signal.SIGTERM)
        call.join(timeout=60)
        client.close()
    (outcome,) = result
    if through == "serve":
        assert code == 0, (code, out[-2000:], err[-2000:])
        assert isinstance(outcome, np.ndarray) and outcome.shape[0] == 8, outcome
    else:
        assert isinstance(outcome, ServerUnavailable), outcome
        assert "stopped accepting new inference requests" in str(outcome), outcome


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:  # judged by the test
        return exc


def test_sigkill_of_serve_leaves_nothing_behind(clip_repo: Path) -> None:
    with Serve(clip_repo) as serve:
        serve.wait_for("serving")
        tree = serve.tree()
        assert len(tree) >= 3  # serve, tritonserver, stubs
        os.kill(serve.process.pid, signal.SIGKILL)  # the launcher alone
        serve.process.wait(timeout=10)
        assert _gone(tree), [pid for pid in tree if alive(pid)]
    for port in (serve.grpc_port, serve.http_port, serve.metrics_port):
        assert port_free(port), port  # a supervisor restarting it finds the ports free


def test_sigkill_of_tritonserver_fails_fast_and_the_client_comes_back(clip_repo: Path) -> None:
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    first = TritonServer(clip_repo, **ports).start()
    client = Client(first.grpc_url, retries=3, retry_backoff_s=0.1, timeout_s=30)
    try:
        load = _Load([lambda: client.embed_texts(["a cat"])] * 2)
        time.sleep(1.0)
        killed = time.monotonic()
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        time.sleep(3.0)
        outcomes = load.stop()
        failures = [(ended, r) for _, ended, r in outcomes if isinstance(r, Exception)]
        assert failures, "no call failed after the kill"
        first_failure = min(ended for ended, _ in failures)
        assert first_failure - killed < 2.0  # not at the 30 s deadline
        assert all(isinstance(r, ServerUnavailable) for _, r in failures), failures[:3]
        first.stop()
        with TritonServer(clip_repo, **ports):
            started = time.monotonic()
            while True:  # the same Client object reconnects by itself
                try:
                    assert client.embed_texts(["back again"]).shape == (1, 16)
                    break
                except ServerUnavailable:
                    assert time.monotonic() - started < 10
    finally:
        client.close()
        first.stop()


def test_a_killed_stub_is_replaced_while_other_models_serve(clip_repo: Path, photos) -> None:
    """Triton 2.51 alone keeps the model ready and answers INTERNAL "Stub process ... is
    not healthy" for ever; the launcher's watch reloads the model."""
    with TritonServer(clip_repo) as server:
        client = Client(server.grpc_url, retries=0, timeout_s=30)
        texts = _Load([lambda: client.embed_texts(["a cat"])])
        images = _Load([lambda: client.embed_images([photos["coffee.png"]])])
        time.sleep(1.0)
        assert server.pid is not None
        victim, *_ = [s.pid for s in stubs(server.pid) if s.model == "clip_image_encoder"]
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def served_again() -> float | None:
            with images.lock:
                done = [e for s, e, r in images.outcomes if s > killed and _ok(r)]
            return min(done, default=None)

        # With two instances (the auto layout on 2 CPUs) the other one serves at once; the
        # reload of the model, which replaces the dead one, comes after.
        while (served_again() is None or not server.restarts) and time.monotonic() - killed < 30:
            time.sleep(0.2)
        time.sleep(1.0)
        text_outcomes, image_outcomes = texts.stop(), images.stop()
        client.close()
        healthy, restarts = server.healthy(), server.restarts
    back = served_again()
    assert back is not None and back - killed < 30, "the model did not serve again"
    assert healthy and restarts == ["clip_image_encoder"]
    assert any(not _ok(r) for s, _, r in image_outcomes if s > killed)  # it did break
    assert all(_ok(r) for _, _, r in text_outcomes)  # clip_text never failed meanwhile


def _ok(result: object) -> bool:
    return isinstance(result, np.ndarray) and result.shape == (1, 16)


def test_a_stub_that_cannot_come_back_stops_serve_non_zero(clip_repo: Path, tmp_path) -> None:
    """The reload after a stub's death fails (the model's code is broken meanwhile): the
    server must not stay "healthy" with a dead model; `vlpserve serve` exits 1 saying why."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(clip_repo, repo, symlinks=True)
    with Serve(repo) as serve:
        serve.wait_for("serving;")
        model_py = repo / "clip_image_encoder" / "1" / "model.py"
        model_py.unlink()  # a link into the package in the test repository: replace it
        model_py.write_text("raise RuntimeError('broken on purpose')\n")
        victim, *_ = [s.pid for s in stubs(serve.tritonserver()) if s.model == "clip_image_encoder"]
        os.kill(victim, signal.SIGKILL)
        code = serve.process.wait(timeout=90)
        serve.errors.seek(0)
        errors = serve.errors.read().decode(errors="replace")
    assert code == 1, errors[-2000:]
    assert "clip_image_encoder lost its stub and could not be reloaded" in errors


def test_the_watch_gives_up_on_a_server_never_ready_to_reload(clip_repo: Path) -> None:
    """A readiness check that keeps failing (here: a check that says not ready, as one
    that times out does) is waited for, then recorded as a failure, never a silent end."""
    from vlpserve.serve.supervisor import StubWatch

    with TritonServer(clip_repo) as server:
        assert server.pid is not None
        watch = StubWatch(
            server.pid, server.restart_model, lambda: False, server.running, give_up_s=2.0
        )
        victim, *_ = [s.pid for s in stubs(server.pid) if s.model == "clip_text_encoder"]
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while watch.failure is None and time.monotonic() - killed < 15:
            time.sleep(0.1)
        failure = watch.failure
        watch.stop()
        assert server.healthy()  # the launcher's own watch reloaded it meanwhile
    assert failure is not None and time.monotonic() - killed >= 2.0
    assert "clip_text_encoder lost its stub and the server was not ready" in failure


def test_an_abandoned_request_is_not_computed(triton) -> None:
    """A request whose deadline passes while it waits in the queue (50 ms of queue delay in
    the test repository) is dropped there: the model never executes it. With repo build's
    defaults (no queue policy) it is gRPC's cancellation of the call that drops it (the
    per-request timeout the client also sends is read only under a queue policy, and Triton
    checks it as its queue cursor passes a request, not for one already in a pending
    batch); the control below shows the count does move when requests are computed."""
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(triton.grpc_url)

    def executions() -> int:
        entry = stats.get_inference_statistics("clip_text_encoder", as_json=True)["model_stats"][0]
        return int(entry.get("execution_count", 0))

    ids = np.array([[49406, 320, 2368, 49407]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    with Client(triton.grpc_url, timeout_s=60) as client:
        client.infer("clip_text_encoder", feeds)
    time.sleep(0.5)
    before = executions()
    with Client(triton.grpc_url, timeout_s=0.01, retries=0) as client:
        for _ in range(3):
            with pytest.raises((DeadlineExceeded, ClientError)):
                client.infer("clip_text_encoder", feeds)
    time.sleep(0.5)
    assert executions() == before
    # The control: the same requests with time to spare are computed, so the count above
    # could have moved (a check that can fail).
    with Client(triton.grpc_url, timeout_s=60, retries=0) as client:
        for _ in range(3):
            client.infer("clip_text_encoder", feeds)
    time.sleep(0.5)
    assert executions() >= before + 1
    stats.close()
