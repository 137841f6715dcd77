"""Length-aware text batching (issue 24, part 3): what running a batch in groups of similar
length saves, against one batch padded to its longest, on a realistic mix of texts.

The served text model's own steps, in process: the server's tokenizer, then
``runtime.text.length_groups`` with each ``call_tokens`` (0: one call, as before), then the
full-size CLIP ViT-B/32 text graph (the bench's export, fp32 and int8) on one thread per
usable CPU. Texts: search queries, label prompts and captions of 3 to 30 tokens.

Run from the repository root after a bench has exported the graphs:
    .venv/bin/python benchmarks/results/2026-12-06-text-length-groups.py [WORKDIR]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from vlpserve.export.report import ExportReport
from vlpserve.layout import ExportFolder
from vlpserve.model_repository.runtime.text import TextTokenizer, length_groups
from vlpserve.ort import session

QUERIES = ["red shoes", "sunset beach", "golden retriever puppy", "vintage car", "espresso"]
LABELS = ["cat", "dog", "airplane", "traffic light", "mountain bike", "pizza", "violin"]
CAPTIONS = [
    "a man riding a wave on top of a surfboard in the middle of the ocean on a sunny day",
    "two children playing with a red kite on a grassy hill while their parents watch",
    "a plate of pasta with tomato sauce, basil and grated parmesan cheese on a wooden table",
    "an old stone bridge over a quiet river surrounded by autumn trees with orange leaves",
]


def texts(batch: int) -> list[str]:
    mix = [*QUERIES, *(f"a photo of a {label}" for label in LABELS), *CAPTIONS]
    return [mix[i % len(mix)] for i in range(batch)]


def rates(
    graph, feeds: dict[str, np.ndarray], lengths: np.ndarray, settings: tuple[int, ...]
) -> dict[int, tuple[int, float]]:
    """texts/s and group count per ``call_tokens`` (0: one call), the settings' runs
    interleaved so that a change of the machine's pace falls on all of them alike."""
    plans = {
        call_tokens: (
            length_groups(lengths.tolist(), call_tokens)
            if call_tokens
            else [list(range(len(lengths)))]
        )
        for call_tokens in settings
    }

    def run(groups: list[list[int]]) -> float:
        started = time.perf_counter()
        for rows in groups:
            width = int(lengths[rows].max())
            graph.run(None, {k: v[rows, :width] for k, v in feeds.items()})
        return time.perf_counter() - started

    times: dict[int, list[float]] = {call_tokens: [] for call_tokens in settings}
    for repeat in range(16):
        for call_tokens, groups in plans.items():
            elapsed = run(groups)
            if repeat:  # the first round warms up
                times[call_tokens].append(elapsed)
    return {
        call_tokens: (len(plans[call_tokens]), len(lengths) / float(np.median(times[call_tokens])))
        for call_tokens in settings
    }


def main() -> None:
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else "build/bench")
    print("| graph | batch | lengths (tokens) | call_tokens | groups | texts/s | vs one call |")
    print("|---|---|---|---|---|---|---|")
    for name in ("export-clip", "export-clip-int8"):
        folder = ExportFolder(workdir / name)
        report = ExportReport.read(folder.root)
        tokenizer = TextTokenizer.of(folder.tokenizer, **report.tokenizer_options())
        graph = session(folder.graph("text_encoder"))
        for batch in (8, 16, 32):
            ids, mask = tokenizer.encode(texts(batch))
            lengths = mask.sum(axis=1)
            feeds = {"input_ids": ids, "attention_mask": mask}
            found = rates(graph, feeds, lengths, (0, 4, 16, 64))
            base = found[0][1]
            span = f"{lengths.min()}-{lengths.max()}, mean {lengths.mean():.1f}"
            for call_tokens, (count, speed) in found.items():
                print(
                    f"| {report.precision} | {batch} | {span if not call_tokens else ''} | "
                    f"{call_tokens} | {count} | {speed:.1f} | {speed / base:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
