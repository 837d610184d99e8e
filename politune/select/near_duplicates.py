"""Near-duplicate posts by MinHash over word shingles, with LSH banding to find candidates.

Exact copies were already removed at ingest; this catches reposts with a word changed, a hashtag
added or punctuation moved. Deterministic: the same posts in the same order give the same result.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

NUM_HASHES = 64
BANDS = 16  # 16 bands of 4 rows: pairs near 0.8 similarity almost always share a band
SHINGLE_WORDS = 3
_PRIME = np.uint64((1 << 61) - 1)
_WORD = re.compile(r"[a-z0-9]+")


def _coefficients(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, (1 << 61) - 1, size=NUM_HASHES, dtype=np.uint64)
    b = rng.integers(0, (1 << 61) - 1, size=NUM_HASHES, dtype=np.uint64)
    return a, b


_A, _B = _coefficients()


def shingles(text: str) -> np.ndarray:
    words = _WORD.findall(text.lower())
    grams = {" ".join(words[i:i + SHINGLE_WORDS]) for i in range(max(1, len(words) - SHINGLE_WORDS + 1))}
    return np.array([int.from_bytes(hashlib.blake2b(g.encode(), digest_size=7).digest(), "little")
                     for g in grams], dtype=np.uint64)


def signature(text: str) -> np.ndarray:
    """NUM_HASHES minimum hash values; the share of equal positions estimates Jaccard similarity."""
    h = shingles(text)
    # (a*h + b) mod p, in uint64 with wrap-around: a universal-enough family for this purpose
    return ((h[None, :] * _A[:, None] + _B[:, None]) % _PRIME).min(axis=1)


def near_duplicate_mask(texts: Sequence[str], threshold: float) -> np.ndarray:
    """True for every text that nearly duplicates an earlier kept one (earlier = first in `texts`)."""
    rows = NUM_HASHES // BANDS
    seen: dict[tuple[int, bytes], list[int]] = {}
    signatures: list[np.ndarray] = []
    dropped = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        sig = signature(text)
        signatures.append(sig)
        keys = [(band, sig[band * rows:(band + 1) * rows].tobytes()) for band in range(BANDS)]
        candidates = {j for key in keys for j in seen.get(key, ())}
        if any(np.mean(signatures[j] == sig) >= threshold for j in candidates):
            dropped[i] = True
            continue
        for key in keys:
            seen.setdefault(key, []).append(i)
    return dropped
