"""Run a searcher over a topic set and write the run (Pyserini's ``search`` loop), recording per-stage latency."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from dipair_rerank.data.runs import Run, write_run
from dipair_rerank.errors import DiPairError
from dipair_rerank.evaluate.latency import save_latency
from dipair_rerank.first_stage import FirstStage
from dipair_rerank.pipeline import DiPairSearcher, as_run
from dipair_rerank.timing import StageTimer

logger = logging.getLogger(__name__)


def search_topics(
    searcher: DiPairSearcher, topics: dict[str, str], *, hits: int = 1000, batch_size: int = 1, threads: int = 1,
    progress: bool = True,
) -> Run:
    """qid -> ranked (docid, score) for every topic; ``batch_size`` queries share one encoder and head call."""
    qids = list(topics)
    searcher.reranker.warm_up(searcher.depth)
    results = searcher.batch_search(
        [topics[qid] for qid in qids], qids, k=hits, threads=threads, batch_size=batch_size, progress=progress
    )
    run = as_run(results)
    empty = [qid for qid in qids if not run[qid]]
    if empty and len(empty) == len(qids):
        hint = (": do the --candidates run's query ids match the topics'?" if searcher.first_stage.name == "run" else
                "")
        raise DiPairError(f"none of the {len(qids)} topics got any candidates (e.g. {', '.join(qids[:3])}){hint}")
    if empty:
        logger.warning("%d of %d topics got no candidates (e.g. %s)", len(empty), len(qids), ", ".join(empty[:3]))
    return run


def first_stage_topics(
    first_stage: FirstStage, topics: dict[str, str], *, hits: int = 1000, timer: StageTimer | None = None,
    progress: bool = True,
) -> Run:
    """The first stage alone, one query at a time (for the baseline row and its latency)."""
    timer = timer or StageTimer()
    run: Run = {}
    for qid, text in tqdm(topics.items(), desc=first_stage.name, unit="query", disable=not progress):
        with timer.time("first_stage"):
            run[qid] = [(c.docid, c.score) for c in first_stage.retrieve([qid], [text], hits)[0]]
    return run


def save_run(run: Run, path: str | Path, *, timer: StageTimer | None = None, output_format: str = "trec",
             tag: str = "dipair", hits: int = 1000, **latency_extra: object) -> Path:
    """Write the run atomically and, when a timer is given, its latency sidecar (read by ``eval``)."""
    path = write_run(run, path, output_format=output_format, tag=tag, hits=hits)
    if timer is not None:
        save_latency(timer, path, **latency_extra)
    return path
