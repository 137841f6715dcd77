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


def test_known_bad_combinations_are_named() -> None:
    from vlpserve.env import known_bad

    fine = {"numpy": "1.26.4", "nvidia-pytriton": "0.7.0", "transformers": "5.23.0"}
    assert known_bad(fine) == []
    assert known_bad({"numpy": "2.4.6", "transformers": "4.54.1", "protobuf": "6.33.6"}) == []
    [stub] = known_bad({**fine, "numpy": "2.4.6"})
    assert "numpy 2.4.6 with nvidia-pytriton" in stub and "numpy<2" in stub
    [old] = known_bad({**fine, "transformers": "4.53.3"})
    assert "transformers 4.53.3" in old and ">=4.54,<6" in old
    assert known_bad({**fine, "transformers": "6.0.0.dev0"})
    [spm] = known_bad({**fine, "sentencepiece": "0.2.3", "protobuf": "6.33.6"})
    assert "protobuf 7" in spm
    assert known_bad({**fine, "sentencepiece": "0.2.0", "protobuf": "6.33.6"}) == []
    assert len(known_bad({**fine, "onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"})) == 1


def test_env_lists_the_versions_pipelines_care_about(capsys) -> None:
    assert main(["env", "--json", "--no-triton"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert {"numpy", "transformers", "tritonclient"} <= set(env["packages"])
    assert env["warnings"] == []  # this environment is a supported one
