"""The Grafana dashboard (cluster/grafana-dashboard.json) against what a real run emits: every metric a panel
queries must be one the code exports, with the labels and label values the query selects on. The series come from
the Prometheus text of Ray's metrics endpoints during a real run (test_serve: Serve's metrics; test_annotate:
annotation's, in generate mode; test_pipeline_job: the stages' and training's)."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "cluster" / "grafana-dashboard.json"
FAMILIES = ("ray_politune_serve_", "ray_politune_stage_", "ray_politune_annotate_")  # who checks which panels
_SELECTOR = re.compile(r"\b(ray_politune_\w+)(\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})?\s+\S+$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def dashboard_queries(prefix: str = "ray_politune_") -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target that queries a metric starting with `prefix`."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", []) if prefix in t["expr"]]


def series(text: str, into: dict[str, list[dict[str, str]]] | None = None) -> dict[str, list[dict[str, str]]]:
    """Prometheus exposition text -> {metric name: [labels of each series]} (added to `into` when given)."""
    found = into if into is not None else {}
    for line in text.splitlines():
        sample = _SAMPLE.match(line)
        if sample and sample[1].startswith("ray_politune_"):
            labels = dict(_LABEL.findall(sample[2] or ""))
            if labels not in found.setdefault(sample[1], []):
                found[sample[1]].append(labels)
    return found


def unmatched(queries: list[tuple[str, str]], emitted: dict[str, list[dict[str, str]]]) -> list[str]:
    """What in each query no emitted series has: a metric name, a label grouped by, a label value selected."""
    problems = []
    for title, expr in queries:
        grouped = {label.strip() for group in _BY.findall(expr) for label in group.split(",") if label.strip()}
        for name, selector in _SELECTOR.findall(expr):
            if name not in emitted:
                problems.append(f"{title}: {name} is not emitted")
                continue
            candidates = emitted[name]
            for label, op, value in _MATCHER.findall(selector):
                if "$" in value:  # a dashboard variable
                    continue
                if op in ("=", "=~"):
                    hit = [s for s in candidates if label in s and (
                        s[label] == value if op == "=" else re.fullmatch(value, s[label]))]
                    if not hit:
                        problems.append(f"{title}: no {name} series has {label}{op}{value!r}")
                    candidates = hit or candidates
            for label in grouped - {"le"}:
                if not any(label in s for s in candidates):
                    problems.append(f"{title}: {name} has no label {label!r} to group by")
    return problems
