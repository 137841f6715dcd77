"""vlpserve env: versions, CUDA, each execution provider tried (and why it does not work),
and the version a real tritonserver reports."""

from __future__ import annotations

import json
import re

from vlpserve.cli import main
from vlpserve.env import missing_library


def test_env_reports_what_works_and_why_not(capsys) -> None:
    assert main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["packages"]["vlpserve"] and env["packages"]["onnxruntime"]
    providers = {p["name"]: p for p in env["providers"]}
    assert providers["CPUExecutionProvider"]["works"] is True
    for name in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        assert providers[name]["works"] or providers[name]["why"], name
    assert re.fullmatch(r"\d+\.\d+\.\d+", env["tritonserver"]), env["tritonserver"]
    assert "driver" in env["cuda"]
    assert main(["env", "--no-triton"]) == 0
    text = capsys.readouterr().out
    assert "CPUExecutionProvider" in text and "works" in text and "tritonserver" not in text


def test_a_missing_library_is_named() -> None:
    assert missing_library(("libc.so.6",)) == ""
    reason = missing_library(("libc.so.6", "libvlpserve-none.so.1"))
    assert reason.startswith("libvlpserve-none.so.1 not loadable")
