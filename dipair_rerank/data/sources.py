"""Where the indexer reads documents: one interface over a corpus (JSONL file or folder, ``irds:``) and an existing
Lucene index (``data/lucene.py``).

A source is counted, fingerprinted and read by span ``[start, stop)`` in a fixed order, so cache shards can be
encoded independently, resumed, and split over processes or Ray actors (a source is picklable and small).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from dipair_rerank.data.corpus import corpus_fingerprint, read_corpus

Span = tuple[int, int]
"""Documents ``[start, stop)`` of a source: one cache shard."""

STRIDE = 1024  # a normalised corpus keeps the byte offset of every STRIDE-th line: spans seek, then skip lines


class DocumentSource(Protocol):
    """Documents for ``index``, in the order their cache rows are written.

    Attributes:
        spec: what the manifest records as the corpus (a path, ``irds:ID``, ``prebuilt:NAME``).
        lucene: an existing Lucene index of these documents that BM25 reuses, or None (the indexer builds one).
    """

    spec: str
    lucene: Path | None

    def fingerprint(self) -> str:
        """Identity of the content: an unfinished build of a different fingerprint is discarded, not resumed."""
        ...

    def prepare(self, scratch: Path, *, progress: bool = True) -> None:
        """Validate before any shard is encoded; may keep a working copy at ``scratch`` (``scratch.*.tmp`` while
        writing it), which survives an interruption and is deleted by the indexer once the index is published."""
        ...

    def count(self) -> int:
        """Number of documents (after ``prepare``)."""
        ...

    def read(self, start: int, stop: int) -> list[tuple[str, str]]:
        """``(docid, text)`` of documents ``[start, stop)``; the text is what the encoder reads."""
        ...


def span_texts(source: DocumentSource, span: Span) -> list[str]:
    return [text for _, text in source.read(*span)]


def shard_spans(count: int, shard_rows: int) -> list[Span]:
    """The documents of each cache shard."""
    return [(start, min(start + shard_rows, count)) for start in range(0, count, shard_rows)]


class CorpusSource:
    """A JSONL corpus (file or folder) or an ``irds:`` id, validated and normalised once into a JSONL working
    copy of ``{id, contents}`` lines (flat text) that spans are read from by seeking."""

    lucene = None

    def __init__(self, spec: str | os.PathLike[str]):
        self.spec = str(spec)
        self.path: Path | None = None
        self._offsets: list[int] = []  # byte offset of lines 0, STRIDE, 2 * STRIDE, ...
        self._count = 0

    def fingerprint(self) -> str:
        return corpus_fingerprint(self.spec)

    def prepare(self, scratch: Path, *, progress: bool = True) -> None:
        if not scratch.is_file():
            tmp = scratch.with_name(f"{scratch.name}.{os.getpid()}.tmp")
            with tmp.open("w", encoding="utf-8") as handle:
                for doc in tqdm(read_corpus(self.spec), desc="reading corpus", unit="doc", disable=not progress):
                    handle.write(json.dumps({"id": doc.docid, "contents": doc.text}, ensure_ascii=False) + "\n")
            os.replace(tmp, scratch)
        self.path = scratch
        self._offsets, self._count, offset = [], 0, 0
        with scratch.open("rb") as handle:
            for line in handle:
                if self._count % STRIDE == 0:
                    self._offsets.append(offset)
                offset += len(line)
                self._count += 1

    def count(self) -> int:
        return self._count

    def read(self, start: int, stop: int) -> list[tuple[str, str]]:
        if self.path is None:
            raise RuntimeError("CorpusSource.read before prepare")
        stop = min(stop, self._count)
        if start >= stop:
            return []
        docs = []
        with self.path.open("rb") as handle:
            handle.seek(self._offsets[start // STRIDE])
            for _ in range(start % STRIDE):
                handle.readline()
            for _ in range(stop - start):
                record = json.loads(handle.readline())
                docs.append((record["id"], record["contents"]))
        return docs
