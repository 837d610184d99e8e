"""How many rows a Ray Data block holds on its way into an actor pool.

A block goes to one actor whole, so a pool of N actors fed fewer than N blocks leaves actors idle (measured: a
run of 1,519 posts in one block kept one of two annotators busy and the other idle). Blocks are cut so each
actor gets at least BLOCKS_PER_ACTOR of them, never smaller than one engine batch and never larger than the
stage's own limit (annotate's rows a file). A large corpus keeps the limit; only small runs get smaller blocks.
"""

from __future__ import annotations

import math

import ray.data

BLOCKS_PER_ACTOR = 4  # a few each, so the last blocks do not leave all but one actor waiting


def rows_per_block(rows: int, actors: int, batch_size: int, most: int) -> int:
    """Rows a block: enough blocks for every actor, each at least a batch and at most `most` rows (`most` when
    the row count is not known, 0)."""
    if rows <= 0:
        return most
    return max(1, min(most, max(batch_size, math.ceil(rows / (actors * BLOCKS_PER_ACTOR)))))


def blocks_for_pool(ds: ray.data.Dataset, rows: int, actors: int, batch_size: int, most: int) -> ray.data.Dataset:
    """`ds` (about `rows` rows) cut into blocks that keep an actor pool of `actors` busy."""
    return ds.repartition(target_num_rows_per_block=rows_per_block(rows, actors, batch_size, most))
