"""Teacher scores for training candidates, cached on disk.

A teacher spec is either a sentence-transformers ``CrossEncoder`` id/path, or ``run:PATH``: precomputed scores
in a TREC run (how fused teachers, or any scorer run elsewhere, are plugged in). Cross-encoder scoring is the
slow part of distillation (a full transformer pass per pair), so its scores are cached in ``cache_dir`` and a
rerun scores only the pairs it has not seen.

The cache for one teacher is ``teacher-<hash>.trec`` (a valid TREC run: ``qid Q0 docid rank score key``) plus
``teacher-<hash>.json`` naming the teacher. ``<hash>`` covers the spec, the scoring options and, for a local
model folder, its files, so a retrained teacher in the same folder never reuses stale scores. Each line's tag
column ``key`` hashes the query and document *texts* it scored: entries are looked up by content, so two
collections whose qids/docids collide (SciFact and MS MARCO both use numbers) never share scores, and an edited
topic is rescored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from tqdm.auto import tqdm

from dipair_rerank.data.runs import Run, atomic_write, read_run, sort_hits
from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)

RUN_PREFIX = "run:"
CACHE_VERSION = 1


def pair_key(query: str, document: str) -> str:
    """64-bit content hash of one (query text, document text) pair: the cache's lookup key."""
    return hashlib.sha256(f"{query}\x00{document}".encode("utf-8")).hexdigest()[:16]


def _files_digest(path: Path) -> str:
    """Hash of every file under a local model folder (names and contents)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def teacher_identity(teacher_spec: str, *, max_length: int | None = None) -> dict[str, object]:
    """What determines a cross-encoder teacher's scores; its hash names the cache files."""
    local = Path(teacher_spec)
    return {
        "version": CACHE_VERSION,
        "teacher": teacher_spec,
        "kind": "cross-encoder",
        "scores": "raw logits",
        "max_length": max_length,
        "files": _files_digest(local) if local.exists() else None,
    }


