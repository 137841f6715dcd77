"""A model repository on object storage: ``vlpserve repo push DIR s3://bucket/prefix``.

tritonserver reads an S3 repository itself (``s3://host:port/bucket/prefix`` for a store
that is not AWS; credentials from the standard ``AWS_*`` variables), Python-backend models
included. Object stores keep no empty folders, and an ensemble's version folder is empty:
Triton then refuses the ensemble ("at least one version must be available"). The push
therefore puts a marker object into every empty folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vlpserve.errors import ConfigError, RepositoryError
from vlpserve.progress import ProgressFn, no_progress

logger = logging.getLogger(__name__)

KEEP = ".vlpserve-keep"  # what makes an empty folder exist on object storage
SKIPPED = {"__pycache__"}  # written by the local server; the remote one writes its own


def split_s3(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``."""
    if not url.startswith("s3://"):
        raise ConfigError(f"{url}: expected s3://bucket/prefix")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ConfigError(f"{url}: no bucket")
    return bucket, prefix.strip("/")


def push(
    repo: Path | str,
    url: str,
    *,
    endpoint_url: str | None = None,
    progress: ProgressFn = no_progress,
) -> int:
    """Upload the repository folder ``repo`` to ``url``; returns the objects written.

    Every file goes under the prefix with its relative path (``__pycache__`` left out);
    every empty folder gets a ``.vlpserve-keep`` marker so that it exists there.
    """
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:
        raise ConfigError("repo push needs boto3: pip install 'vlpserve[serve]'") from exc
    root = Path(repo)
    if not root.is_dir():
        raise RepositoryError(f"{root} is not a folder")
    bucket, prefix = split_s3(url)
    client = boto3.client("s3", endpoint_url=endpoint_url)
    written = 0
    try:
        for path in sorted(root.rglob("*")):
            if SKIPPED & set(path.relative_to(root).parts):
                continue
            key = "/".join(p for p in (prefix, path.relative_to(root).as_posix()) if p)
            if path.is_file():
                client.upload_file(str(path), bucket, key)
                written += 1
                progress(key)
            elif path.is_dir() and not any(p.name not in SKIPPED for p in path.iterdir()):
                client.put_object(Bucket=bucket, Key=f"{key}/{KEEP}", Body=b"")
                written += 1
    except (BotoCoreError, ClientError) as exc:
        raise RepositoryError(f"cannot write to {url}: {exc}") from exc
    logger.info("%d objects pushed to %s", written, url)
    return written
