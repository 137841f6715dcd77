"""ONNX Runtime sessions, built one way: the export's parity checks, the served models and
the benchmarks' baselines all run graphs through ``session``.

``spin`` keeps ORT's default (intra-op threads busy-wait between parallel sections). Turning
it off, so that the tokenizer, image decoder and gRPC frontend sharing the cores get them,
was measured on the 2-core CPU machine (CLIP text and image at concurrency 1 and 32, three
interleaved runs each) and was no better, within that machine's run-to-run noise; a process
that runs two graphs at once (BLIP generation: vision encoder and decoder) turns it off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def session(
    path: Path | str,
    *,
    on_gpu: bool = False,
    device_id: int = 0,
    threads: int = 0,
    spin: bool = True,
) -> Any:
    """An ``onnxruntime.InferenceSession`` over ``path`` with every graph optimization:
    CUDA first when ``on_gpu`` and ORT has it, else CPU with ``threads`` intra-op threads
    (0: ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    providers: list[Any] = ["CPUExecutionProvider"]
    if on_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
    return ort.InferenceSession(str(path), options, providers=providers)
