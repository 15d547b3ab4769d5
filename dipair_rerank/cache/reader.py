"""Open a prefix cache in constant time (memory-maps, no per-document objects) and gather candidate blocks."""

from __future__ import annotations

import json
import mmap
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dipair_rerank.cache.codecs import bytes_per_row, load_codec
from dipair_rerank.cache.docids import DocidLookup
from dipair_rerank.cache.writer import CACHE_CONFIG, FORMAT_VERSION, LEXICAL_KINDS, shard_kinds
from dipair_rerank.errors import DiPairError
from dipair_rerank.model.lexical import LexicalQueries, sparse_dots

_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+; Python's mmap names it from 3.13


def _mapping(array: np.ndarray) -> mmap.mmap | None:
    """The mmap under a memory-mapped array (or a plain view of one)."""
    while array is not None and getattr(array, "_mmap", None) is None:
        array = getattr(array, "base", None)
    return None if array is None else array._mmap


def _random_access(array: np.ndarray) -> np.ndarray:
    """Tell the kernel reads are random: no read-ahead, so a gather faults in only the rows it reads."""
    handle = _mapping(array)
    if handle is not None and hasattr(mmap, "MADV_RANDOM"):
        handle.madvise(mmap.MADV_RANDOM)
    return array


def _load_plain(path: Path) -> np.ndarray:
    """Memory-map a numeric .npy; an object array (a pickle) or a damaged header is refused, never unpickled."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise DiPairError(f"cache file {path} is not a plain numeric array ({exc}); rebuild the index") from exc


class PrefixCache:
    """Read-only view of ``indexes/NAME/dipair``.

    Shards are memory-mapped separately and never merged: a row ``r`` lives in shard ``r // shard_rows``.
    Opening checks each shard file's size against its JSON (a truncated shard is never read as data);
    ``verify()`` checks the full sha256.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        config_path = self.folder / CACHE_CONFIG
        if not config_path.is_file():
            raise DiPairError(f"no DiPair cache at {self.folder} (missing {CACHE_CONFIG}); build it with 'dipair-rerank index'")
        try:
            self.meta: dict[str, Any] = json.loads(config_path.read_text())
        except ValueError as exc:  # bad JSON or bytes
            raise DiPairError(f"{config_path} is damaged ({exc}); rebuild the index") from exc
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DiPairError(f"{config_path}: unsupported cache format {self.meta.get('format_version')}")
        self.model_fingerprint: str = self.meta["model_fingerprint"]
        self.num_docs: int = self.meta["num_docs"]
        self.slots: int = self.meta["slots"]
        self.dim: int = self.meta["dim"]
        self.shard_rows: int = self.meta["shard_rows"]
        self.has_lexical: bool = bool(self.meta.get("lexical"))
        stores: dict[str, list[np.ndarray]] = {kind: [] for kind in ("vectors", "lengths", *LEXICAL_KINDS)}
        for shard in self.meta["shards"]:
            for kind in shard_kinds(shard):
                path = self.folder / f"{shard['stem']}.{kind}.npy"
                if not path.is_file() or path.stat().st_size != shard[f"{kind}_bytes"]:
                    raise DiPairError(f"cache shard {path} is missing or truncated; rebuild the index")
                # a plain array over the map: indexing a np.memmap wraps every result in a memmap (slower per call)
                stores[kind].append(np.asarray(_random_access(_load_plain(path))))
        self.vectors, self.lengths = stores["vectors"], stores["lengths"]
        self._lexical = [stores[kind] for kind in LEXICAL_KINDS]  # per shard: offsets, terms, weights
        try:
            self.docids = DocidLookup(self.folder)
        except ValueError as exc:
            raise DiPairError(f"the docid lookup in {self.folder} is not a plain array ({exc}); rebuild the index"
                              ) from exc
        # a binary search reads a page per probe: with the kernel's read-around, each cold probe read ~60 KB, and a
        # cold query's 100 lookups in a 10M-document index read 145 MB (eval/bench_scale.py)
        _random_access(self.docids.sorted)
        _random_access(self.docids.rows)
        self.codec = load_codec(self.meta.get("codec", "fp16"), self.slots, self.dim,
                                self.meta.get("codec_params", {}), self.folder)
        for shard, codes in zip(self.meta["shards"], self.vectors):
            if codes.shape[1:] != self.codec.row_shape:
                raise DiPairError(f"cache shard {shard['stem']} in {self.folder} holds codes of shape "
                                  f"{codes.shape[1:]}, its codec expects {self.codec.row_shape}; rebuild the index")
        self.bytes_per_doc: int = bytes_per_row(self.codec) + 2  # + the uint16 prefix length
        self._codes = np.empty((0, *self.codec.row_shape), dtype=self.codec.code_dtype)
        self._lengths = np.empty(0, dtype=np.uint16)
        self._by_shard_codes, self._by_shard_lengths = self._codes, self._lengths  # a many-shard gather's runs

    def __len__(self) -> int:
        return self.num_docs

    def map_in(self, max_bytes: int | None = None) -> bool:
        """Read every cache file and map all its pages now, so that first gathers cost what later ones do.

        A cold row otherwise faults in on its first gather: a first pass over DL19 from a cold page cache gathered
        at 6.8 ms p50, against 0.7 ms once mapped in (docs/design-decisions.md). For a long-running service's
        warm-up; one-off runs keep opening in constant time and read only the rows they touch. Nothing is done for
        a cache over ``max_bytes`` (default: a quarter of physical memory) or where the kernel cannot (before Linux
        5.14). Returns whether the cache was mapped in."""
        arrays = [*self.vectors, *self.lengths, *(a for store in self._lexical for a in store), self.docids.sorted,
                  self.docids.rows]
        if max_bytes is None:
            max_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4 if hasattr(os, "sysconf") else 0
        if sys.platform != "linux" or sum(array.nbytes for array in arrays) > max_bytes:
            return False
        for array in arrays:
            try:
                _mapping(array).madvise(_MADV_POPULATE_READ)
            except OSError:  # an older kernel: rows fault in as they are read
                return False
        return True

    def rows(self, docids: Sequence[str], *, strict: bool = True) -> np.ndarray:
        """Rows of ``docids``; unknown docids raise (``strict``) or map to -1."""
        rows = self.docids.rows_for(docids)
        if strict and (rows < 0).any():
            missing = [docids[i] for i in np.flatnonzero(rows < 0)[:3]]
            raise DiPairError(f"docid(s) not in the index: {', '.join(missing)}")
        return rows

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decoded blocks [k, slots, dim] (fp16 for the fp16 codec, else float32) and prefix lengths [k].

        Codes are taken with one ``np.take`` per shard touched into a buffer reused across calls (so the
        returned arrays are only valid until the next call), then decoded for these k rows only.
        """
        k = len(rows)
        if k > len(self._codes):
            self._codes = np.empty((k, *self.codec.row_shape), dtype=self.codec.code_dtype)
            self._lengths = np.empty(k, dtype=np.uint16)
            self._by_shard_codes, self._by_shard_lengths = np.empty_like(self._codes), np.empty_like(self._lengths)
        codes, lengths = self._codes[:k], self._lengths[:k]
        if len(self.vectors) == 1:
            np.take(self.vectors[0], rows, axis=0, out=codes)
            np.take(self.lengths[0], rows, out=lengths)
        else:  # taken shard by shard into contiguous runs, then put back in the order asked
            order, local, runs = self._shard_runs(rows)
            taken, taken_lengths = self._by_shard_codes[:k], self._by_shard_lengths[:k]
            for shard, start, stop in runs:
                self.vectors[shard].take(local[start:stop], axis=0, out=taken[start:stop])
                self.lengths[shard].take(local[start:stop], out=taken_lengths[start:stop])
            codes[order] = taken
            lengths[order] = taken_lengths
        return self.codec.decode(codes), lengths

    def _shard_runs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
        """``rows`` sorted by shard: (the order that sorts them, their rows within their shards in that order, and
        (shard, start, stop) of each shard's run in it). Per-shard work is then a few calls on slices: 100
        candidates of a 10M-document index touch ~75 shards."""
        shard_of = rows // self.shard_rows
        order = np.argsort(shard_of, kind="stable")
        shards = shard_of[order]
        local = rows[order] - shards * self.shard_rows
        starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]]) if len(rows) else np.zeros(0, np.int64)
        stops = np.r_[starts[1:], len(rows)]
        return order, local, list(zip(shards[starts].tolist(), starts.tolist(), stops.tolist()))

    def lexical_dots(self, rows: np.ndarray, owner: np.ndarray, queries: LexicalQueries) -> np.ndarray:
        """Dot products [k] of the stored lexical terms of ``rows`` with their queries (``owner`` [k]: each row's
        query)."""
        offsets, terms, weights = self._lexical
        if len(offsets) == 1:
            return sparse_dots(queries, owner, (offsets[0][rows], offsets[0][rows + 1]), terms[0], weights[0])
        # the rows' terms copied out of the shards they touch into one CSR, then one sparse_dots over it: the
        # queries' term weights are computed once, not once per shard
        order, local, runs = self._shard_runs(rows)
        pairs = np.stack([local, local + 1], 1).ravel()  # each row's offsets entry and the next: one take per shard
        spans = np.empty(len(pairs), np.int64)
        for shard, start, stop in runs:
            offsets[shard].take(pairs[2 * start : 2 * stop], out=spans[2 * start : 2 * stop])
        begins, counts = spans[0::2], spans[1::2] - spans[0::2]
        bounds = np.cumsum(np.r_[0, counts])  # each row's run in the copy
        positions = np.repeat(begins - bounds[:-1], counts) + np.arange(int(bounds[-1]))  # in its shard's arrays
        row_terms, row_weights = np.empty(len(positions), np.uint16), np.empty(len(positions), np.float16)
        cut = bounds.tolist()
        for shard, start, stop in runs:
            part = slice(cut[start], cut[stop])
            terms[shard].take(positions[part], out=row_terms[part])
            weights[shard].take(positions[part], out=row_weights[part])
        out = np.empty(len(rows), np.float32)
        out[order] = sparse_dots(queries, owner[order], (bounds[:-1], bounds[1:]), row_terms, row_weights)
        return out

    def lexical_rows(self, shard: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """One shard's stored (term ids, weights) per row, in row order (to re-store them)."""
        offsets, terms, weights = (store[shard] for store in self._lexical)
        return [(terms[a:b], weights[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]

    def verify(self) -> list[str]:
        """Problems found by re-hashing every shard file (empty list = intact)."""
        from dipair_rerank.cache.writer import file_sha256

        problems = []
        for shard in self.meta["shards"]:
            for kind in shard_kinds(shard):
                path = self.folder / f"{shard['stem']}.{kind}.npy"
                if not path.is_file():
                    problems.append(f"{path}: missing")
                elif file_sha256(path) != shard[f"{kind}_sha256"]:
                    problems.append(f"{path}: checksum mismatch")
        for name, digest in self.meta.get("files_sha256", {}).items():  # docid lookup, codec state
            path = self.folder / name
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif file_sha256(path) != digest:
                problems.append(f"{path}: checksum mismatch")
        if len(self.docids) != self.num_docs:
            problems.append(f"{self.folder}: docid lookup holds {len(self.docids)} ids, cache {self.num_docs}")
        return problems
