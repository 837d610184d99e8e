"""The adapter registry: `<run>/adapters/registry.json`, one entry an adapter. Serve and evaluate read only
this: an adapter is known by its name (`left`, `right`, `left-sft` …), never by a path someone typed.

Each entry says what the adapter is (side, method, base model), where its files are
(adapter_config.json + adapter_model.safetensors, local or s3://), what made it (the hash of the train
config and of its preference pairs) and how it did (held-out metrics before and after training).

Every checkpoint the trainer saved is an entry too, `<adapter>.step-<N>` (`left.step-10`) with `checkpoint_of`
and `step` set and its files in `adapters/<adapter>.step-<N>/`: servable like any adapter, so evaluate can
follow an adapter step by step. `final_adapters` and `checkpoints_of` tell the two kinds apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from politune.storage import exists, join, read_json, write_json

REGISTRY_FILE = "registry.json"
CHECKPOINT_INFIX = ".step-"  # `<adapter>.step-<N>`: a checkpoint's registry name and folder


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
    checkpoint_of: str | None = None  # a training checkpoint: the adapter it is a step of (None: a final adapter)
    step: int | None = None           # a training checkpoint: its optimizer step


def registry_uri(run_uri: str) -> str:
    return join(run_uri, "adapters", REGISTRY_FILE)


def load_registry(run_uri: str) -> dict[str, AdapterEntry]:
    """name -> entry; empty when nothing was trained in this run."""
    uri = registry_uri(run_uri)
    if not exists(uri):
        return {}
    return {name: AdapterEntry(**entry) for name, entry in read_json(uri)["adapters"].items()}


def _write_registry(run_uri: str, adapters: dict[str, AdapterEntry]) -> None:
    write_json(registry_uri(run_uri), {"adapters": {name: asdict(e) for name, e in sorted(adapters.items())}})


def register(run_uri: str, entry: AdapterEntry) -> AdapterEntry:
    """Add or replace the entry of that name (a retrained adapter replaces the old one)."""
    entry.registered_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    adapters = load_registry(run_uri)
    adapters[entry.name] = entry
    _write_registry(run_uri, adapters)
    return entry


def register_checkpoints(run_uri: str, adapter: str, entries: list[AdapterEntry]) -> list[AdapterEntry]:
    """Make `entries` the checkpoints of `adapter`, in one write: every other entry that was a checkpoint of it
    (an earlier training's) goes."""
    wrong = [e.name for e in entries if e.checkpoint_of != adapter or e.step is None
             or e.name != checkpoint_name(adapter, e.step)]
    if wrong:
        raise ValueError(f"not checkpoints of {adapter!r} named <adapter>.step-<N>: {wrong}")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    adapters = {name: e for name, e in load_registry(run_uri).items() if e.checkpoint_of != adapter}
    for entry in entries:
        entry.registered_at = now
        adapters[entry.name] = entry
    _write_registry(run_uri, adapters)
    return entries


def get_adapter(run_uri: str, name: str) -> AdapterEntry:
    adapters = load_registry(run_uri)
    if name not in adapters:
        known = ", ".join(sorted(adapters)) or "none: run `politune train` first"
        raise KeyError(f"no adapter {name!r} in {registry_uri(run_uri)}; registered: {known}")
    return adapters[name]


def adapter_name(side: str, method: str) -> str:
    """`left` for the paper's DPO adapter of the left, `left-sft` for its SFT variant."""
    return side if method == "dpo" else f"{side}-{method}"


def checkpoint_name(adapter: str, step: int) -> str:
    """`left.step-10`: the registry name of adapter `left`'s training checkpoint at optimizer step 10."""
    return f"{adapter}{CHECKPOINT_INFIX}{step}"


def checkpoint_step(adapter: str, name: str) -> int | None:
    """N when `name` is `<adapter>.step-<N>`, else None."""
    prefix = f"{adapter}{CHECKPOINT_INFIX}"
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


def final_adapters(registry: dict[str, AdapterEntry]) -> dict[str, AdapterEntry]:
    """The trained adapters themselves (`left`, `right-sft` …), without their checkpoints."""
    return {name: e for name, e in registry.items() if e.checkpoint_of is None}


def checkpoints_of(registry: dict[str, AdapterEntry], adapter: str) -> list[AdapterEntry]:
    """The registered training checkpoints of `adapter`, by step (the last is the final adapter's step)."""
    return sorted((e for e in registry.values() if e.checkpoint_of == adapter), key=lambda e: e.step or 0)
