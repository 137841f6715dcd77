"""Running the front door: in the foreground (``vlpserve openai``) or in a thread beside a
tritonserver (``vlpserve serve --openai-port``)."""

from __future__ import annotations

import threading
import time
from typing import Any

from vlpserve.errors import ServeError
from vlpserve.gateway.app import GatewayOptions, create_app


def uvicorn_server(options: GatewayOptions, host: str, port: int) -> Any:
    try:
        import uvicorn
    except ImportError as exc:
        raise ServeError("the front door needs `pip install 'vlpserve[openai]'`") from exc
    config = uvicorn.Config(
        create_app(options), host=host, port=port, log_level="warning", access_log=False
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
        self.url = f"http://{host}:{port}/v1"

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
