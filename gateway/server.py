"""Running the front door: in the foreground (``vlpserve openai``) or in a thread beside a
tritonserver (``vlpserve serve --openai-port``)."""

from __future__ import annotations

import threading
import time
from typing import Any

from vlpserve.errors import ServeError
from vlpserve.gateway.app import GatewayOptions, create_app


def head_deadline_protocol(timeout_s: float) -> type:
    """uvicorn's HTTP/1.1 protocol, closing a connection that has not sent a whole request
    head within ``timeout_s`` of connecting or of its previous response: uvicorn has no such
    deadline (its keep-alive timer stops at the first byte), so sockets that trickle their
    headers would hold connections for ever."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):  # type: ignore[misc]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_head_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_deadline()

        def _arm_head_deadline(self) -> None:
            previous = getattr(self, "_head_timer", None)
            if previous is not None:
                previous.cancel()
            self._head_timer = self.loop.call_later(timeout_s, self._head_deadline)

        def _head_deadline(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # still no request head

        def connection_lost(self, exc: Exception | None) -> None:
            timer = getattr(self, "_head_timer", None)
            if timer is not None:
                timer.cancel()
            super().connection_lost(exc)

    return HeadDeadline


def uvicorn_server(options: GatewayOptions, host: str, port: int) -> Any:
    try:
        import uvicorn
    except ImportError as exc:
        raise ServeError("the front door needs `pip install 'vlpserve[openai]'`") from exc
    config = uvicorn.Config(
        create_app(options),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=head_deadline_protocol(options.head_timeout_s),
        limit_concurrency=options.max_connections,
        ssl_certfile=options.tls_cert,
        ssl_keyfile=options.tls_key,
    )
    return uvicorn.Server(config)


def run(options: GatewayOptions, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until interrupted (SIGINT / SIGTERM)."""
    uvicorn_server(options, host, port).run()


class GatewayThread:
    """The front door in a thread of this process; ``stop()`` ends it."""

    def __init__(self, options: GatewayOptions, host: str, port: int) -> None:
        self.server = uvicorn_server(options, host, port)
        self.server.install_signal_handlers = lambda: None  # the main thread keeps its own
        self.thread = threading.Thread(target=self.server.run, name="openai", daemon=True)
        scheme = "https" if options.tls_cert else "http"
        self.url = f"{scheme}://{host}:{port}/v1"

    def start(self, timeout_s: float = 30) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the OpenAI front door did not start on {self.url}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
