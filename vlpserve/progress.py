"""Progress of long steps (exports, deployments, benchmark points) on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

ProgressFn = Callable[[str], None]


def no_progress(_: str) -> None:
    return None


class Progress:
    """Shows long steps: a live tqdm line on a terminal, one line per step otherwise."""

    def __init__(self, description: str, total: int | None = None) -> None:
        self.description = description
        self.started = time.monotonic()
        self.total = total
        self.done = 0
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            # With a total: a bar of the steps planned; without: the step and the time.
            layout = None if total else "{desc} [{elapsed}]"
            self.bar = tqdm(desc=description, total=total, bar_format=layout, file=sys.stderr)

    def step(self, message: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"{self.description}: {message}")
            self.bar.update()
        else:
            self.done += 1
            elapsed = time.monotonic() - self.started
            count = f" {self.done}/{self.total}" if self.total else ""
            print(
                f"{self.description}{count}: {message} [{elapsed:5.1f} s]",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator[ProgressFn]:
    """``with progress("export clip") as step: step("loading")``; the display closes after.
    ``total``: the steps planned, shown as a bar."""
    shown = Progress(description, total)
    try:
        yield shown.step
    finally:
        shown.close()
