"""The adapter registry: `<run>/adapters/registry.json`, one entry an adapter. Serve and evaluate read only
this: an adapter is known by its name (`left`, `right`, `left-sft` …), never by a path someone typed.

Each entry says what the adapter is (side, method, base model), where its files are
(adapter_config.json + adapter_model.safetensors, local or s3://), what made it (the hash of the train
config and of its preference pairs) and how it did (held-out metrics before and after training).

Every checkpoint the trainer saved is an entry too, `<adapter>.step-<N>` (`left.step-10`) with `checkpoint_of`
and `step` set and its files in `adapters/<adapter>.step-<N>/`: servable like any adapter, so evaluate can
follow an adapter step by step. `final_adapters` and `checkpoints_of` tell the two kinds apart.

An adapter at partial strength is an entry too, `<adapter>-x<s>` (`left-x0.5`) with `scale_of` and `scale` set:
a copy of the adapter with its LoRA B matrices times s (models/scaled_adapters.py), made for evaluation.
A mixture's adapter (train.mixtures) has `shares`: the share of each side's pairs it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from politune.storage import delete_dir, exists, join, read_json, write_json

REGISTRY_FILE = "registry.json"
CHECKPOINT_INFIX = ".step-"  # `<adapter>.step-<N>`: a checkpoint's registry name and folder
SCALE_INFIX = "-x"           # `<adapter>-x<s>`: the adapter at strength s


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
    scale_of: str | None = None       # a scaled copy: the adapter it is a copy of
    scale: float | None = None        # a scaled copy: its strength (B matrices times this)
    shares: dict[str, float] | None = None  # a mixture's adapter: {"left": 0.75, "right": 0.25}


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


def register_scaled(run_uri: str, entries: list[AdapterEntry]) -> list[AdapterEntry]:
    """Make `entries` the run's scaled copies, in one write: a copy not among them (of a scale no longer asked)
    goes, with its folder."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    wanted = {e.name for e in entries}
    adapters = load_registry(run_uri)
    for name in [n for n, e in adapters.items() if e.scale_of is not None and n not in wanted]:
        delete_dir(adapters.pop(name).path)
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


def scaled_name(adapter: str, scale: float) -> str:
    """`left-x0.5`: the registry name of adapter `left` at strength 0.5."""
    return f"{adapter}{SCALE_INFIX}{scale:g}"


def right_share(entry: AdapterEntry) -> float | None:
    """The share of right pairs an adapter was trained on: a mixture's own, 0 or 1 for a side's adapter."""
    if entry.shares is not None:
        return entry.shares.get("right", 0.0)
    return {"left": 0.0, "right": 1.0}.get(entry.side)


def final_adapters(registry: dict[str, AdapterEntry]) -> dict[str, AdapterEntry]:
    """The trained adapters themselves (`left`, `right-sft` …), without their checkpoints or scaled copies."""
    return {name: e for name, e in registry.items() if e.checkpoint_of is None and e.scale_of is None}


def checkpoints_of(registry: dict[str, AdapterEntry], adapter: str) -> list[AdapterEntry]:
    """The registered training checkpoints of `adapter`, by step (the last is the final adapter's step)."""
    return sorted((e for e in registry.values() if e.checkpoint_of == adapter), key=lambda e: e.step or 0)
