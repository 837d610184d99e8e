"""Documents of the project's own lm-evaluation-harness tasks, built from data shipped with the project (no hub)."""

from __future__ import annotations

from typing import Any


def sides(**_: Any) -> Any:
    """politune_sides: each proposition of the project's instrument, and the side that agrees with it (1: the right,
    when the proposition points right on either axis; 0: the left), as the tiny model's warm-up teaches it."""
    import datasets

    from politune.contracts.compass.instruments import load_politune_instrument

    items = load_politune_instrument().items
    rows = [{"id": p.id, "statement": p.statement, "answer": 1 if (p.econ[3] > 0 or p.social[3] > 0) else 0}
            for p in items]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
