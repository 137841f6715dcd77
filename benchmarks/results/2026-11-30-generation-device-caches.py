"""The generation engine with its decoder caches as host arrays (the engine of commit 4013b8c,
copied to /tmp/exp/generation_host.py) against bound device values (this tree), interleaved in
one run: BLIP base captioning seeded, 16 photos, greedy 30 tokens and 3 beams 20 tokens.
Both engines must give the same tokens. See the .md file of the same name for the figures."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from transformers import BlipProcessor

from vlpserve.benchmarks.baselines import sample_images
from vlpserve.export.checkpoints import Size
from vlpserve.export.common import Precision
from vlpserve.export.report import ExportReport
from vlpserve.export.samples import photo_bytes
from vlpserve.layout import ExportFolder
from vlpserve.model_repository.prepare import checkpoint, exported
from vlpserve.model_repository.runtime import generation as device_engine
from vlpserve.ort import session

HOST_ENGINE = Path("/tmp/exp/generation_host.py")


def _load_host() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generation_host", HOST_ENGINE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["generation_host"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(size: str) -> dict[str, dict[str, float]]:
    work = Path(f"build/genbench-{size}")
    source = checkpoint(work, "blip-caption", Size(size))
    export = exported(work, "blip-caption", source, Precision("fp32"))
    report = ExportReport.read(export)
    folder = ExportFolder(export)
    processor = BlipProcessor.from_pretrained(source)
    images = sample_images(photo_bytes(), 16)
    pixels = processor.image_processor(images=images, return_tensors="np")["pixel_values"]
    (embeds,) = session(folder.graph("vision_encoder")).run(
        None, {"pixel_values": pixels.astype(np.float32)}
    )
    eos, bos = int(report.required("sep_token_id")), int(report.required("bos_token_id"))

    def engine(module: ModuleType) -> Any:
        first, step = (
            session(folder.graph(g), spin=False) for g in ("decoder_first", "decoder_step")
        )
        return module.Engine(module.DecoderGraphs(first, step), eos=eos)

    host = _load_host()
    engines = {"host": (host, engine(host)), "device": (device_engine, engine(device_engine))}

    def run(name: str, beams: int, tokens: int) -> list[Any]:
        module, eng = engines[name]
        done = threading.Semaphore(0)
        out: dict[int, Any] = {}
        params = module.GenerationParams(max_new_tokens=tokens, num_beams=beams)
        for row, states in enumerate(embeds):

            def finished(ids: Any, error: Any, row: int = row) -> None:
                out[row] = ids if error is None else error
                done.release()

            eng.submit(module.Job(prompt=[bos], states=states, params=params, on_done=finished))
        for _ in embeds:
            done.acquire()
        return [out[r] for r in range(len(embeds))]

    results = {}
    for beams, tokens in ((1, 30), (3, 20)):
        assert run("host", beams, tokens) == run("device", beams, tokens)  # the same tokens
        times: dict[str, list[float]] = {"host": [], "device": []}
        for _ in range(5):
            for name in times:
                started = time.perf_counter()
                run(name, beams, tokens)
                times[name].append(time.perf_counter() - started)
        median = {k: statistics.median(v) for k, v in times.items()}
        results[f"beams{beams}"] = median | {"speed_up": median["host"] / median["device"]}
        print(beams, tokens, results[f"beams{beams}"], flush=True)
    for _, eng in engines.values():
        eng.close()
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "base")))
