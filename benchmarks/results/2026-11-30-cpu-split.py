"""CPU seconds per process while a served model takes closed-loop load: which of tritonserver,
each Python-backend stub and the client (this process) uses the cores.

    .venv/bin/python benchmarks/results/2026-11-30-cpu-split.py REPOSITORY [CONCURRENCY] [--pin]

It serves REPOSITORY (its ``clip_text``) with the project's launcher, sends CLIP texts from
CONCURRENCY callers for 3 s of warm-up and a 10 s window, and prints texts/s and the CPU each
process used in the window, from /proc (stubs of one model are summed). With ``--pin`` the
server (tritonserver and its stubs) runs on the last CPU and this process, the load, on the
others: the load generator no longer takes the server's cores.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

from vlpserve.benchmarks.scenarios import TEXTS
from vlpserve.client import AsyncClient
from vlpserve.serve import TritonServer
from vlpserve.serve.supervisor import in_group


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def name(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    model = next((Path(a).parent.parent.name for a in argv if a.endswith("model.py")), None)
    return model or Path(argv[0]).name


async def load(url: str, concurrency: int, seconds: float) -> int:
    done = 0
    stop = time.monotonic() + seconds
    async with AsyncClient(url, timeout_s=60) as client:

        async def caller(first: int) -> None:
            nonlocal done
            index = first
            while time.monotonic() < stop:
                await client.embed_texts([TEXTS[index % len(TEXTS)]])
                done += 1
                index += concurrency

        await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return done


def main(repo: Path, concurrency: int, pin: bool) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if pin:  # inherited by the server; the load's threads start after the switch back
        os.sched_setaffinity(0, cpus[-1:])
    with TritonServer(repo) as server:
        assert server.pid is not None
        if pin:
            os.sched_setaffinity(0, cpus[:-1])
        asyncio.run(load(server.grpc_url, concurrency, 3.0))
        pids = {server.pid, *in_group(os.getpgid(server.pid))}
        before = {pid: cpu_s(pid) for pid in pids}
        mine, started = time.process_time(), time.monotonic()
        count = asyncio.run(load(server.grpc_url, concurrency, 10.0))
        wall = time.monotonic() - started
        used: defaultdict[str, float] = defaultdict(float)
        for pid in pids:
            used[name(pid)] += cpu_s(pid) - before[pid]
        used["client (this process)"] = time.process_time() - mine
    print(f"{count / wall:.1f} texts/s over {wall:.1f} s; CPU seconds per second of wall:")
    for process, seconds in sorted(used.items(), key=lambda item: -item[1]):
        if seconds > 0.01:
            per_text = 1000 * seconds / count
            print(f"  {process:32s} {seconds / wall:.2f}  ({per_text:.2f} ms per text)")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--pin"]
    main(Path(args[0]), int(args[1]) if len(args) > 1 else 16, "--pin" in sys.argv)
