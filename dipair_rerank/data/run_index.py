"""Read a large run file a few queries at a time: one pass records where each query's lines lie, then the lines of
any set of queries are read (and parsed as ``read_run`` parses them) without loading the rest of the file.

A run grouped by qid (as first stages write them) takes one byte range per query; an ungrouped one takes one range
per stretch of consecutive lines of a query, so it is read correctly, only with more ranges.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dipair_rerank.data.runs import Run, _run_line, sort_hits
from dipair_rerank.errors import DiPairError

ByteRange = tuple[int, int]
"""[start, end) offsets of whole lines in a run file."""

_CHUNK = 1 << 24


@dataclass(frozen=True)
class RunFileIndex:
    """Where the lines of each wanted query lie in a run file, and the file's sha256 (its identity).

    Attributes:
        path: the run file.
        sha256: hex digest of its bytes, computed in the same pass.
        qids: the wanted queries that have lines, in order of first appearance.
    """

    path: Path
    sha256: str
    qids: tuple[str, ...]
    _starts: np.ndarray  # per stretch of consecutive lines of one query: its first byte ...
    _ends: np.ndarray  # ... and the byte after its last line, ordered by query, then by offset
    _spans: dict[str, tuple[int, int]]  # qid -> its stretches, a slice of the arrays above

    @classmethod
    def scan(cls, path: str | Path, wanted: Collection[str] | None = None) -> RunFileIndex:
        """One pass over ``path`` recording the byte ranges of the queries in ``wanted`` (default: every query)."""
        path = Path(path)
        if not path.is_file():
            raise DiPairError(f"run file not found: {path}")
        digest = hashlib.sha256()
        positions: dict[str, int] = {}
        codes, starts, ends = array("q"), array("q"), array("q")
        current: bytes | None = None  # qid of the stretch being read
        code = -1  # its position in ``positions``, or -1 for a query not wanted

        def line(text: bytes, start: int, end: int) -> None:
            nonlocal current, code
            cols = text.split(None, 1)
            if not cols:
                return  # a blank line: part of whichever stretch it is in
            if cols[0] != current:
                current = cols[0]
                try:
                    qid = current.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DiPairError(f"{path}: not UTF-8 ({exc.reason} near byte {start})") from exc
                code = -1 if wanted is not None and qid not in wanted else positions.setdefault(qid, len(positions))
                if code >= 0:
                    codes.append(code)
                    starts.append(start)
                    ends.append(end)
            elif code >= 0:
                ends[-1] = end

        offset, carry = 0, b""
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                lines = (carry + chunk).split(b"\n")
                carry = lines.pop()
                for text in lines:
                    line(text, offset, offset + len(text) + 1)
                    offset += len(text) + 1
        if carry:
            line(carry, offset, offset + len(carry))
        if current is None:
            raise DiPairError(f"{path}: empty run")
        order = np.argsort(np.asarray(codes, dtype=np.int64), kind="stable")
        bounds = np.searchsorted(np.asarray(codes, dtype=np.int64)[order], np.arange(len(positions) + 1))
        spans = {qid: (int(bounds[i]), int(bounds[i + 1])) for qid, i in positions.items()}
        return cls(path, digest.hexdigest(), tuple(positions), np.asarray(starts, dtype=np.int64)[order],
                   np.asarray(ends, dtype=np.int64)[order], spans)

    def __contains__(self, qid: object) -> bool:
        return qid in self._spans

    def ranges(self, qids: Iterable[str]) -> list[ByteRange]:
        """The byte ranges holding the lines of ``qids``, in file order, adjacent ones merged."""
        found: list[ByteRange] = []
        for qid in qids:
            lo, hi = self._spans.get(qid, (0, 0))
            found.extend(zip(self._starts[lo:hi].tolist(), self._ends[lo:hi].tolist()))
        merged: list[ByteRange] = []
        for begin, end in sorted(found):
            if merged and merged[-1][1] == begin:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((begin, end))
        return merged


def read_run_ranges(path: str | Path, ranges: Sequence[ByteRange]) -> Run:
    """The run held in ``ranges`` of ``path`` (from ``RunFileIndex.ranges``), parsed as ``read_run`` parses a
    whole file: each query's hits best first, a docid repeated for a query kept at its first line."""
    path = Path(path)
    run: dict[str, dict[str, float]] = {}
    with path.open("rb") as handle:
        for begin, end in ranges:
            handle.seek(begin)
            block = handle.read(end - begin)
            try:
                text = block.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DiPairError(f"{path}: not UTF-8 ({exc.reason} near byte {begin + exc.start})") from exc
            at = begin
            for line in text.split("\n"):
                cols = line.split()
                if cols:
                    qid, docid, score = _run_line(cols, path, _ByteOffset(at))
                    run.setdefault(qid, {}).setdefault(docid, score)
                at += len(line.encode("utf-8")) + 1
    return {qid: sort_hits(hits.items()) for qid, hits in run.items()}


class _ByteOffset(int):
    """Where a line starts, for ``_run_line``'s messages (``path:byte N: ...`` instead of a line number)."""

    def __str__(self) -> str:
        return f"byte {int(self)}"
