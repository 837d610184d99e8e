"""The runs in a storage root, from their manifests and reports: what `politune runs` lists and shows.

A run is a folder of the storage root (local or s3://) holding a manifest.json. A stage counts as done while
the manifest records the artifacts it writes; its timing and figures are those of the last time it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from politune.stages import PIPELINE
from politune.storage import exists, join, read_json, resolve


@dataclass
class Position:
    model: str
    instrument: str
    mode: str
    economic: float
    social: float


@dataclass
class RunSummary:
    run_id: str
    uri: str
    stages_done: list[str]
    adapters: list[str]
    positions: list[Position]  # the base's and each final adapter's, on the report's first instrument and mode
    last_written: str
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)


def list_runs(root: str) -> list[RunSummary]:
    """Every run under `root`, newest first. A root that does not exist holds no runs."""
    fs, path = resolve(root)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    runs = []
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.type == pafs.FileType.Directory:
            try:
                runs.append(read_run(root, info.base_name))
            except FileNotFoundError:  # a folder without a manifest is not a run
                continue
    return sorted(runs, key=lambda r: r.last_written, reverse=True)


def read_run(root: str, run_id: str) -> RunSummary:
    uri = join(root, run_id)
    manifest_uri = join(uri, "manifest.json")
    if not exists(manifest_uri):
        raise FileNotFoundError(f"no run {run_id!r} in {root} (no {manifest_uri}); `politune runs` lists them")
    manifest = read_json(manifest_uri)
    artifacts = manifest.get("artifacts", {})
    done = [s.name for s in PIPELINE  # a stage is done while the manifest records its artifact (its done_when)
            if any(a == s.done_when or (s.done_when.endswith(":") and a.startswith(s.done_when)) for a in artifacts)]
    adapters = sorted(a.removeprefix("adapter:") for a in artifacts if a.startswith("adapter:"))
    written = [e.get("written_at", "") for e in artifacts.values()]
    scores_uri = join(uri, "report", "scores.json")
    positions = _positions(read_json(scores_uri)) if "eval" in artifacts and exists(scores_uri) else []
    return RunSummary(run_id, uri, done, adapters, positions, max(written, default=""), manifest)


def _positions(scores: dict[str, Any]) -> list[Position]:
    rows = [p for p in scores.get("positions", []) if p.get("role") in ("base", "adapter")]
    if not rows:
        return []
    first = (rows[0]["instrument"], rows[0]["mode"])
    return [Position(p["model"], p["instrument"], p["mode"], p["economic"], p["social"]) for p in rows
            if (p["instrument"], p["mode"]) == first and p["economic"] is not None]
