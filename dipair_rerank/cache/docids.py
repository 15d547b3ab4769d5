"""docid -> row lookup as two arrays (sorted fixed-width ids, their rows), memory-mapped: no per-document
Python objects at search time, O(log N) vectorised lookups with ``np.searchsorted``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

SORTED_NAME = "docids.sorted.npy"
ROWS_NAME = "docids.rows.npy"


def write_docid_lookup(folder: Path, docids: Sequence[str]) -> None:
    encoded = np.array([docid.encode("utf-8") for docid in docids], dtype=np.bytes_)
    order = np.argsort(encoded, kind="stable")
    np.save(folder / SORTED_NAME, encoded[order], allow_pickle=False)
    np.save(folder / ROWS_NAME, order.astype(np.int64), allow_pickle=False)


class DocidLookup:
    """Rows for docids; ``-1`` where a docid is not in the cache."""

    def __init__(self, folder: Path):
        # plain arrays over the memory maps: indexing a np.memmap wraps every result in a memmap (slower per call)
        self.sorted = np.asarray(np.load(folder / SORTED_NAME, mmap_mode="r", allow_pickle=False))
        self.rows = np.asarray(np.load(folder / ROWS_NAME, mmap_mode="r", allow_pickle=False))

    def __len__(self) -> int:
        return len(self.rows)

    def rows_for(self, docids: Sequence[str]) -> np.ndarray:
        encoded = [docid.encode("utf-8") for docid in docids]
        keys = np.array(encoded, dtype=self.sorted.dtype)
        positions = np.minimum(np.searchsorted(self.sorted, keys), len(self.sorted) - 1)
        found = self.sorted[positions] == keys
        width = self.sorted.dtype.itemsize
        if max(map(len, encoded), default=0) > width:  # the cast cut a longer key: it cannot be a stored id
            found &= np.fromiter((len(key) <= width for key in encoded), dtype=bool, count=len(encoded))
        return np.where(found, self.rows[positions], -1)
