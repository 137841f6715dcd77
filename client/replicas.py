"""The servers one client spreads its calls over.

A Kubernetes Service keeps one HTTP/2 connection on one pod: a gRPC client must spread its
calls itself. ``Replicas`` holds one connection per server (a list of addresses, or every
address of a headless Service: ``dns:///name:port``, resolved again from time to time),
sends each call to the replica with the fewest calls in flight, ejects one that fails to
connect (with a backoff that doubles), and lets it back once a health check passes. The
transport (threads or asyncio) is the client's; this module only decides.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vlpserve.errors import ServerUnavailable

logger = logging.getLogger(__name__)

DNS = "dns:///"
EJECT_S = 0.25  # first ejection; it doubles with each failure in a row
EJECT_MAX_S = 2.0  # a replica back on its address takes traffic within about this
RESOLVE_EVERY_S = 30.0


@dataclass(eq=False)
class Replica:
    """One server: its address, its connection, and what the client knows of it."""

    target: str
    connection: Any = None  # the transport's (channel, stub), made on first use
    in_flight: int = 0  # picked and not released (counted under the Replicas' lock)
    failures: int = 0  # connection failures in a row
    ejected_until: float = 0.0
    checking: bool = False  # a health check is on its way
    calls: int = 0  # calls sent here

    def available(self, now: float) -> bool:
        return self.ejected_until <= now


def targets_of(url: str | Sequence[str]) -> tuple[list[str], str | None]:
    """The addresses a client was given, and the DNS name to resolve again (or None)."""
    if isinstance(url, str):
        if url.startswith(DNS):
            try:
                return resolve(url), url
            except OSError as exc:  # socket.gaierror
                raise ServerUnavailable(f"cannot resolve {url}: {exc}") from exc
        return [url], None
    found = [str(u) for u in url]
    if not found or any(u.startswith(DNS) for u in found):
        raise ValueError("give one url, a list of host:port, or one dns:///name:port")
    return found, None


def name_of(url: str) -> tuple[str, int]:
    """(host, port) of ``dns:///name:port``."""
    host, _, port = url.removeprefix(DNS).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{url}: expected dns:///name:port")
    return host, int(port)


def addresses(infos: Sequence[Any]) -> list[str]:
    """``ip:port`` of each ``getaddrinfo`` answer, once each, sorted."""
    found = sorted({(str(info[4][0]), int(info[4][1])) for info in infos})
    return [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip, port in found]


def resolve(url: str) -> list[str]:
    """Every address of ``dns:///name:port`` (a headless Service's pods), as ``ip:port``."""
    return addresses(socket.getaddrinfo(*name_of(url), type=socket.SOCK_STREAM))


@dataclass(eq=False)
class Replicas:
    """Which replica gets the next call."""

    targets: list[str]
    dns: str | None = None
    now: Callable[[], float] = time.monotonic
    replicas: list[Replica] = field(default_factory=list)
    _resolved: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the sync client's threads

    def __post_init__(self) -> None:
        self.replicas = [Replica(target) for target in self.targets]
        self._resolved = self.now()

    def pick(self, avoid: set[Replica] | None = None) -> tuple[Replica, bool]:
        """The replica for a call, and whether it must pass a health check first (it was
        ejected and its time is up: it is checked before any other is chosen, so a server
        that is back soon takes traffic again). Among the available ones, the fewest calls
        in flight wins, and among those the one sent the fewest calls (the counts even out
        whatever the phase of each server's batches). When every replica is ejected, the one
        back soonest. The call is counted in flight on it at once, in the same step (threads
        picking together see each other's picks): ``release`` it when the call ends."""
        with self._lock:
            replica, check = self._pick(avoid or set())
            replica.in_flight += 1
            replica.calls += 1
            return replica, check

    def release(self, replica: Replica, *, check_abandoned: bool = False) -> None:
        """A picked call has ended (answered, failed, or never sent). A health check
        abandoned midway (the call was cancelled) leaves the replica due for another."""
        with self._lock:
            replica.in_flight -= 1
            if check_abandoned:
                replica.checking = False

    def _pick(self, avoid: set[Replica]) -> tuple[Replica, bool]:
        now = self.now()
        pool = [r for r in self.replicas if r not in avoid] or list(self.replicas)
        due = [r for r in pool if r.available(now) and r.failures and not r.checking]
        if due:
            chosen = due[0]
            chosen.checking = True
            return chosen, True
        ready = [r for r in pool if r.available(now) and not r.failures]
        if not ready:
            return min(pool, key=lambda r: r.ejected_until), False
        return min(ready, key=lambda r: (r.in_flight, r.calls)), False

    def others(self, replica: Replica) -> bool:
        """Whether another replica could take a call now."""
        now = self.now()
        return any(r is not replica and r.available(now) for r in self.replicas)

    def failed(self, replica: Replica) -> None:
        """It could not be reached: out for a while, a longer one each time in a row."""
        with self._lock:
            replica.failures += 1
            replica.checking = False
            doublings = min(replica.failures - 1, 16)  # 2 ** 1024 is no float
            wait = min(EJECT_S * 2**doublings, EJECT_MAX_S)
            replica.ejected_until = self.now() + wait

    def succeeded(self, replica: Replica) -> None:
        with self._lock:
            if replica.failures:  # back: level with the others, not owed what it missed
                others = [r.calls for r in self.replicas if r is not replica]
                replica.calls = max([replica.calls, min(others, default=0)])
            replica.failures = 0
            replica.checking = False
            replica.ejected_until = 0.0

    def resolve_due(self) -> bool:
        return self.dns is not None and self.now() - self._resolved >= RESOLVE_EVERY_S

    def resolution_failed(self, error: OSError) -> None:
        """Re-resolving the name failed (a DNS outage): the last good addresses stay, and
        the name is tried again after the usual interval."""
        self._resolved = self.now()
        logger.warning(
            "cannot resolve %s again (%s): keeping its last %d addresses",
            self.dns,
            error,
            len(self.replicas),
        )

    def update(self, targets: list[str]) -> list[Replica]:
        """The resolved addresses now: new ones join, gone ones leave (returned, for the
        caller to close once idle)."""
        self._resolved = self.now()
        known = {r.target: r for r in self.replicas}
        gone = [r for r in self.replicas if r.target not in targets]
        # A newcomer starts level with the least-served one: ties would go to it until it
        # had caught up with calls sent before it existed.
        level = min((r.calls for r in self.replicas), default=0)
        self.replicas = [known.get(t) or Replica(t, calls=level) for t in targets] or self.replicas
        return gone if targets else []
