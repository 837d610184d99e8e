"""Reading a processor's output batches: answer rows and error rows have different columns."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


def rows_with(batch: pa.Table, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """The batch's rows with just these columns; a column the batch lacks is null (an error row has no
    answer columns; a batch without errors may lack the error column)."""
    present = {c: batch.column(c).to_pylist() for c in columns if c in batch.column_names}
    return [{c: present[c][i] if c in present else None for c in columns} for i in range(batch.num_rows)]
