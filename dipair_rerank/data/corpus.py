"""Corpora: Pyserini JsonCollection files (JSONL, or a folder of them; BEIR's corpus.jsonl too) and ``irds:`` ids.

Documents are validated as they stream (malformed JSON, missing fields, duplicate or empty ids, non-UTF-8 bytes)
so a bad corpus fails with the file and line before anything is published.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dipair_rerank.data import irds
from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)

CORPUS_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class Document:
    """One document; ``text`` is what both BM25 and the encoder read (BEIR "flat": title + contents)."""

    docid: str
    text: str


def flat_text(title: str | None, contents: str) -> str:
    """BEIR/Pyserini "flat" text; a title the contents already starts with (Cranfield) is not repeated."""
    if not title or contents.startswith(title):
        return contents
    return f"{title} {contents}"


def corpus_files(spec: str | Path) -> list[Path]:
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(CORPUS_SUFFIXES))
        if not files:
            raise DiPairError(f"corpus folder {path} holds no .jsonl files")
        return files
    raise DiPairError(f"corpus not found: {path}")


def _read_jsonl(path: Path) -> Iterator[Document]:
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise DiPairError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
            except json.JSONDecodeError as exc:
                raise DiPairError(f"{where}: malformed JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DiPairError(f"{where}: expected a JSON object with 'id' and 'contents'")
            # Pyserini's JsonCollection ({id, contents}) or BEIR's corpus.jsonl ({_id, title, text})
            docid = record.get("id", record.get("_id"))
            contents = record.get("contents", record.get("text"))
            if docid is None or str(docid).strip() == "":
                raise DiPairError(f"{where}: missing 'id' (or BEIR's '_id')")
            if contents is None:
                raise DiPairError(f"{where}: document {docid} has no 'contents' (or BEIR's 'text')")
            if isinstance(contents, (dict, list)):
                raise DiPairError(f"{where}: document {docid}: 'contents' must be text, got a JSON "
                                  f"{'object' if isinstance(contents, dict) else 'array'}")
            docid = str(docid)
            if any(ch.isspace() for ch in docid):
                raise DiPairError(f"{where}: docid {docid!r} contains whitespace (TREC runs cannot hold it)")
            yield Document(docid, flat_text(record.get("title"), str(contents)))


def _read_irds(spec: str) -> Iterator[Document]:
    dataset = irds.load_dataset(spec)
    if not dataset.has_docs():
        raise DiPairError(f"{spec} has no documents")
    docs = irds.fetch(spec, "the documents", dataset.docs_iter)
    for doc in irds.guarded_iter(spec, "the documents", docs):
        title = getattr(doc, "title", None)
        contents = getattr(doc, "text", None) or getattr(doc, "body", None) or ""
        yield Document(str(doc.doc_id), flat_text(title, contents))


def read_corpus(spec: str | Path) -> Iterator[Document]:
    """Stream documents, failing on the first duplicate docid with both line numbers' file."""
    source = _read_irds(str(spec)) if irds.is_irds(spec) else (
        doc for path in corpus_files(spec) for doc in _read_jsonl(path)
    )
    seen: set[str] = set()
    count = 0
    empty = 0
    empty_examples: list[str] = []
    for doc in source:
        if doc.docid in seen:
            raise DiPairError(f"{spec}: duplicate docid {doc.docid!r}")
        seen.add(doc.docid)
        count += 1
        if not doc.text.strip():
            empty += 1
            if len(empty_examples) < 3:
                empty_examples.append(doc.docid)
        yield doc
    if count == 0:
        raise DiPairError(f"{spec}: empty corpus (no documents)")
    if empty:  # kept (runs naming them still resolve); BM25 cannot retrieve them, --candidates can
        logger.warning("%s: %d document(s) with empty text, indexed as empty (e.g. %s)", spec, empty,
                       ", ".join(empty_examples))


def corpus_fingerprint(spec: str | Path) -> str:
    """A cheap identity for a corpus: content hash of local files, the id itself for ``irds:``."""
    if irds.is_irds(spec):
        return str(spec)
    digest = hashlib.sha256()
    for path in corpus_files(spec):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
