"""``dipair-rerank quickstart``: index a collection, re-rank BM25 with DiPair, report quality against latency.

Defaults to BEIR SciFact test through ir_datasets (``irds:beir/scifact/test``); an existing index of the same
corpus and model is reused, so a second run only searches.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dipair_rerank.data import corpus_fingerprint, read_qrels, read_topics
from dipair_rerank.data.irds import is_irds
from dipair_rerank.defaults import DEFAULT_COLLECTION, DEFAULT_MEASURES
from dipair_rerank.evaluate import evaluate
from dipair_rerank.evaluate.report import format_latency, format_table
from dipair_rerank.first_stage import RunFileFirstStage
from dipair_rerank.index_layout import IndexLayout
from dipair_rerank.indexer import IndexOptions, build_index
from dipair_rerank.model import load_model
from dipair_rerank.pipeline import DiPairSearcher, open_first_stage
from dipair_rerank.rerank import DiPairReranker
from dipair_rerank.search import first_stage_topics, save_run, search_topics
from dipair_rerank.timing import StageTimer

logger = logging.getLogger(__name__)


@dataclass
class QuickstartOptions:
    corpus: str = DEFAULT_COLLECTION
    topics: str | None = None  # default: the corpus spec when it is an irds: id
    qrels: str | None = None
    candidates: str | None = None
    index: str | None = None  # default: indexes/<last part of the corpus name>
    runs: str = "runs"
    model: str | None = None
    depth: int = 100
    measures: str = DEFAULT_MEASURES
    batch_size: int = 32
    threads: int = 2


def _default_name(corpus: str) -> str:
    """``irds:beir/scifact/test`` -> ``beir-scifact-test``; ``data/cranfield/corpus.jsonl`` -> ``cranfield``."""
    if is_irds(corpus):
        return corpus.removeprefix("irds:").strip("/").replace("/", "-")
    path = Path(corpus).resolve()
    return path.parent.name if path.stem == "corpus" else path.stem


def _index_is_current(layout: IndexLayout, corpus: str, model_fingerprint: str) -> bool:
    if not layout.manifest_path.is_file():
        return False
    manifest = json.loads(layout.manifest_path.read_text())
    return (manifest.get("corpus_fingerprint") == corpus_fingerprint(corpus)
            and manifest.get("model_fingerprint") == model_fingerprint)


def run_quickstart(options: QuickstartOptions) -> str:
    """Build (or reuse) the index, run BM25 and BM25 + DiPair, and return the report as Markdown."""
    topics_spec = options.topics or (options.corpus if is_irds(options.corpus) else None)
    qrels_spec = options.qrels or (options.corpus if is_irds(options.corpus) else None)
    if topics_spec is None or qrels_spec is None:
        from dipair_rerank.errors import DiPairError

        raise DiPairError("--topics and --qrels are needed when --corpus is not an irds: id")
    name = _default_name(options.corpus)
    layout = IndexLayout(Path(options.index or f"indexes/{name}"))
    topics = read_topics(topics_spec)
    qrels = read_qrels(qrels_spec)
    model = load_model(options.model)
    if not _index_is_current(layout, options.corpus, model.fingerprint()):
        build_index(options.corpus, layout.root, model=options.model or model,
                    options=IndexOptions(threads=options.threads))
    else:
        logger.info("reusing %s", layout.root)

    baseline = open_first_stage(layout, "bm25", options.candidates)
    first_name = "BM25" if not isinstance(baseline, RunFileFirstStage) else f"run {Path(options.candidates).name}"
    base_timer = StageTimer()
    base_run = first_stage_topics(baseline, topics, hits=options.depth, timer=base_timer)
    save_run(base_run, Path(options.runs) / f"{name}.first-stage.trec", timer=base_timer, tag=baseline.name)

    reranker = DiPairReranker(model, _cache(layout), threads=options.threads)
    searcher = DiPairSearcher(reranker, RunFileFirstStage(base_run), depth=options.depth)
    run = search_topics(searcher, topics, hits=options.depth, batch_size=1)
    run_path = save_run(run, Path(options.runs) / f"{name}.dipair.trec", timer=reranker.timer)

    first_ms = base_timer.per_query_ms("first_stage")
    rerank_ms = sum(reranker.timer.per_query_ms(stage) for stage in ("query_encoding", "gather", "head"))
    rows = []
    for label, this_run, latency in (
        (first_name, base_run, first_ms),
        (f"{first_name} + DiPair@{options.depth}", run, first_ms + rerank_ms),
    ):
        row: dict[str, object] = {"system": label}
        row.update({v.measure: v.value for v in evaluate(qrels, this_run, options.measures)})
        row.update({"p50 ms/query": float(np.percentile(latency, 50)), "p95 ms/query": float(np.percentile(latency, 95))})
        rows.append(row)
    report = format_table(rows, ["system", *options.measures.split(), "p50 ms/query", "p95 ms/query"])
    stages = format_latency(reranker.timer.summary())
    return f"{report}\nDiPair re-rank stage:\n{stages}\nindex: {layout.root}   runs: {run_path.parent}/   queries: {len(topics)}\n"


def _cache(layout: IndexLayout):
    from dipair_rerank.cache import PrefixCache

    return PrefixCache(layout.cache)
