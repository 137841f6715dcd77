"""ONNX Runtime's cost per CLIP text by batch size, in process, as the served text model runs
it (the server's tokenizer code, then the graph; ``THREADS`` intra-op threads).

    .venv/bin/python benchmarks/results/2026-11-30-text-batch-cost.py REPOSITORY [THREADS]

REPOSITORY is a built model repository whose ``clip_text`` holds the graph and tokenizer (a
python-runtime repository, as ``vlpserve bench`` builds). Prints ms per text (wall) and
texts/s at batches 1 to 32, median of repeated runs.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort

from vlpserve.benchmarks.scenarios import TEXTS
from vlpserve.contract import ATTENTION_MASK, INPUT_IDS
from vlpserve.model_repository.runtime.text import TextTokenizer


def main(repo: Path, threads: int) -> None:
    version = repo / "clip_text" / "1"
    tokenizer = TextTokenizer(version / "tokenizer" / "tokenizer.json", max_length=77, pad_id=49407)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(version / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    for batch in (1, 2, 4, 8, 16, 32):
        ids, mask = tokenizer.encode([TEXTS[i % len(TEXTS)] for i in range(batch)])
        feeds = {INPUT_IDS: ids, ATTENTION_MASK: mask}
        session.run(None, feeds)
        times = []
        for _ in range(max(5, 64 // batch)):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(
            f"threads {threads}, batch {batch:2d}: {1000 * median / batch:.2f} ms per text, "
            f"{batch / median:.0f} texts/s"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1)
