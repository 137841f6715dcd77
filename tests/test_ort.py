"""Sessions built by vlpserve.ort: in a process pinned to fewer CPUs than the machine has,
ONNX Runtime's default (one thread per core of the machine) gives way to one per usable CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

COUNT_THREADS = """
import os, sys
os.sched_setaffinity(0, {cpu})
import onnxruntime  # its import starts threads of its own (numpy's BLAS): not counted
from vlpserve.ort import session
before = len(os.listdir("/proc/self/task"))
graph = session(sys.argv[1], threads=int(sys.argv[2]))
print(len(os.listdir("/proc/self/task")) - before)
"""


def _threads_added(graph: Path, threads: int) -> int:
    cpu = {min(os.sched_getaffinity(0))}
    code = COUNT_THREADS.format(cpu=cpu)
    out = subprocess.run(
        [sys.executable, "-c", code, str(graph), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a machine of 2 CPUs")
def test_a_process_pinned_to_one_cpu_gets_one_intra_op_thread(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["y"])], "g", [x], [y])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert _threads_added(path, threads=0) == 0  # the default: the caller's thread alone
    assert _threads_added(path, threads=2) == 1  # an explicit count still wins
