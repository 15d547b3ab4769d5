"""Topics (``qid<TAB>text`` TSV) and qrels (TREC ``qid 0 docid rel``), from files or ``irds:`` ids."""

from __future__ import annotations

import logging
from pathlib import Path

from dipair_rerank.data import irds
from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        named = "/" not in str(path) and not path.suffix  # e.g. dl19-passage, a Pyserini topics/qrels name
        hint = "; Pyserini's topic and qrels names need the network: give a file or irds:ID" if named else ""
        raise DiPairError(f"file not found: {path}{hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DiPairError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    return [(no, line) for no, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_topics(spec: str | Path) -> dict[str, str]:
    """qid -> query text, in file order. Duplicate qids and lines without a tab are errors."""
    if irds.is_irds(spec):
        dataset = irds.load_dataset(str(spec))
        if not dataset.has_queries():
            raise DiPairError(f"{spec} has no queries")
        queries = irds.fetch(str(spec), "the queries", lambda: list(dataset.queries_iter()))
        return {q.query_id: getattr(q, "text", None) or q[1] for q in queries}
    path = Path(spec)
    topics: dict[str, str] = {}
    for line_no, line in _lines(path):
        if "\t" not in line:
            raise DiPairError(f"{path}:{line_no}: expected 'qid<TAB>query text'")
        qid, text = line.split("\t", 1)
        qid = qid.strip()
        if not qid:
            raise DiPairError(f"{path}:{line_no}: empty qid")
        if any(ch.isspace() for ch in qid):
            raise DiPairError(f"{path}:{line_no}: qid {qid!r} contains whitespace (TREC runs cannot hold it)")
        if qid in topics:
            raise DiPairError(f"{path}:{line_no}: duplicate qid {qid!r}")
        topics[qid] = text.strip()
    if not topics:
        raise DiPairError(f"{path}: no topics")
    empty = [qid for qid, text in topics.items() if not text]
    if empty:  # kept: a query with no results still counts (as 0) in the evaluation, as in trec_eval
        logger.warning("%s: %d topic(s) with empty query text, kept (BM25 finds nothing for them; e.g. %s)",
                       path, len(empty), ", ".join(empty[:3]))
    return topics


def read_qrels(spec: str | Path) -> dict[str, dict[str, int]]:
    """qid -> {docid: relevance}."""
    if irds.is_irds(spec):
        dataset = irds.load_dataset(str(spec))
        if not dataset.has_qrels():
            raise DiPairError(f"{spec} has no qrels")
        qrels_iter = irds.fetch(str(spec), "the qrels", lambda: list(dataset.qrels_iter()))
        qrels: dict[str, dict[str, int]] = {}
        for qrel in qrels_iter:
            qrels.setdefault(qrel.query_id, {})[qrel.doc_id] = int(qrel.relevance)
        return qrels
    path = Path(spec)
    qrels = {}
    for line_no, line in _lines(path):
        cols = line.split()
        if len(cols) != 4:
            raise DiPairError(f"{path}:{line_no}: qrels lines have 4 columns (qid 0 docid rel), got {len(cols)}")
        try:
            rel = int(cols[3])
        except ValueError as exc:
            raise DiPairError(f"{path}:{line_no}: relevance {cols[3]!r} is not an integer") from exc
        qrels.setdefault(cols[0], {})[cols[2]] = rel
    if not qrels:
        raise DiPairError(f"{path}: no qrels")
    return qrels
