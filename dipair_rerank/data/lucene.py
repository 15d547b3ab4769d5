"""An existing Lucene index as a document source (``index --from-lucene PATH`` / ``--from-prebuilt NAME``).

The documents are read back from the text Pyserini stored (``--storeRaw``), in Lucene's internal docid order, and
BM25 keeps using that index: nothing is re-indexed. The text is what Pyserini's own re-rankers read: the ``raw``
JSON's ``contents`` (or BEIR's ``text``) with its ``title`` in front, else the stored ``contents`` field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dipair_rerank.data.corpus import flat_text
from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)

PREBUILT_PREFIX = "prebuilt:"
PROBE_SECONDS = 3.0  # how long --from-prebuilt waits for the download host before calling the machine offline


def _commit_file(path: Path) -> Path | None:
    """The newest ``segments_N`` file: the commit point every Lucene index has."""
    commits = [p for p in path.glob("segments_*") if p.name[len("segments_"):].isalnum()]
    return max(commits, key=lambda p: int(p.name[len("segments_"):], 36)) if commits else None


def stored_text(raw: str | None, contents: str | None) -> str | None:
    """The document text from Pyserini's stored fields (None when neither ``raw`` nor ``contents`` was stored).

    JSON ``raw`` (JsonCollection, BEIR "flat") gives its title + ``contents``/``text`` as a JSONL corpus would;
    other ``raw`` (TREC SGML, ...) is used as stored unless the parsed ``contents`` field was stored too.
    """
    if raw:
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if isinstance(record, dict):
            body = record.get("contents", record.get("text"))
            if isinstance(body, str):
                title = record.get("title")
                return flat_text(title if isinstance(title, str) else None, body)
    return contents if contents is not None else raw


class LuceneSource:
    """The documents of a Lucene index built by Pyserini (``python -m pyserini.index.lucene ... --storeRaw``).

    Args:
        path: the index folder.
        spec: what the manifest records as the corpus (default: the resolved path).

    Raises:
        DiPairError: ``path`` is not a Lucene index, has deleted documents, or stores no document text.
    """

    def __init__(self, path: str | Path, *, spec: str | None = None):
        self.lucene = Path(path).resolve()
        self.spec = spec or str(self.lucene)
        self._commit = _commit_file(self.lucene) if self.lucene.is_dir() else None
        if self._commit is None:
            raise DiPairError(f"{path} is not a Lucene index (no segments_N file); give the folder that "
                              "'python -m pyserini.index.lucene --index' wrote")
        self._searcher: Any = None
        self._count = int(self.searcher.num_docs)
        max_doc = int(self.searcher.object.reader.maxDoc())
        if max_doc != self._count:
            raise DiPairError(f"{path} has {max_doc - self._count} deleted document(s); force-merge or rebuild it")
        if self._count == 0:
            raise DiPairError(f"{path}: empty Lucene index (no documents)")
        for internal in {0, self._count - 1}:  # Pyserini stores the same fields for every document
            self._text(self.searcher.doc(internal))

    @classmethod
    def prebuilt(cls, name: str, *, probe_seconds: float = PROBE_SECONDS) -> "LuceneSource":
        """A Pyserini prebuilt BM25 index by name: its local copy when downloaded, else downloaded when the host
        answers within ``probe_seconds`` (offline, one clear error instead of Pyserini's retries)."""
        from dipair_rerank._java import ensure_jvm

        ensure_jvm()
        from pyserini.prebuilt_index_info import TF_INDEX_INFO
        from pyserini.util import download_prebuilt_index, get_cache_home

        info = TF_INDEX_INFO.get(name)
        if info is None:
            raise DiPairError(f"unknown Pyserini prebuilt BM25 index {name!r} (names: "
                              "pyserini.prebuilt_index_info.TF_INDEX_INFO, e.g. beir-v1.0.0-scifact.flat)")
        stem = (info.get("filename") or info["urls"][0].split("/")[-1]).split(".tar.gz")[0]
        local = Path(get_cache_home()) / "indexes" / f"{stem}.{info['md5']}"  # where Pyserini unpacks it
        spec = f"{PREBUILT_PREFIX}{name}"
        if local.is_dir():
            return cls(local, spec=spec)
        host = urlparse(info["urls"][0]).hostname or ""
        if not _reachable(host, probe_seconds):
            raise DiPairError(f"prebuilt index {name} is not downloaded and {host} did not answer within "
                              f"{probe_seconds:g} s (offline?); download it where online, or use --from-lucene PATH")
        try:
            return cls(download_prebuilt_index(name, verbose=logger.isEnabledFor(logging.INFO)), spec=spec)
        except (ValueError, OSError) as exc:
            raise DiPairError(f"could not download prebuilt index {name}: {exc}") from exc

    @property
    def searcher(self) -> Any:
        """Pyserini's LuceneSearcher on the index, opened on first use (also in each Ray actor)."""
        if self._searcher is None:
            from dipair_rerank._java import ensure_jvm

            ensure_jvm()
            from pyserini.search.lucene import LuceneSearcher

            self._searcher = LuceneSearcher(str(self.lucene))
        return self._searcher

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_searcher": None}  # a Java object cannot travel to another process

    def fingerprint(self) -> str:
        """The commit point's name and bytes: any change to the index writes a new one."""
        digest = hashlib.sha256(self._commit.name.encode())
        digest.update(self._commit.read_bytes())
        return digest.hexdigest()

    def prepare(self, scratch: Path, *, progress: bool = True) -> None:
        """Nothing to copy: documents are read from the index itself (validated when opened)."""

    def count(self) -> int:
        return self._count

    def read(self, start: int, stop: int) -> list[tuple[str, str]]:
        docs = (self.searcher.doc(i) for i in range(start, min(stop, self._count)))
        return [(str(doc.docid()), self._text(doc)) for doc in docs]

    def _text(self, doc: Any) -> str:
        text = stored_text(doc.raw(), doc.contents())
        if text is None:
            raise DiPairError(f"{self.lucene} stores no document text (document {doc.docid()} has no 'raw' field, "
                              "nor 'contents'); rebuild it with 'python -m pyserini.index.lucene ... --storeRaw'")
        return text


def _reachable(host: str, seconds: float) -> bool:
    """Whether ``host:443`` accepts a connection within ``seconds``, name lookup included (a daemon thread bounds
    it: an offline resolver can stall longer than any socket timeout)."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=seconds).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(answered)
