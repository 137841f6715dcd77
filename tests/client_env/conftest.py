"""The client-only environment's fixtures (``make test`` runs this folder from
``.venv-client``: ``pip install 'vlpserve[openai]'`` beside numpy 2, nothing heavier).

The servers run in the main environment and the expected answers come from it
(tests/test_client_env.py writes both into the file ``$VLPSERVE_CLIENT_ENV`` names): what
this environment's client gets must be what the main environment's client got, which the
main suite holds to Hugging Face.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="session")
def setting() -> dict[str, Any]:
    path = os.environ.get("VLPSERVE_CLIENT_ENV")
    if not path:
        pytest.fail("VLPSERVE_CLIENT_ENV is not set: tests/test_client_env.py runs this folder")
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def url(setting: dict[str, Any]) -> str:
    return str(setting["grpc_url"])


@pytest.fixture(scope="session")
def expected(setting: dict[str, Any]) -> dict[str, np.ndarray]:
    with np.load(setting["expected"]) as found:
        return {name: found[name] for name in found.files}


@pytest.fixture(scope="session")
def photos(setting: dict[str, Any]) -> dict[str, bytes]:
    return {name: Path(path).read_bytes() for name, path in setting["photos"].items()}
