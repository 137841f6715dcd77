"""Which CPUs the bench runs on when the server is given CPUs of its own (``--server-cpus``):
the server there, the load generator on the others, and the in-process baselines back on the
server's, so that served and in-process numbers come from the same cores (Linux)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Collection, Iterator
from typing import Any

from vlpserve.errors import ConfigError


def usable() -> set[int]:
    """The CPUs this process may run on."""
    if not hasattr(os, "sched_getaffinity"):
        raise ConfigError("pinning CPUs needs Linux (os.sched_getaffinity)")
    return set(os.sched_getaffinity(0))


def cpu_list(text: str) -> tuple[int, ...]:
    """CPUs written as taskset's -c takes them: ``1``, ``0,1``, ``0-3,8``."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError as exc:
        raise ConfigError(f"CPU list {text!r}: write it as 1 or 0,1 or 0-3,8") from exc
    if not cpus or min(cpus) < 0:
        raise ConfigError(f"CPU list {text!r}: write it as 1 or 0,1 or 0-3,8")
    return tuple(sorted(cpus))


def split(server: Collection[int]) -> tuple[int, ...]:
    """The CPUs left to the load generator once the server has ``server`` (ConfigError
    when ``server`` is not a proper part of the usable CPUs); none when ``server`` is empty
    (nothing pinned)."""
    if not server:
        return ()
    cpus = usable()
    if not set(server) <= cpus:
        raise ConfigError(
            f"server CPUs {sorted(server)}: this process may run on CPUs {sorted(cpus)} only"
        )
    rest = tuple(sorted(cpus - set(server)))
    if not rest:
        raise ConfigError(
            f"server CPUs {sorted(server)} leave none of {sorted(cpus)} to the load generator"
        )
    return rest


def _threads() -> list[int]:
    return [int(tid) for tid in os.listdir("/proc/self/task")]


@contextlib.contextmanager
def pinned(cpus: Collection[int]) -> Iterator[None]:
    """Every thread of this process on ``cpus`` meanwhile (threads started meanwhile inherit
    it), and PyTorch, where loaded, on as many threads: it counted the CPUs when it started.
    Afterwards each thread back where it was, those started meanwhile where the process
    was, and PyTorch's threads as they were. No ``cpus``: nothing changes."""
    if not cpus:
        yield
        return
    before: dict[int, set[int]] = {}
    process = usable()
    for tid in _threads():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            before[tid] = set(os.sched_getaffinity(tid))
            os.sched_setaffinity(tid, cpus)
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch else 0
    if torch:
        torch.set_num_threads(len(cpus))
    try:
        yield
    finally:
        if torch:
            torch.set_num_threads(torch_threads)
        for tid in _threads():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, before.get(tid, process))


def settings(server: Collection[int]) -> dict[str, Any]:
    """The report's record of where the server and the load generator ran."""
    return {
        "server_cpus": sorted(server) or "all",
        "load_cpus": list(split(server)) or "all",
    }
