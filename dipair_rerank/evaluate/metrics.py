"""Quality via ir_measures: aggregate and per-query values for measures written as ir_measures strings."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

from dipair_rerank.data.runs import Run
from dipair_rerank.errors import DiPairError

from dipair_rerank.defaults import DEFAULT_MEASURES

logger = logging.getLogger(__name__)


class MeasureValue(NamedTuple):
    measure: str
    qid: str  # "all" for the aggregate
    value: float


def parse_measures(spec: str | Iterable[str]):
    import ir_measures

    names = spec.split() if isinstance(spec, str) else list(spec)
    try:
        return [ir_measures.parse_measure(name) for name in names]
    except (ValueError, NameError, SyntaxError, TypeError) as exc:
        raise DiPairError(f"unknown measure in {' '.join(names)!r} ({exc}); e.g. 'nDCG@10 RR@10 R@100 RR(rel=2)@10'") from exc


def evaluate(qrels: dict[str, dict[str, int]], run: Run, measures: str | Iterable[str] = DEFAULT_MEASURES,
             *, per_query: bool = False) -> list[MeasureValue]:
    """Values for ``measures``; queries in the run without qrels are ignored, queries in the qrels without
    run lines count as zero (as trec_eval -c does)."""
    import ir_measures

    parsed = parse_measures(measures)
    _check_shared_queries(qrels, run)
    run_dict = {qid: {docid: float(score) for docid, score in hits} for qid, hits in run.items()}
    for qid in qrels:
        run_dict.setdefault(qid, {})
    values: list[MeasureValue] = []
    if per_query:
        for metric in ir_measures.iter_calc(parsed, qrels, run_dict):
            values.append(MeasureValue(str(metric.measure), str(metric.query_id), float(metric.value)))
        values.sort(key=lambda v: (str(v.measure), v.qid))
    aggregate = ir_measures.calc_aggregate(parsed, qrels, run_dict)
    values.extend(MeasureValue(str(m), "all", float(aggregate[m])) for m in parsed)
    return values


def _check_shared_queries(qrels: dict[str, dict[str, int]], run: Run) -> None:
    """Refuse a run and qrels with no query in common (the wrong topics or qrels: every value would read 0), and
    warn when some judged queries have no run lines (they count as zero)."""
    judged = set(qrels)
    shared = judged & set(run)
    if not shared:
        raise DiPairError(f"the run and the qrels share no query ids (run: {', '.join(sorted(run)[:3])}, ...; "
                          f"qrels: {', '.join(sorted(judged)[:3])}, ...): are they for the same topics?")
    if len(shared) < len(judged):
        logger.warning("%d of %d judged queries have no lines in the run; they count as zero (e.g. %s)",
                       len(judged) - len(shared), len(judged), ", ".join(sorted(judged - shared)[:3]))
