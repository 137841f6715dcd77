"""The layout chosen at serve time (issue 24, part 1): ``repo build`` leaves the instances and
threads to the server, the launcher sizes them from the CPUs tritonserver may use, a build
option or a layout file wins, and a bad layout file is a clear error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vlpserve.errors import ConfigError
from vlpserve.model_repository import RepositoryOptions, build_repository
from vlpserve.model_repository.config import read_config
from vlpserve.model_repository.placement import (
    AUTO,
    BUILT,
    LAYOUT_PARAMETER,
    ROLE_PARAMETER,
    Layout,
    auto_layout,
)
from vlpserve.ort import cpu_quota, usable_cpus
from vlpserve.serve import TritonServer

ENCODERS = ("clip_text", "clip_image_encoder", "clip_text_encoder")
PREPROCESSORS = ("clip_image_preprocessor", "clip_tokenizer")


def parameters(config: Any) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def served(server: TritonServer) -> dict[str, Any]:
    """The configuration of each CLIP model as the server runs it."""
    from tritonclient.grpc import InferenceServerClient

    client = InferenceServerClient(server.grpc_url)
    try:
        return {name: client.get_model_config(name).config for name in ENCODERS + PREPROCESSORS}
    finally:
        client.close()


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 6, 8, 16, 32, 64, 256])
def test_auto_layout_fills_the_cpus_it_is_given(cpus: int) -> None:
    layout = auto_layout(cpus)
    assert layout.encoder_instances * layout.encoder_threads <= cpus
    assert layout.encoder_instances * layout.encoder_threads > cpus // 2
    assert layout.preprocess_instances * layout.decode_threads <= cpus
    assert 1 <= layout.encoder_instances <= 8
    if cpus >= 2:  # two instances overlap one batch with the next (measured on 2 cores)
        assert layout.encoder_instances >= 2
    assert layout.cpus == cpus


def test_one_cpu_gets_one_thread_per_instance() -> None:
    layout = auto_layout(1)
    assert (layout.encoder_instances, layout.encoder_threads) == (1, 1)
    assert (layout.preprocess_instances, layout.decode_threads) == (1, 1)


def test_cgroup_quota(tmp_path: Path) -> None:
    """A CPU limit (cgroup v2 ``cpu.max``, v1 ``cfs_quota_us``) caps the CPUs counted."""
    own = tmp_path / "cgroup"
    own.write_text("0::/pod\n")
    (tmp_path / "pod").mkdir()
    (tmp_path / "pod" / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path, own) == 2
    (tmp_path / "pod" / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path, own) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "kubepods").mkdir(parents=True)
    own.write_text("4:memory:/x\n3:cpu,cpuacct:/kubepods\n")
    (v1 / "cpu" / "kubepods" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "kubepods" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(v1, own) == 1
    (v1 / "cpu" / "kubepods" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(v1, own) is None
    assert cpu_quota(tmp_path / "none", tmp_path / "none") is None
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


def test_layout_file_round_trip_and_errors(tmp_path: Path) -> None:
    layout = Layout(
        encoder_instances=3, encoder_threads=1, max_queue_delay_us=500, measured={"a": 1.5}
    )
    assert Layout.read(layout.write(tmp_path / "layout.json")) == layout
    bad = tmp_path / "bad.json"
    cases = {
        "{": "not JSON",
        "[]": "a JSON object",
        '{"version": 9}': "version 9",
        '{"version": 1, "encoder_instancez": 2}': "unknown keys",
        '{"version": 1, "encoder_instances": 0}': "encoder_instances must be in 1..256",
        '{"version": 1, "encoder_threads": "2"}': "encoder_threads must be int",
        '{"version": 1, "encoder_instances": null}': "encoder_instances must be int",
        '{"version": 1, "max_batch": 0}': "max_batch must be in 1..4096",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message) as info:
            Layout.read(bad)
        assert str(bad) in str(info.value)
    with pytest.raises(ConfigError, match="No such file"):
        Layout.read(tmp_path / "missing.json")


def test_the_cli_reports_a_bad_layout_file(
    tmp_path: Path, clip_export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vlpserve.cli import main

    bad = tmp_path / "layout.json"
    bad.write_text('{"version": 1, "encoder_threads": -1}')
    assert main(["serve", str(tmp_path), "--layout", str(bad)]) == 1
    assert "encoder_threads must be in 0..1024" in capsys.readouterr().err
    out = tmp_path / "repo"
    assert main(["repo", "build", str(clip_export), "--out", str(out), "--layout", str(bad)]) == 1
    assert str(bad) in capsys.readouterr().err


def test_repo_build_marks_what_the_server_sizes(clip_export: Path, tmp_path: Path) -> None:
    """By default every graph and pre-processing model is ``auto`` and written with a bare
    tritonserver's defaults; an option given is written as built, the rest stays auto; a
    layout file is written as built, the options still winning."""
    auto = tmp_path / "auto"
    build_repository(RepositoryOptions(export_dir=clip_export, out=auto))
    for name in ENCODERS + PREPROCESSORS:
        config = read_config(auto / name / "config.pbtxt")
        found = parameters(config)
        assert found[LAYOUT_PARAMETER] == AUTO, name
        assert found[ROLE_PARAMETER] == ("encoder" if name in ENCODERS else "preprocess")
        assert config.instance_group[0].count == 1
    assert LAYOUT_PARAMETER not in parameters(read_config(auto / "clip_image" / "config.pbtxt"))

    given = tmp_path / "given"
    build_repository(RepositoryOptions(export_dir=clip_export, out=given, encoder_threads=1))
    assert parameters(read_config(given / "clip_text" / "config.pbtxt"))[LAYOUT_PARAMETER] == BUILT
    preprocessor = read_config(given / "clip_image_preprocessor" / "config.pbtxt")
    assert parameters(preprocessor)[LAYOUT_PARAMETER] == AUTO

    layout = Layout(
        encoder_instances=3,
        encoder_threads=2,
        preprocess_instances=2,
        decode_threads=3,
        max_queue_delay_us=700,
        max_batch=8,
    )
    filed = tmp_path / "filed"
    build_repository(
        RepositoryOptions(export_dir=clip_export, out=filed, layout=layout, encoder_instances=4)
    )
    encoder = read_config(filed / "clip_image_encoder" / "config.pbtxt")
    assert encoder.instance_group[0].count == 4  # the option wins over the file
    assert parameters(encoder)["intra_op_threads"] == "2"
    assert parameters(encoder)[LAYOUT_PARAMETER] == BUILT
    assert encoder.dynamic_batching.max_queue_delay_microseconds == 700
    assert list(encoder.dynamic_batching.preferred_batch_size) == [8]
    preprocessor = read_config(filed / "clip_image_preprocessor" / "config.pbtxt")
    assert preprocessor.instance_group[0].count == 2
    assert parameters(preprocessor)["decode_threads"] == "3"
    assert parameters(preprocessor)[LAYOUT_PARAMETER] == BUILT


def _embeddings_match(server: TritonServer, photos: dict[str, bytes], expected: Any) -> None:
    from vlpserve.client import Client

    with Client(server.grpc_url, timeout_s=60) as client:
        texts = client.embed_texts(["a photo of a cat", "a dog"])
        images = client.embed_images(list(photos.values())[:2])
    np.testing.assert_allclose(texts, expected[0], atol=1e-5)
    np.testing.assert_allclose(images, expected[1], atol=1e-5)


@pytest.fixture(scope="module")
def built_embeddings(clip_export: Path, photos: dict[str, bytes], tmp_path_factory: Any) -> Any:
    """Texts and images served by a repository built with one instance and explicit threads:
    what every layout must answer too."""
    from vlpserve.client import Client

    out = tmp_path_factory.mktemp("built")
    build_repository(
        RepositoryOptions(
            export_dir=clip_export,
            out=out,
            encoder_instances=1,
            encoder_threads=0,
            preprocess_instances=1,
        )
    )
    with TritonServer(out) as server:
        assert server.placed == {}  # built as asked: the server keeps it
        for name, config in served(server).items():
            assert config.instance_group[0].count == 1, name
        with Client(server.grpc_url, timeout_s=60) as client:
            texts = client.embed_texts(["a photo of a cat", "a dog"])
            images = client.embed_images(list(photos.values())[:2])
    return texts, images


def test_the_server_sizes_auto_models_for_its_cpus(
    clip_repo: Path, photos: dict[str, bytes], built_embeddings: Any
) -> None:
    """The same repository, served on every CPU this process has and pinned to one: the
    override reaches the models (the server's own config says the instances and threads),
    and the embeddings are those of the built layout."""
    cpus = usable_cpus()
    expected = auto_layout(cpus)
    with TritonServer(clip_repo) as server:
        configs = served(server)
        for name in ENCODERS:
            assert configs[name].instance_group[0].count == expected.encoder_instances, name
            assert parameters(configs[name])["intra_op_threads"] == str(expected.encoder_threads)
        preprocessor = parameters(configs["clip_image_preprocessor"])
        assert preprocessor["decode_threads"] == str(expected.decode_threads)
        assert set(server.placed) >= set(ENCODERS)
        _embeddings_match(server, photos, built_embeddings)

    with TritonServer(clip_repo, cpus=frozenset({min(os.sched_getaffinity(0))})) as pinned:
        configs = served(pinned)
        for name in ENCODERS:
            assert configs[name].instance_group[0].count == 1, name
            assert parameters(configs[name])["intra_op_threads"] == "1"
        assert parameters(configs["clip_image_preprocessor"])["decode_threads"] == "1"
        _embeddings_match(pinned, photos, built_embeddings)


def test_a_layout_file_given_to_serve_sizes_every_model(
    clip_repo: Path, photos: dict[str, bytes], built_embeddings: Any, tmp_path: Path
) -> None:
    layout = Layout(
        encoder_instances=3,
        encoder_threads=1,
        preprocess_instances=2,
        decode_threads=1,
        max_queue_delay_us=100,
        max_batch=4,
    )
    path = layout.write(tmp_path / "layout.json")
    with TritonServer(clip_repo, layout=Layout.read(path)) as server:
        configs = served(server)
        for name in ENCODERS:
            assert configs[name].instance_group[0].count == 3, name
            assert configs[name].dynamic_batching.max_queue_delay_microseconds == 100
            assert list(configs[name].dynamic_batching.preferred_batch_size) == [4]
        for name in PREPROCESSORS:
            assert configs[name].instance_group[0].count == 2, name
        _embeddings_match(server, photos, built_embeddings)
        # A stub restarted by the watch keeps the layout it was given.
        server.restart_model("clip_image_encoder")
        assert served(server)["clip_image_encoder"].instance_group[0].count == 3


def test_serve_prints_the_layout(clip_repo: Path) -> None:
    """`vlpserve serve` says what each model got (the CLI adapter over the same launcher)."""
    import signal

    from tests.serve.helpers import Serve

    expected = auto_layout(usable_cpus())
    with Serve(clip_repo) as serve:
        text = serve.wait_for("serving;")
        code, _, _ = serve.stop(signal.SIGTERM, timeout_s=60)
    assert f"layout   clip_image_encoder: {expected.encoder_instances} CPU instance(s)" in text
    assert code == 0