def _identity_hash(identity: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class TeacherCache:
    """Scores of one teacher by pair key, read from and written back to ``teacher-<hash>.{trec,json}``."""

    def __init__(self, cache_dir: Path, identity: Mapping[str, object]):
        self.identity = dict(identity)
        name = f"teacher-{_identity_hash(identity)}"
        self.run_path = Path(cache_dir) / f"{name}.trec"
        self.meta_path = Path(cache_dir) / f"{name}.json"
        self.entries: dict[str, tuple[str, str, float]] = {}
        if self.run_path.is_file():
            self._read()

    def _read(self) -> None:
        with self.run_path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                cols = line.split()
                if not cols:
                    continue
                if len(cols) != 6:
                    raise DiPairError(f"{self.run_path}:{line_no}: corrupt teacher cache line (delete the file)")
                qid, _, docid, _, score, key = cols
                self.entries[key] = (qid, docid, float(score))
        logger.info("teacher cache %s: %d cached pairs", self.run_path, len(self.entries))

    def save(self) -> None:
        """Rewrite the cache atomically: an interrupted write leaves the previous version intact."""
        by_query: dict[str, list[tuple[str, float, str]]] = {}
        for key, (qid, docid, score) in self.entries.items():
            by_query.setdefault(qid, []).append((docid, score, key))
        with atomic_write(self.run_path) as handle:
            for qid in sorted(by_query):
                hits = sorted(by_query[qid], key=lambda hit: (-hit[1], hit[0], hit[2]))
                for rank, (docid, score, key) in enumerate(hits, start=1):
                    handle.write(f"{qid} Q0 {docid} {rank} {score!r} {key}\n")  # repr: exact round trip
        meta = {**self.identity, "pairs": len(self.entries), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with atomic_write(self.meta_path) as handle:
            json.dump(meta, handle, indent=2, sort_keys=True)
            handle.write("\n")


def load_cross_encoder(teacher_spec: str, *, device: str = "cpu", max_length: int | None = None):
    """A sentence-transformers ``CrossEncoder``; a load failure is a one-line error."""
    try:
        from sentence_transformers import CrossEncoder

        return CrossEncoder(teacher_spec, device=device, max_length=max_length)
    except Exception as exc:  # any load failure is a bad --teacher: one line, not a traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DiPairError(f"cannot load teacher cross-encoder {teacher_spec!r}: {first}") from exc


def _with_text(topics: Mapping[str, str], doc_text: Mapping[str, str], candidates: Run) -> Run:
    """The candidates of queries in ``topics`` (others are skipped, as training skips them)."""
    kept = {qid: hits for qid, hits in candidates.items() if qid in topics}
    if len(kept) < len(candidates):
        logger.warning("%d candidate queries have no topic text and are skipped", len(candidates) - len(kept))
    for qid, hits in kept.items():
        for docid, _ in hits:
            if docid not in doc_text:
                raise DiPairError(f"candidates for query {qid!r} name document {docid!r}, which has no text")
    return kept


def _from_run(path: str, candidates: Run) -> Run:
    """Teacher scores looked up in a precomputed run; every candidate must be there."""
    scores = {qid: dict(hits) for qid, hits in read_run(path).items()}
    result: Run = {}
    missing: list[tuple[str, str]] = []
    for qid, hits in candidates.items():
        row = scores.get(qid, {})
        found = []
        for docid, _ in hits:
            if docid in row:
                found.append((docid, row[docid]))
            else:
                missing.append((qid, docid))
        result[qid] = sort_hits(found)
    if missing:
        qid, docid = missing[0]
        raise DiPairError(
            f"teacher run {path} has no score for {len(missing)} candidate pair(s), e.g. query {qid!r} doc {docid!r}"
        )
    return result


def score_candidates(
    teacher_spec: str,
    topics: Mapping[str, str],
    candidates: Run,
    doc_text: Mapping[str, str],
    *,
    cache_dir: Path,
    batch_size: int = 32,
    device: str = "cpu",
    max_length: int | None = None,
    flush_every: int = 4096,
    progress: bool = True,
) -> Run:
    """Teacher scores for every (qid, docid) in ``candidates``, best first per query.

    Args:
        teacher_spec: a CrossEncoder HF id or local path, or ``run:PATH`` (precomputed teacher scores).
        topics: qid -> query text.
        candidates: the pairs to score (their scores are ignored).
        doc_text: docid -> text the teacher reads (e.g. title + contents).
        cache_dir: where cross-encoder scores are cached (unused for ``run:`` teachers).
        batch_size: pairs per cross-encoder forward pass.
        device: torch device for the cross-encoder.
        max_length: token limit for the cross-encoder (default: the model's own).
        flush_every: pairs scored between cache writes, so an interrupted run loses at most this many.
        progress: show a progress bar while scoring.

    Returns:
        qid -> [(docid, teacher score)], covering exactly the candidate pairs (queries without topic text are
        skipped, with a warning, for cross-encoder teachers). Cross-encoder scores are raw
        logits (no sigmoid), which keeps differences between strong candidates for the student to regress.

    Raises:
        DiPairError: a candidate document has no text, the teacher cannot be loaded, or a ``run:``
            teacher lacks a candidate pair.
    """
    if teacher_spec.startswith(RUN_PREFIX):
        return _from_run(teacher_spec[len(RUN_PREFIX) :], candidates)
    candidates = _with_text(topics, doc_text, candidates)
    cache = TeacherCache(Path(cache_dir), teacher_identity(teacher_spec, max_length=max_length))

    todo: dict[str, tuple[str, str]] = {}  # key -> (qid, docid), each missing pair once
    for qid, hits in candidates.items():
        for docid, _ in hits:
            key = pair_key(topics[qid], doc_text[docid])
            if key not in cache.entries:
                todo.setdefault(key, (qid, docid))
    total = sum(len(hits) for hits in candidates.values())
    logger.info("teacher %s: %d of %d candidate pairs need scoring", teacher_spec, len(todo), total)

    if todo:
        import torch

        model = load_cross_encoder(teacher_spec, device=device, max_length=max_length)
        # Longest first: similar lengths share a batch (less padding) and a memory error shows up at once.
        order = sorted(todo, key=lambda k: -(len(topics[todo[k][0]]) + len(doc_text[todo[k][1]])))
        with tqdm(total=len(order), desc="teacher scoring", unit="pair", disable=not progress) as bar:
            for start in range(0, len(order), flush_every):
                chunk = order[start : start + flush_every]
                pairs = [(topics[todo[k][0]], doc_text[todo[k][1]]) for k in chunk]
                scores = model.predict(
                    pairs, batch_size=batch_size, activation_fn=torch.nn.Identity(), show_progress_bar=False
                )
                for key, score in zip(chunk, scores, strict=True):
                    qid, docid = todo[key]
                    cache.entries[key] = (qid, docid, float(score))
                cache.save()
                bar.update(len(chunk))

    result: Run = {}
    for qid, hits in candidates.items():
        result[qid] = sort_hits(
            (docid, cache.entries[pair_key(topics[qid], doc_text[docid])][2]) for docid, _ in hits
        )
    return result


__all__ = ["RUN_PREFIX", "TeacherCache", "load_cross_encoder", "pair_key", "score_candidates", "teacher_identity"]
