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

    def __init__(self, description: str) -> None:
        self.description = description
        self.started = time.monotonic()
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc=description, bar_format="{desc} [{elapsed}]", file=sys.stderr)

    def step(self, message: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"{self.description}: {message}")
            self.bar.update()
        else:
            elapsed = time.monotonic() - self.started
            print(f"{self.description}: {message} [{elapsed:5.1f} s]", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def progress(description: str) -> Iterator[ProgressFn]:
    """``with progress("export clip") as step: step("loading")``; the display closes after."""
    shown = Progress(description)
    try:
        yield shown.step
    finally:
        shown.close()
