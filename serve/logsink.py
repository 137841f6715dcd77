"""tritonserver's output, and its stubs' (they write to the same pipe): a thread reads it line
by line into a file that cannot fill the disk, and echoes it where the user wants it (the
container's stdout, for ``kubectl logs``).

The file rotates at ``max_bytes`` (the previous one kept as ``<name>.1``: at most twice that
on disk). The thread never stops reading while the pipe is open, so the server never blocks
on a full pipe, whatever happens to the file or the echo.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

MAX_LINE = 65_536  # a longer line is cut into pieces of this size
MAX_BYTES = 8 * 2**20


class LogSink:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = MAX_BYTES,
        echo: IO[bytes] | None = None,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        if max_bytes < MAX_LINE:
            raise ValueError(f"max_bytes must be at least {MAX_LINE}")
        self.path = path
        self.max_bytes = max_bytes
        self.echo = echo
        self.redact = redact
        self.written = 0  # bytes in the current file
        self._file = path.open("wb")
        self._thread: threading.Thread | None = None

    @property
    def previous(self) -> Path:
        return self.path.with_name(self.path.name + ".1")

    def start(self, pipe: IO[bytes]) -> None:
        self._thread = threading.Thread(
            target=self._copy, args=(pipe,), name="tritonserver-log", daemon=True
        )
        self._thread.start()

    def _copy(self, pipe: IO[bytes]) -> None:
        try:
            for line in iter(lambda: pipe.readline(MAX_LINE), b""):
                with contextlib.suppress(OSError, ValueError):  # a full disk, a closed echo
                    self._write(line)
                if self.echo is not None:
                    with contextlib.suppress(OSError, ValueError):
                        text = self.redact(line.decode(errors="replace"))
                        self.echo.write(text.encode())
                        self.echo.flush()
        finally:
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(OSError):
                pipe.close()

    def _write(self, line: bytes) -> None:
        if self.written + len(line) > self.max_bytes:
            self._file.close()
            self.path.replace(self.previous)
            self._file = self.path.open("wb")
            self.written = 0
        self._file.write(line)
        self._file.flush()
        self.written += len(line)

    def join(self, timeout_s: float) -> None:
        """Wait until the pipe is closed (every writer gone) and all of it is written."""
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def tail(self, lines: int) -> str:
        """The last ``lines`` lines, across the rotation."""
        found: list[str] = []
        for path in (self.path, self.previous):
            if len(found) >= lines:
                break
            with contextlib.suppress(OSError):
                found = path.read_text(errors="replace").splitlines() + found
        return "\n".join(found[-lines:])
