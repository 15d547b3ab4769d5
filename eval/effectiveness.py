"""The effectiveness table of issue 10, in one command: SciFact test and TREC DL19, BM25 top-100 re-ranked.

    HF_HUB_OFFLINE=1 python eval/effectiveness.py [--out eval/work/effectiveness] [--teacher eval/teacher.json]

Rows: BM25 (the shared run), the all-MiniLM-L6-v2 bi-encoder re-rank, SPLADE-tiny re-rank, the teacher (the
fusion teacher the default model was distilled from, weights from ``--teacher``; optionally a fine-tuned
cross-encoder via ``--cross-encoder``), the shipped DiPair default model re-ranking from its prefix cache, and
DiPair interpolated with the first-stage score (per-query z-scores, weight fitted on TRAINING data only: SciFact
train for SciFact, DL21 for MS MARCO). Columns: the collection's measures, student/teacher nDCG@10, re-rank
latency p50 per query (ms; everything after the first stage: query encoding, scoring the 100 candidates from
cached document representations, sorting), and a paired test of each row against the bi-encoder over queries
(two-sided t-test and a sign-flip randomisation test, 10,000 draws, on per-query nDCG@10).

Reuses: bi-encoder embeddings and SPLADE vectors (``--embeddings``) and the DiPair indexes (``indexes/eff-*``,
rebuilt only when the default model's fingerprint changes). Needs ``dipair-rerank fetch-teachers`` (SPLADE-tiny)
and the prepared SciFact-train set of ``eval/train_default.sh`` (its BM25 top-30, for the interpolation fit).
Reads the shared data from ``$DIPAIR_DATA`` (default ../shared/data). Writes ``OUT/table.md``, ``OUT/table.json``
and the runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from dipair_rerank.data import read_qrels, read_run, read_topics, shared_data_dir, write_run
from dipair_rerank.data.runs import Run, sort_hits

logger = logging.getLogger("effectiveness")

COLLECTIONS = {
    "SciFact test": dict(dir="scifact", topics="queries.test.tsv", qrels="qrels.test.txt",
                         measures="nDCG@10 RR@10 R@100", index="indexes/eff-scifact", teacher_key="scifact"),
    "TREC DL19": dict(dir="msmarco-dl19", topics="queries.tsv", qrels="qrels.official.txt",
                      measures="nDCG@10 RR(rel=2)@10 R(rel=2)@100", index="indexes/eff-dl19", teacher_key="msmarco"),
}
FIT_SETS = {
    # training data on which the DiPair + first-stage interpolation weight is fitted, per teacher domain
    "scifact": dict(dir="scifact", topics="queries.train.tsv", qrels="qrels.train.txt", index="indexes/eff-scifact",
                    candidates="eval/work/train/sets/scifact-train/candidates.trec"),
    "msmarco": dict(dir="msmarco-v2-dl21", topics="queries.tsv", qrels="qrels.txt", index="indexes/eff-dl21",
                    candidates="runs/bm25.top100.trec"),
}
STUDENT = "DiPair default model (shipped)"


def bm25_top100(spec: dict, data: Path) -> tuple[dict[str, str], dict[str, dict[str, int]], Run]:
    """A collection's topics, qrels and its shared BM25 top-100 run (queries that have a topic)."""
    folder = data / spec["dir"]
    topics, qrels = read_topics(folder / spec["topics"]), read_qrels(folder / spec["qrels"])
    cands = {q: h[:100] for q, h in read_run(folder / "runs/bm25.top100.trec").items() if q in topics}
    return topics, qrels, cands


def _measures(qrels, run: Run, measures: str) -> tuple[dict[str, float], dict[str, float]]:
    """(aggregate values, per-query nDCG@10)."""
    from dipair_rerank.evaluate import evaluate

    values = evaluate(qrels, run, measures, per_query=True)
    first = str(values[-len(measures.split())].measure)
    return ({v.measure: v.value for v in values if v.qid == "all"},
            {v.qid: v.value for v in values if v.qid != "all" and v.measure == first})


