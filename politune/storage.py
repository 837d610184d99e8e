"""Where artifacts live: local folders or s3:// through pyarrow filesystems, and the run manifest.

An s3:// URI uses the standard AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL for an S3-compatible server such as MinIO or moto).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
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


# What an S3 client says when the storage, not the data, is at fault: the same patterns Ray Data retries on
# (DataContext.retried_io_errors), and a refused or reset connection.
OUTAGE_MARKERS = ("AWS Error NETWORK_CONNECTION", "AWS Error INTERNAL_FAILURE", "AWS Error SLOW_DOWN",
                  "AWS Error SERVICE_UNAVAILABLE", "AWS Error UNKNOWN (HTTP status 503)", "curlCode: 7",
                  "Couldn't connect to server", "Connection refused", "Connection reset by peer")


def is_outage(err: BaseException) -> bool:
    """Whether an error (or one it was raised from, or a Ray Train worker's) says the storage did not answer."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if any(marker in str(e) for marker in OUTAGE_MARKERS):
            return True
        todo += [e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()]
    return False


def storage_endpoint() -> str:
    """Where s3:// goes, for messages: the endpoint URL without any user:password part, or AWS S3."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return "AWS S3"
    parsed = urlparse(endpoint)
    return parsed._replace(netloc=parsed.hostname + (f":{parsed.port}" if parsed.port else "")).geturl() \
        if parsed.hostname else endpoint


class StorageUnavailable(OSError):
    """The storage stopped answering while a stage read or wrote an artifact, after the clients' retries."""


@contextmanager
def outages_named(stage: str, artifact: str, uri: str, rerun: str) -> Iterator[None]:
    """Turn a storage outage anywhere in a stage into one error naming the endpoint, the artifact and what a rerun
    does. `rerun` finishes "run the same command again when the storage answers: it ..."."""
    try:
        yield
    except Exception as err:
        if not is_outage(err) or isinstance(err, StorageUnavailable):
            raise
        raise StorageUnavailable(
            f"storage at {storage_endpoint()} stopped answering while {stage} was making {artifact} ({uri}), "
            f"after retries: {_aws_error(err)}. {artifact} is not recorded as done; run the same command again "
            f"when the storage answers: it {rerun}") from err


def _aws_error(err: BaseException) -> str:
    text = str(err)
    for e in (err.__cause__, err.__context__):
        if e is not None:
            text += "\n" + str(e)
    found = re.search(r"AWS Error [^\n]*", text) or re.search(r"[^\n]*(Connection refused|reset by peer)[^\n]*", text)
    return (found.group(0) if found else text.strip().splitlines()[-1]).strip()[:300]


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
        complete: bool = True,
    ) -> dict[str, Any]:
        """`complete` False: some of the artifact's rows failed (and are recorded as failures); such an artifact is
        never current, so its stage runs again and redoes what failed."""
        entry = {
            "path": path,
            "config_hash": config_hash,
            "inputs": inputs or {},
            "models": models or [],
            "code_version": code_version(),
            "counts": counts,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if not complete:
            entry["complete"] = False
        self.data["artifacts"][artifact] = entry
        write_json(self.uri, self.data)
        return entry

    def forget(self, *artifacts: str) -> None:
        """Drop artifacts about to be rewritten: an artifact is complete only while the manifest records it, so a
        stage that stops halfway leaves nothing a later stage (or a rerun) would take for done."""
        if any(a in self.data["artifacts"] for a in artifacts):
            for a in artifacts:
                self.data["artifacts"].pop(a, None)
            write_json(self.uri, self.data)

    def require(self, artifact: str, uri: str, command: str) -> None:
        """A stage's input must be whole: recorded here, not merely present (a stage stopped halfway leaves files)."""
        if self.artifact(artifact) is not None:
            return
        if not exists(uri):
            raise FileNotFoundError(f"{uri} does not exist: run `{command}` first")
        raise FileNotFoundError(f"{uri} is not complete (the run's manifest does not record it: the stage that "
                                f"writes it stopped halfway): run `{command}` again")

    def artifact(self, name: str) -> dict[str, Any] | None:
        return self.data["artifacts"].get(name)

    def fingerprint(self, name: str) -> str:
        """An artifact's identity as the next stage's input ("" when it is not recorded): what made it (its config
        hash, its own inputs' fingerprints, its models), so a change anywhere upstream changes it."""
        entry = self.artifact(name)
        if entry is None:
            return ""
        made_of = {k: entry.get(k) for k in ("config_hash", "inputs", "models")}
        return hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()[:16]

    def is_current(self, name: str, config_hash: str, inputs: dict[str, str]) -> bool:
        """Whether the artifact is recorded as made, completely, with this config hash from these inputs."""
        entry = self.artifact(name)
        return (entry is not None and entry["config_hash"] == config_hash and entry["inputs"] == inputs
                and entry.get("complete", True))

    def record_stage(self, stage: str, *, started_at: datetime, seconds: float, models: dict[str, str],
                     figures: dict[str, Any]) -> None:
        """When a stage last ran, for how long, on what code with which models (reference: revision), and its own
        figures (throughput, tokens, steps)."""
        self.data.setdefault("stages", {})[stage] = {
            "models": models,
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "code_version": code_version(),
            "figures": figures,
        }
        write_json(self.uri, self.data)

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.data.get("stages", {}).get(name)
