"""Model references: `tiny` (the embedded model the project builds, models/tiny.py), a local folder or a hub id.
Loading them: models/loading.py; checking them before a stage runs: models/references.py."""

from __future__ import annotations

from pathlib import Path

from politune.config import TINY_MODEL, RunConfig
from politune.models.references import looks_local


def resolve_model(ref: str, cfg: RunConfig) -> str:
    """A config's model reference as from_pretrained takes it: `tiny` is the built tiny model's folder, a local
    folder is made absolute as this process sees it (call it on the driver: Ray Train workers and Serve replicas
    run in folders of their own), a hub id passes through."""
    if ref == TINY_MODEL:
        return str(Path(cfg.tiny_model.out).absolute())
    return str(Path(ref).expanduser().absolute()) if looks_local(ref) else ref
