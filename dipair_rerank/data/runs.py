"""TREC runs: read, and write in Pyserini's formats (``trec``: ``qid Q0 docid rank score tag``; ``msmarco``:
``qid<TAB>docid<TAB>rank``), ranks from 1, ties broken by docid as Pyserini's ``tie_breaker`` does.

Writes go to a temporary file renamed into place, so a failed search never leaves half a run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO

from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)

Run = dict[str, list[tuple[str, float]]]
"""qid -> [(docid, score), ...], best first."""

OUTPUT_FORMATS = ("trec", "msmarco")


def read_run(path: str | Path) -> Run:
    """Read a run in either format Pyserini writes: TREC (``qid Q0 docid rank score tag``) or MS MARCO
    (``qid<TAB>docid<TAB>rank``, scored by rank). Each query's list is re-sorted best first; a docid listed twice
    for one query keeps its first line (trec_eval refuses such runs), with a warning."""
    path = Path(path)
    if not path.is_file():
        raise DiPairError(f"run file not found: {path}")
    run: dict[str, dict[str, float]] = {}
    duplicates = 0
    with path.open(encoding="utf-8", errors="strict") as handle:
        try:
            for line_no, line in enumerate(handle, start=1):
                cols = line.split()
                if not cols:
                    continue
                qid, docid, score = _run_line(cols, path, line_no)
                hits = run.setdefault(qid, {})
                if docid in hits:
                    duplicates += 1
                else:
                    hits[docid] = score
        except UnicodeDecodeError as exc:
            raise DiPairError(f"{path}: not UTF-8 ({exc.reason})") from exc
    if not run:
        raise DiPairError(f"{path}: empty run")
    if duplicates:
        logger.warning("%s: %d lines repeat a docid already listed for their query; kept the first of each",
                       path, duplicates)
    return {qid: sort_hits(hits.items()) for qid, hits in run.items()}


def _run_line(cols: list[str], path: Path, line_no: int) -> tuple[str, str, float]:
    """(qid, docid, score) of one TREC (6 columns) or MS MARCO (3 columns: score = -rank) line."""
    if len(cols) not in (3, 6):
        raise DiPairError(f"{path}:{line_no}: run lines have 6 columns (TREC: qid Q0 docid rank score tag) or 3 "
                          f"(MS MARCO: qid docid rank), got {len(cols)}")
    column, name = (4, "score") if len(cols) == 6 else (2, "rank")
    try:
        value = float(cols[column])
    except ValueError as exc:
        raise DiPairError(f"{path}:{line_no}: {name} {cols[column]!r} is not a number") from exc
    return (cols[0], cols[2], value) if len(cols) == 6 else (cols[0], cols[1], -value)


def sort_hits(hits: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Best first; equal scores ordered by docid (Pyserini's tie-breaker)."""
    return sorted(hits, key=lambda hit: (-hit[1], hit[0]))


def _umask() -> int:
    """The process umask, read without changing it where Linux exposes it (os.umask is a racy read-by-write)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | Path) -> Iterator[TextIO]:
    """Open a temp file beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files: publish with the usual permissions
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_hits(
    qid: str, hits: Sequence[tuple[str, float]], *, output_format: str = "trec", tag: str = "dipair", hits_limit: int = 1000
) -> Iterator[str]:
    for rank, (docid, score) in enumerate(sort_hits(hits)[:hits_limit], start=1):
        if output_format == "msmarco":
            yield f"{qid}\t{docid}\t{rank}\n"
        else:
            yield f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n"


def write_run(
    run: Run, path: str | Path, *, output_format: str = "trec", tag: str = "dipair", hits: int = 1000
) -> Path:
    """Write ``run`` atomically in query order given; returns the path."""
    if output_format not in OUTPUT_FORMATS:
        raise DiPairError(f"unknown output format {output_format!r} (choose from {', '.join(OUTPUT_FORMATS)})")
    with atomic_write(path) as handle:
        for qid, qhits in run.items():
            handle.writelines(format_hits(qid, qhits, output_format=output_format, tag=tag, hits_limit=hits))
    return Path(path)
