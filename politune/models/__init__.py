"""Model references: `tiny` (the embedded model the project builds, world/tiny.py), a local folder or a hub id.
Loading them: models/loading.py; checking them before a stage runs: models/references.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

from politune.config import TINY_MODEL, RunConfig
from politune.models.references import looks_local

TINY_BUILD_RECORD = "politune_tiny.json"  # what the tiny model was built with, written beside its weights


def resolve_model(ref: str, cfg: RunConfig) -> str:
    """A config's model reference as from_pretrained takes it: `tiny` is the built tiny model's folder, a local
    folder is made absolute as this process sees it (call it on the driver: Ray Train workers and Serve replicas
    run in folders of their own), a hub id passes through."""
    if ref == TINY_MODEL:
        return str(Path(cfg.tiny_model.out).absolute())
    return str(Path(ref).expanduser().absolute()) if looks_local(ref) else ref


def model_revision(ref: str, cfg: RunConfig) -> str:
    """Which version of a model a stage used, for the manifest: a hub id's cached snapshot commit, a local folder's
    hash of its config.json, the tiny model's build record and its weight files' names and sizes, or "" when
    neither can be told. (The random and the warmed tiny model have the same config and sizes: the build record
    tells them apart.)"""
    if ref == TINY_MODEL or looks_local(ref):
        folder = Path(resolve_model(ref, cfg))
        if not (folder / "config.json").is_file():
            return ""
        h = hashlib.sha256((folder / "config.json").read_bytes())
        if (folder / TINY_BUILD_RECORD).is_file():
            h.update((folder / TINY_BUILD_RECORD).read_bytes())
        for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            h.update(f"{path.name}:{path.stat().st_size}".encode())
        return f"folder:{h.hexdigest()[:12]}"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(ref, "config.json")
    if isinstance(cached, str) and "/snapshots/" in cached:
        return f"commit:{cached.split('/snapshots/')[1].split('/')[0]}"
    return ""
