"""What an interrupted annotate run already wrote, and dropping it from the next run's input.

A Parquet file is readable only once its footer is written, so the rows of readable files are done
and an unreadable (half-written) file is removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

log = logging.getLogger(__name__)


def readable_keys(fs: pafs.FileSystem, path: str, columns: list[str],
                  key: Callable[[pa.Table], np.ndarray]) -> np.ndarray:
    """Sorted keys (`key` of each file's `columns`) of every readable Parquet file directly in `path`."""
    keys = []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        try:
            keys.append(key(pq.read_table(info.path, filesystem=fs, columns=columns)))
        except (pa.ArrowInvalid, OSError) as err:
            log.warning("removing %s, left half-written by an interrupted run (%s)", info.path, err)
            fs.delete_file(info.path)
    if not keys:
        return np.array([], dtype=str)
    return np.sort(np.concatenate(keys))


def doc_ids(table: pa.Table) -> np.ndarray:
    return table["doc_id"].to_numpy(zero_copy_only=False).astype(str)


def drop_done(batch: pa.Table, done: Any, column: str = "doc_id") -> pa.Table:
    """The batch's rows whose `column` is not in `done` (sorted keys, or an object ref to them)."""
    done = ray.get(done) if isinstance(done, ray.ObjectRef) else done
    ids = batch[column].to_numpy(zero_copy_only=False).astype(str)
    pos = np.searchsorted(done, ids).clip(max=len(done) - 1)
    return batch.filter(pa.array(done[pos] != ids))