def paired_tests(a: dict[str, float], b: dict[str, float], *, draws: int = 10_000, seed: int = 0
                 ) -> tuple[float, float]:
    """Two-sided p-values (paired t-test, sign-flip randomisation test) of mean(a - b) over shared queries."""
    from scipy.stats import ttest_rel

    qids = sorted(set(a) & set(b))
    diff = np.asarray([a[q] - b[q] for q in qids])
    if not diff.any():
        return 1.0, 1.0
    t_p = float(ttest_rel([a[q] for q in qids], [b[q] for q in qids]).pvalue)
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(draws, len(diff)))
    observed = abs(diff.mean())
    random_p = float(((np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12).sum() + 1) / (draws + 1))
    return t_p, random_p


def _biencoder(topics, cands, texts, cache: Path):
    """Bi-encoder run + per-query re-rank latency (query encoding + 100 dot products + sort)."""
    from dipair_rerank.train.fusion import biencoder_scores, embed, load_biencoder

    run = biencoder_scores(topics, cands, texts, cache_dir=cache)
    docids = list(dict.fromkeys(d for hits in cands.values() for d, _ in hits))
    d_vecs = embed([texts[d] for d in docids], cache_dir=cache, progress=False)
    row = {d: i for i, d in enumerate(docids)}
    model = load_biencoder()
    latencies = []
    for qid, hits in cands.items():
        rows = np.asarray([row[d] for d, _ in hits])
        start = time.perf_counter()
        q = model.encode([topics[qid]], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        scores = d_vecs[rows] @ q[0]
        np.argsort(-scores)
        latencies.append((time.perf_counter() - start) * 1000)
    return run, latencies


def _splade(topics, cands, texts, cache: Path):
    """SPLADE-tiny run + per-query re-rank latency (query encoding + 100 sparse dot products + sort)."""
    from dipair_rerank.train.splade import SpladeEncoder, splade_scores, splade_vectors
    from dipair_rerank.train.teacher_models import SPLADE_TINY, teacher_path

    path = str(teacher_path(SPLADE_TINY.name))
    run = splade_scores(topics, cands, texts, model=path, cache_dir=cache)
    encoder = SpladeEncoder(path)
    docids = list(dict.fromkeys(d for hits in cands.values() for d, _ in hits))
    docs = splade_vectors(encoder, [texts[d] for d in docids], cache_dir=cache, progress=False)
    row = {d: i for i, d in enumerate(docids)}
    latencies = []
    for qid, hits in cands.items():
        rows = [row[d] for d, _ in hits]
        start = time.perf_counter()
        terms, weights = encoder.encode([topics[qid]])[0]
        scores = np.asarray(docs[rows][:, terms] @ weights).ravel()
        np.argsort(-scores)
        latencies.append((time.perf_counter() - start) * 1000)
    return run, latencies


def _default_index(index: Path, corpus: Path, threads: int) -> str:
    """Build ``index`` with the default model unless it already holds that model's cache; its fingerprint."""
    from dipair_rerank.indexer import IndexOptions, build_index
    from dipair_rerank.model import load_model

    fingerprint = load_model(None).fingerprint()
    manifest = index / "manifest.json"
    if not manifest.is_file() or json.loads(manifest.read_text())["model_fingerprint"] != fingerprint:
        logger.info("building %s with the default model", index)
        build_index(corpus, index, model=None, options=IndexOptions(threads=threads))
    return fingerprint


def _dipair(spec: dict, data: Path, topics, cands, threads: int):
    """Default-model DiPair run from its index (built if missing or made with another model) + latency."""
    from dipair_rerank.pipeline import DiPairSearcher
    from dipair_rerank.search import search_topics

    fingerprint = _default_index(Path(spec["index"]), data / spec["dir"] / "corpus.jsonl", threads)
    searcher = DiPairSearcher.from_index(spec["index"], candidates=cands, depth=100, threads=threads)
    # timed warm, as the bi-encoder's and SPLADE's rows above are (in memory): the cache read in, the sessions run
    # once; a cold cache's first pass faults its rows in from disk (DL19 read 10.5 ms p50 so, against ~2.5 warm)
    searcher.reranker.cache.map_in()
    searcher.reranker.warm_up()
    run = search_topics(searcher, topics, hits=100, batch_size=1, threads=1, progress=False)
    timer = searcher.timer
    parts = [timer.per_query_ms(s) for s in ("query_encoding", "gather", "head")]
    parts = [p for p in parts if len(p)]
    if parts and all(len(p) == len(parts[0]) for p in parts):
        return run, list(sum(parts)), fingerprint
    return run, [float(sum(np.median(p) for p in parts))], fingerprint  # stages timed per batch: medians


def fit_interpolation(key: str, data: Path, threads: int) -> tuple[float, float]:
    """(DiPair weight, first-stage weight) maximising nDCG@10 of their z-score fusion on the domain's training
    queries (``FIT_SETS``), grid step 0.05."""
    from dipair_rerank.rerank import DiPairReranker
    from dipair_rerank.train.fusion import fit_weights

    spec = FIT_SETS[key]
    folder = data / spec["dir"]
    topics, qrels = read_topics(folder / spec["topics"]), read_qrels(folder / spec["qrels"])
    path = Path(spec["candidates"])
    cands = {q: h[:100] for q, h in read_run(path if path.is_absolute() or path.exists() else folder / path).items()
             if q in topics}
    _default_index(Path(spec["index"]), folder / "corpus.jsonl", threads)
    reranker = DiPairReranker.from_index(spec["index"], threads=threads)
    student = {q: [(h.docid, h.score) for h in reranker.rerank(topics[q], hits)] for q, hits in cands.items()}
    weights, value = fit_weights([student, cands], qrels)
    logger.info("interpolation fitted on %s: DiPair %.2f + first stage %.2f (nDCG@10 %.4f on %d queries)",
                spec["dir"], weights[0], weights[1], value, len(cands))
    return weights[0], weights[1]


def _cross_encoder(path: str, topics, cands, texts, cache: Path, latency_queries: int = 10):
    from dipair_rerank.train.teacher import _load_cross_encoder, score_candidates

    run = score_candidates(path, topics, cands, texts, cache_dir=cache)
    model = _load_cross_encoder(path, device="cpu", max_length=None)
    latencies = []
    for qid in list(cands)[:latency_queries]:
        pairs = [(topics[qid], texts[d]) for d, _ in cands[qid]]
        start = time.perf_counter()
        model.predict(pairs, batch_size=100, show_progress_bar=False)
        latencies.append((time.perf_counter() - start) * 1000)
    return run, latencies


def _format(results: dict[str, list[dict]], header: str) -> str:
    lines = [header, ""]
    for name, rows in results.items():
        measures = [k for k in rows[0] if k not in ("row", "rerank_p50_ms", "vs_teacher", "p_t", "p_rand")]
        lines.append(f"**{name}** (BM25 top-100 re-ranked)\n")
        lines.append("| row | " + " | ".join(measures) + " | student/teacher | re-rank p50 ms/query "
                     "| vs bi-encoder: p (t-test) | p (randomisation) |")
        lines.append("|---|" + "---:|" * (len(measures) + 4))
        for row in rows:
            cells = [f"{row[m]:.4f}" for m in measures]
            cells.append("—" if row["vs_teacher"] is None else f"{row['vs_teacher']:.3f}")
            cells.append("—" if row["rerank_p50_ms"] is None else f"{row['rerank_p50_ms']:.1f}")
            cells += ["—" if row[k] is None else f"{row[k]:.4f}" for k in ("p_t", "p_rand")]
            lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="eval/work/effectiveness")
    parser.add_argument("--teacher", default="eval/teacher.json",
                        help="fusion teacher weights per domain (written by eval/train_default.sh)")
    parser.add_argument("--cross-encoder", default=None, help="also a row for this fine-tuned cross-encoder")
    parser.add_argument("--embeddings", default="eval/work/embeddings", help="bi-encoder / SPLADE cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS), choices=list(COLLECTIONS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from dipair_rerank.data.corpus import read_corpus
    from dipair_rerank.train.fusion import fuse, parse_scorers

    torch.set_num_threads(args.threads)
    data = shared_data_dir()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher_weights = json.loads(Path(args.teacher).read_text())
    cache = Path(args.embeddings)
    results: dict[str, list[dict]] = {}
    fingerprint = None
    for name in args.collections:
        spec = COLLECTIONS[name]
        folder = data / spec["dir"]
        topics, qrels, cands = bm25_top100(spec, data)
        wanted = {d for hits in cands.values() for d, _ in hits}
        texts = {doc.docid: doc.text for doc in read_corpus(folder / "corpus.jsonl") if doc.docid in wanted}
        rows: list[dict] = []
        per_query: dict[str, dict[str, float]] = {}

        def add(label: str, run: Run, latencies: list[float] | None, slug: str) -> None:
            write_run(run, out / f"{spec['dir']}.{slug}.trec", tag=slug, hits=100)
            values, per_query[label] = _measures(qrels, run, spec["measures"])
            p50 = float(np.percentile(latencies, 50)) if latencies else None
            rows.append({"row": label, **values, "rerank_p50_ms": p50})
            logger.info("%s | %s | %s | p50 %s", name, label, values, p50)

        add("BM25 (shared run)", cands, None, "bm25")
        bi_run, bi_lat = _biencoder(topics, cands, texts, cache)
        add("all-MiniLM-L6-v2 bi-encoder re-rank", bi_run, bi_lat, "biencoder")
        sp_run, sp_lat = _splade(topics, cands, texts, cache)
        add("SPLADE-tiny re-rank", sp_run, sp_lat, "splade")
        scorers = parse_scorers(teacher_weights[spec["teacher_key"]])
        by_kind = {"biencoder": bi_run, "first_stage": cands, "splade": sp_run}
        fused_lat = []
        for _ in range(3):  # the fusion on top of its scorers' scores: z-scores and a weighted sum
            begin = time.perf_counter()
            teacher_run = fuse([by_kind[s.kind] for s in scorers], [s.weight for s in scorers])
            fused_lat.append((time.perf_counter() - begin) * 1000 / len(cands))
        # the teacher runs its scorers one after the other: their latencies add up
        teacher_lat = [b + (s if any(x.kind == "splade" for x in scorers) else 0.0) + float(np.median(fused_lat))
                       for b, s in zip(bi_lat, sp_lat, strict=True)]
        teacher_label = f"teacher: fusion {teacher_weights[spec['teacher_key']]}"
        add(teacher_label, teacher_run, teacher_lat, "teacher")
        if args.cross_encoder:
            ce_run, ce_lat = _cross_encoder(args.cross_encoder, topics, cands, texts, out / "ce-cache")
            add(f"cross-encoder {args.cross_encoder}", ce_run, ce_lat, "cross-encoder")
        dp_run, dp_lat, fingerprint = _dipair(spec, data, topics, cands, args.threads)
        add(STUDENT, dp_run, dp_lat, "dipair")
        w_student, w_first = fit_interpolation(spec["teacher_key"], data, args.threads)
        mixed = fuse([{q: dp_run[q][:100] for q in cands}, cands], [w_student, w_first])
        add(f"DiPair + first-stage score ({w_student:g} / {w_first:g}, fitted on training queries)", mixed,
            [x + float(np.median(fused_lat)) for x in dp_lat], "dipair-fused")
        teacher_ndcg = next(r["nDCG@10"] for r in rows if r["row"] == teacher_label)
        baseline = per_query["all-MiniLM-L6-v2 bi-encoder re-rank"]
        for row in rows:
            row["vs_teacher"] = row["nDCG@10"] / teacher_ndcg if row["row"].startswith("DiPair") else None
            tested = not row["row"].startswith(("BM25", "all-MiniLM"))
            row["p_t"], row["p_rand"] = paired_tests(per_query[row["row"]], baseline) if tested else (None, None)
        results[name] = rows

    table = _format(results, f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
                    f"{platform.node()} ({platform.processor() or platform.machine()}, {args.threads} threads), "
                    f"default model {str(fingerprint)[:12]}: `python eval/effectiveness.py`")
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
