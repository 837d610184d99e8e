"""Where artifacts live: local folders or s3:// through pyarrow filesystems, and the run manifest.

An s3:// URI uses the standard AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL for an S3-compatible server such as MinIO or moto).
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

import politune


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem from the standard AWS environment variables."""
    kwargs: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
    if is_s3(uri):
        return s3_filesystem(), uri.removeprefix("s3://").rstrip("/")
    if "://" in uri:
        raise ValueError(f"{uri}: only local paths and s3:// URIs are supported")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def delete_dir(uri: str) -> None:
    """Remove a folder (or S3 prefix) if it is there."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def read_json(uri: str) -> Any:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode())


def write_json(uri: str, data: Any) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(data, indent=2, sort_keys=True).encode())


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{politune.__version__}+{commit}" if commit else politune.__version__


class Manifest:
    """manifest.json at the run root: for every artifact, what made it and how many rows it holds."""

    def __init__(self, run_uri: str) -> None:
        self.uri = join(run_uri, "manifest.json")
        self.data: dict[str, Any] = read_json(self.uri) if exists(self.uri) else {"artifacts": {}}

    def record(
        self,
        artifact: str,
        *,
        config_hash: str,
        inputs: dict[str, str] | None = None,
        models: list[str] | None = None,
        counts: dict[str, Any],
        path: str,
    ) -> dict[str, Any]:
        entry = {
            "path": path,
            "config_hash": config_hash,
            "inputs": inputs or {},
            "models": models or [],
            "code_version": code_version(),
            "counts": counts,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.data["artifacts"][artifact] = entry
        write_json(self.uri, self.data)
        return entry

    def artifact(self, name: str) -> dict[str, Any] | None:
        return self.data["artifacts"].get(name)

    def config_hash(self, name: str) -> str:
        """The config hash an artifact was made with ("" when it is not recorded): an input's identity."""
        return (self.artifact(name) or {}).get("config_hash", "")
