"""Small numpy helpers shared by the query decoder and the matcher."""

from __future__ import annotations

import numpy as np


def ranges(lo: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    """The concatenation of arange(lo[k], lo[k] + cnt[k]) for every k."""
    total = int(cnt.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum(cnt) - cnt
    return np.arange(total, dtype=np.int64) - np.repeat(starts - lo, cnt)


def owners(cnt: np.ndarray) -> np.ndarray:
    """For the concatenated ranges of ranges(lo, cnt): the k each element belongs to."""
    return np.repeat(np.arange(len(cnt), dtype=np.int64), cnt)
