"""Assemble training sets for ``dipair-rerank train``: topics + candidates + document texts (+ qrels) per set,
scored by the teacher set by set, then merged (ids prefixed by set when several sets are mixed, since
collections reuse ids: SciFact and MS MARCO both number their documents)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dipair_rerank.data import read_corpus, read_qrels, read_run, read_topics
from dipair_rerank.data.runs import Run
from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSetSpec:
    """One training set: ``topics``; ``candidates`` (a run) or ``index`` (BM25 over it); texts from ``corpus``
    or the index's stored contents; optional ``qrels``."""

    topics: str
    candidates: str | None = None
    corpus: str | None = None
    qrels: str | None = None
    index: str | None = None

    @staticmethod
    def zip(topics: Sequence[str], candidates: Sequence[str] | None, corpus: Sequence[str] | None,
            qrels: Sequence[str] | None, index: Sequence[str] | None = None) -> list["TrainSetSpec"]:
        def per_set(values: Sequence[str] | None, flag: str) -> list[str | None]:
            if values is None:
                return [None] * len(topics)
            if len(values) != len(topics):
                raise DiPairError(f"{flag} needs one value per --topics ({len(topics)}), got {len(values)}")
            return list(values)

        columns = zip(topics, per_set(candidates, "--candidates"), per_set(corpus, "--corpus"),
                      per_set(qrels, "--qrels"), per_set(index, "--index"))
        specs = [TrainSetSpec(t, c, d, q, i) for t, c, d, q, i in columns]
        for spec in specs:
            if spec.candidates is None and spec.index is None:
                raise DiPairError(f"training set {spec.topics}: give --candidates or --index (BM25 over it)")
            if spec.corpus is None and spec.index is None:
                raise DiPairError(f"training set {spec.topics}: give --corpus or --index for document texts")
        return specs


def _candidates(spec: TrainSetSpec, topics: dict[str, str], depth: int) -> Run:
    if spec.candidates is not None:
        run = read_run(spec.candidates)
        return {qid: hits[:depth] for qid, hits in run.items() if qid in topics}
    from dipair_rerank.first_stage import BM25FirstStage
    from dipair_rerank.index_layout import IndexLayout

    bm25 = BM25FirstStage(IndexLayout(Path(spec.index)).lucene)
    qids = list(topics)
    hits = bm25.retrieve(qids, [topics[q] for q in qids], depth, threads=2)
    return {qid: [(c.docid, c.score) for c in found] for qid, found in zip(qids, hits)}


def _texts(spec: TrainSetSpec, docids: set[str]) -> dict[str, str]:
    if spec.corpus is not None:
        texts = {doc.docid: doc.text for doc in read_corpus(spec.corpus) if doc.docid in docids}
    else:
        from dipair_rerank._java import ensure_jvm
        from dipair_rerank.index_layout import IndexLayout

        ensure_jvm()
        from pyserini.search.lucene import LuceneSearcher

        searcher = LuceneSearcher(str(IndexLayout(Path(spec.index)).lucene))
        texts = {}
        for docid in docids:
            doc = searcher.doc(docid)
            if doc is not None:
                texts[docid] = doc.contents()
    missing = docids - texts.keys()
    if missing:
        raise DiPairError(f"training set {spec.topics}: {len(missing)} candidate docid(s) have no text, "
                          f"e.g. {sorted(missing)[0]}")
    return texts


def _prefixed(run: Run, prefix: str) -> Run:
    return {prefix + qid: [(prefix + d, s) for d, s in hits] for qid, hits in run.items()}


def run_training(sets: list[TrainSetSpec], args: argparse.Namespace) -> Path:
    """Score every set with the teacher, merge the sets and distil; returns the final model folder."""
    import torch

    from dipair_rerank.model import load_model
    from dipair_rerank.train import TrainConfig, score_candidates, train_dipair

    torch.set_num_threads(args.threads)
    output = Path(args.output)
    config = TrainConfig(output=output, depth=args.depth, stage1_epochs=args.stage1_epochs,
                         stage1_lr=args.stage1_lr, stage2_epochs=args.stage2_epochs, stage2_lr=args.stage2_lr,
                         queries_per_step=args.queries_per_step, loss=args.loss, device=args.device,
                         seed=args.seed, bf16=args.bf16, label_weight=args.label_weight)
    topics: dict[str, str] = {}
    candidates: Run = {}
    texts: dict[str, str] = {}
    teacher: Run = {}
    qrels: dict[str, dict[str, int]] = {}
    for number, spec in enumerate(sets):
        prefix = f"{number}:" if len(sets) > 1 else ""
        set_topics = read_topics(spec.topics)
        set_candidates = _candidates(spec, set_topics, args.depth)
        set_texts = _texts(spec, {d for hits in set_candidates.values() for d, _ in hits})
        set_teacher = score_candidates(args.teacher, set_topics, set_candidates, set_texts,
                                       cache_dir=output / "teacher", device=args.device)
        topics.update({prefix + q: t for q, t in set_topics.items()})
        candidates.update(_prefixed(set_candidates, prefix))
        teacher.update(_prefixed(set_teacher, prefix))
        texts.update({prefix + d: t for d, t in set_texts.items()})
        if spec.qrels is not None:
            qrels.update({prefix + q: {prefix + d: r for d, r in docs.items()}
                          for q, docs in read_qrels(spec.qrels).items()})
        logger.info("set %s: %d queries, %d pairs", spec.topics, len(set_candidates),
                    sum(len(h) for h in set_candidates.values()))
    model = load_model(args.model)
    train_dipair(model, topics, candidates, texts, teacher, config, qrels=qrels or None)
    return output / "model"
