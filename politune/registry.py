"""The adapter registry: `<run>/adapters/registry.json`, one entry an adapter. Serve and evaluate read only
this: an adapter is known by its name (`left`, `right`, `left-sft` …), never by a path someone typed.

Each entry says what the adapter is (side, method, base model), where its files are
(adapter_config.json + adapter_model.safetensors, local or s3://), what made it (the hash of the train
config and of its preference pairs) and how it did (held-out metrics before and after training).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from politune.storage import exists, join, read_json, write_json

REGISTRY_FILE = "registry.json"


@dataclass
class AdapterEntry:
    name: str
    side: str
    method: str
    base_model: str
    path: str
    config_hash: str
    metrics: dict[str, Any] = field(default_factory=dict)
    registered_at: str = ""


def registry_uri(run_uri: str) -> str:
    return join(run_uri, "adapters", REGISTRY_FILE)


def load_registry(run_uri: str) -> dict[str, AdapterEntry]:
    """name -> entry; empty when nothing was trained in this run."""
    uri = registry_uri(run_uri)
    if not exists(uri):
        return {}
    return {name: AdapterEntry(**entry) for name, entry in read_json(uri)["adapters"].items()}


def register(run_uri: str, entry: AdapterEntry) -> AdapterEntry:
    """Add or replace the entry of that name (a retrained adapter replaces the old one)."""
    entry.registered_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    adapters = load_registry(run_uri)
    adapters[entry.name] = entry
    write_json(registry_uri(run_uri), {"adapters": {name: asdict(e) for name, e in sorted(adapters.items())}})
    return entry


def get_adapter(run_uri: str, name: str) -> AdapterEntry:
    adapters = load_registry(run_uri)
    if name not in adapters:
        known = ", ".join(sorted(adapters)) or "none: run `politune train` first"
        raise KeyError(f"no adapter {name!r} in {registry_uri(run_uri)}; registered: {known}")
    return adapters[name]


def adapter_name(side: str, method: str) -> str:
    """`left` for the paper's DPO adapter of the left, `left-sft` for its SFT variant."""
    return side if method == "dpo" else f"{side}-{method}"
