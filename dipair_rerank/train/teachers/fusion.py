"""A fusion teacher: a weighted sum of per-query z-scored scorers (bi-encoder, first stage, cross-encoders).

Why: no strong cross-encoder can be downloaded offline, and one fine-tuned here on a few thousand pairs is weak.
A per-query z-score fusion of the scorers we have (BM25, the all-MiniLM-L6-v2 and all-mpnet-base-v2 bi-encoders,
SPLADE-tiny) beats each of them, so it is the teacher the student distils. The output is a TREC run, used as ``--teacher run:FILE``.

Scorer specs (comma-separated ``NAME=WEIGHT``):

    biencoder          cosine of the packaged all-MiniLM-L6-v2 embeddings (sentence-transformers)
    biencoder:PATH     the same with another SentenceTransformer id/path, or the name of a fetched teacher
                       (``biencoder:all-mpnet-base-v2``); ``PATH@bf16`` runs it in bf16 (a teacher's labelling
                       pass: all-mpnet-base-v2 2.6x faster on an avx512_bf16 CPU, cosines within 0.002 of fp32)
    first_stage        the candidate run's own score (e.g. BM25)
    ce:PATH            a CrossEncoder id/path (raw logits, cached by ``scores.score_candidates``)
    splade             SPLADE dot product with the fetched splade-tiny (``dipair-rerank fetch-teachers``)
    splade:PATH        the same with another SPLADE (BERT MLM) id/path
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dipair_rerank.data.runs import Run, sort_hits
from dipair_rerank.errors import DiPairError
from dipair_rerank.train.teachers.biencoder import PACKAGED_BIENCODER, biencoder_scores
from dipair_rerank.train.teachers.models import SPLADE_TINY, teacher_path
from dipair_rerank.train.teachers.scores import score_candidates
from dipair_rerank.train.teachers.splade import splade_scores

logger = logging.getLogger(__name__)

BIENCODER = "biencoder"
FIRST_STAGE = "first_stage"
CROSS_ENCODER_PREFIX = "ce:"
SPLADE = "splade"


@dataclass(frozen=True)
class ScorerSpec:
    """One fused scorer: ``kind`` (biencoder, first_stage, ce, splade), its model (if any) and weight."""

    name: str
    kind: str
    model: str | None
    weight: float


def parse_scorers(spec: str) -> list[ScorerSpec]:
    """``"biencoder=0.8,first_stage=0.2"`` -> scorer specs (a missing ``=W`` means weight 1).

    Raises:
        DiPairError: an unknown scorer or a weight that is not a number.
    """
    scorers: list[ScorerSpec] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight_text = part.rpartition("=") if "=" in part else (part, "", "1")
        try:
            weight = float(weight_text)
        except ValueError as exc:
            raise DiPairError(f"scorer {part!r}: weight {weight_text!r} is not a number") from exc
        if name == FIRST_STAGE:
            scorers.append(ScorerSpec(name, FIRST_STAGE, None, weight))
        elif name == BIENCODER or name.startswith(BIENCODER + ":"):
            model = name[len(BIENCODER) + 1 :] or PACKAGED_BIENCODER
            scorers.append(ScorerSpec(name, BIENCODER, model, weight))
        elif name.startswith(CROSS_ENCODER_PREFIX) and len(name) > len(CROSS_ENCODER_PREFIX):
            scorers.append(ScorerSpec(name, "ce", name[len(CROSS_ENCODER_PREFIX) :], weight))
        elif name == SPLADE or name.startswith(SPLADE + ":"):
            scorers.append(ScorerSpec(name, SPLADE, name[len(SPLADE) + 1 :] or None, weight))
        else:
            raise DiPairError(f"unknown scorer {name!r} (use biencoder[:PATH], first_stage, ce:PATH or splade[:PATH])")
    if not scorers:
        raise DiPairError("no scorers given (e.g. 'biencoder=0.8,first_stage=0.2')")
    if len({s.name for s in scorers}) != len(scorers):
        raise DiPairError(f"scorer named twice in {spec!r}")
    return scorers


def format_scorers(scorers: Sequence[ScorerSpec], weights: Sequence[float] | None = None) -> str:
    weights = weights if weights is not None else [s.weight for s in scorers]
    return ",".join(f"{s.name}={w:g}" for s, w in zip(scorers, weights, strict=True))


# ----- normalisation and fusion -----------------------------------------------------------------------------
def zscore(run: Run) -> Run:
    """Per-query z-scores: scorers on different scales (cosines, BM25, logits) become comparable."""
    out: Run = {}
    for qid, hits in run.items():
        values = np.asarray([s for _, s in hits], dtype=np.float64)
        std = values.std() if len(values) > 1 else 0.0
        normed = (values - values.mean()) / std if std > 0 else np.zeros_like(values)
        out[qid] = [(docid, float(v)) for (docid, _), v in zip(hits, normed)]
    return out


def fuse(runs: Sequence[Run], weights: Sequence[float]) -> Run:
    """Weighted sum of z-scored runs over the pairs of the first run (every run must cover them)."""
    normed = [{qid: dict(hits) for qid, hits in zscore(run).items()} for run in runs]
    fused: Run = {}
    for qid, hits in runs[0].items():
        rows = [n.get(qid, {}) for n in normed]
        fused[qid] = sort_hits(
            (docid, float(sum(w * row[docid] for w, row in zip(weights, rows, strict=True)))) for docid, _ in hits
        )
    return fused


def _ndcg10(ranked: Sequence[str], grades: Mapping[str, int]) -> float:
    gains = [max(grades.get(d, 0), 0) for d in ranked[:10]]
    ideal = sorted((max(g, 0) for g in grades.values()), reverse=True)[:10]
    dcg = sum((2**g - 1) / np.log2(i + 2) for i, g in enumerate(gains))
    idcg = sum((2**g - 1) / np.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mean_ndcg10(run: Run, qrels: Mapping[str, Mapping[str, int]]) -> float:
    """nDCG@10 (exponential gains, as trec_eval/ir_measures) over queries with a relevant judgment; fast
    enough for grid searches and per-epoch validation."""
    qids = [q for q in run if any(g > 0 for g in qrels.get(q, {}).values())]
    if not qids:
        return 0.0
    return float(np.mean([_ndcg10([d for d, _ in run[q]], qrels[q]) for q in qids]))


def fit_weights(
    runs: Sequence[Run], qrels: Mapping[str, Mapping[str, int]], *, step: float = 0.05
) -> tuple[list[float], float]:
    """Grid search over weights on the simplex (sum 1, multiples of ``step``) maximising nDCG@10.

    Returns:
        (best weights, their nDCG@10); ties go to the first grid point (more weight on earlier scorers).
    """
    units = round(1 / step)
    best: tuple[list[float], float] = ([1.0] + [0.0] * (len(runs) - 1), -1.0)
    for combo in itertools.product(range(units, -1, -1), repeat=len(runs) - 1):
        rest = units - sum(combo)
        if rest < 0:
            continue
        weights = [c / units for c in combo] + [rest / units]
        value = mean_ndcg10(fuse(runs, weights), qrels)
        if value > best[1] + 1e-12:
            best = (weights, value)
    return best


# ----- scorers ----------------------------------------------------------------------------------------------
def scorer_runs(
    scorers: Sequence[ScorerSpec],
    topics: Mapping[str, str],
    candidates: Run,
    doc_text: Mapping[str, str],
    *,
    cache_dir: Path | None,
    device: str = "cpu",
    progress: bool = True,
) -> list[Run]:
    """One run of raw scores per scorer, over the candidate pairs of queries with topic text."""
    candidates = {q: hits for q, hits in candidates.items() if q in topics}
    if not candidates:
        raise DiPairError("the candidates and the topics share no query ids")
    missing = next((d for hits in candidates.values() for d, _ in hits if d not in doc_text), None)
    if missing is not None:
        raise DiPairError(f"candidate document {missing!r} has no text")
    runs: list[Run] = []
    for scorer in scorers:
        if scorer.kind == FIRST_STAGE:
            runs.append({q: sort_hits(hits) for q, hits in candidates.items()})
        elif scorer.kind == BIENCODER:
            runs.append(biencoder_scores(topics, candidates, doc_text, model=scorer.model or PACKAGED_BIENCODER,
                                         cache_dir=cache_dir, device=device, progress=progress))
        elif scorer.kind == SPLADE:
            model = scorer.model or str(teacher_path(SPLADE_TINY.name))
            runs.append(splade_scores(topics, candidates, doc_text, model=model, cache_dir=cache_dir,
                                      device=device, progress=progress))
        else:
            runs.append(score_candidates(scorer.model or "", topics, candidates, doc_text,
                                         cache_dir=cache_dir or Path("."), device=device, progress=progress))
    return runs


def fusion_teacher(
    scorers: Sequence[ScorerSpec],
    topics: Mapping[str, str],
    candidates: Run,
    doc_text: Mapping[str, str],
    *,
    fit_qrels: Mapping[str, Mapping[str, int]] | None = None,
    step: float = 0.05,
    cache_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[Run, list[float], float | None]:
    """Fused teacher scores for every candidate pair.

    Returns:
        (run, weights used, nDCG@10 of the fit or None): with ``fit_qrels`` the weights are fitted on these
        queries by grid search (use a validation/training split, never a test set), else the spec's weights.
    """
    runs = scorer_runs(scorers, topics, candidates, doc_text, cache_dir=cache_dir, device=device,
                       progress=progress)
    weights = [s.weight for s in scorers]
    fitted: float | None = None
    if fit_qrels is not None:
        weights, fitted = fit_weights(runs, fit_qrels, step=step)
        for scorer, run in zip(scorers, runs, strict=True):
            logger.info("%s alone: nDCG@10 %.4f", scorer.name, mean_ndcg10(run, fit_qrels))
        logger.info("fitted %s: nDCG@10 %.4f", format_scorers(scorers, weights), fitted)
    return fuse(runs, weights), weights, fitted


def write_fit_report(path: Path, scorers: Sequence[ScorerSpec], weights: Sequence[float], ndcg: float,
                     queries: int) -> None:
    """JSON beside the run: the fitted weights, so other sets are labelled with the same teacher."""
    path.write_text(json.dumps({"scorers": format_scorers(scorers, weights), "ndcg@10": ndcg,
                                "queries": queries}, indent=2) + "\n")


__all__ = [
    "ScorerSpec",
    "fit_weights",
    "format_scorers",
    "fuse",
    "fusion_teacher",
    "mean_ndcg10",
    "parse_scorers",
    "scorer_runs",
    "write_fit_report",
    "zscore",
]
