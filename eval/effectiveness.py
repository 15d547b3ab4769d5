"""The effectiveness table, in one command: SciFact test and TREC DL19, BM25 top-100 re-ranked.

    HF_HUB_OFFLINE=1 python eval/effectiveness.py [--out eval/work/effectiveness] [--teacher eval/recipe/teacher.json]

Rows: BM25 (the shared run); the cheap scorers the default model is made of, each alone (all-MiniLM-L6-v2
bi-encoder, SPLADE-tiny) and fused with no head (per-query z-scores; weights fitted on TRAINING queries only —
SciFact train, DL21 — and the fixed 0.5 MiniLM + 0.5 SPLADE-tiny); all-mpnet-base-v2 (bf16); the teacher the
default model was distilled from (the cheap scorers + all-mpnet-base-v2, weights fitted likewise); the shipped
DiPair default model re-ranking from its index, with the candidates' BM25 scores, and without them (what plain
texts and a service's docids get). Columns: the collection's measures, student/teacher nDCG@10, re-rank latency
p50 per query (ms; after the first stage: query encoding, scoring the 100 candidates from stored document
representations, sorting), index time per passage (ms, 2 threads, batches of 32, over 256 of the collection's
passages) and bytes stored per document, and paired tests over queries (two-sided t-test and a sign-flip
randomisation test, 10,000 draws, on per-query nDCG@10) of each row against the bi-encoder and against the fitted
no-head hybrid.

Reuses: bi-encoder embeddings and SPLADE vectors (``--embeddings``) and the DiPair indexes (``indexes/eff-*``,
rebuilt only when the default model's fingerprint changes). Needs ``dipair-rerank fetch-teachers`` and
``eval/recipe/teacher.json`` (both from ``eval/recipe/train_default.sh``). Reads the shared data from
``$DIPAIR_DATA`` (default ../shared/data). Writes ``OUT/table.md``, ``OUT/table.json`` and the runs.
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
STUDENT = "DiPair default model (shipped)"
STUDENT_NO_FIRST_STAGE = "DiPair default model, no first-stage score (texts, service docids)"
BIENCODER = "all-MiniLM-L6-v2 bi-encoder re-rank"
HYBRID = "no head: z-fusion of the cheap scorers, weights fitted on training queries"
SAMPLE = 256  # passages timed for the index-cost column


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


def _biencoder(topics, cands, texts, cache: Path, model_name: str):
    """Bi-encoder run + per-query re-rank latency (query encoding + 100 dot products + sort)."""
    from dipair_rerank.train.teachers.biencoder import biencoder_scores, embed, load_biencoder

    run = biencoder_scores(topics, cands, texts, cache_dir=cache, model=model_name)
    docids = list(dict.fromkeys(d for hits in cands.values() for d, _ in hits))
    d_vecs = embed([texts[d] for d in docids], cache_dir=cache, progress=False, model=model_name)
    row = {d: i for i, d in enumerate(docids)}
    model = load_biencoder(model_name)
    latencies = []
    for qid, hits in cands.items():
        rows = np.asarray([row[d] for d, _ in hits])
        start = time.perf_counter()
        q = model.encode([topics[qid]], normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False)
        scores = d_vecs[rows] @ q[0].float().numpy()
        np.argsort(-scores)
        latencies.append((time.perf_counter() - start) * 1000)
    return run, latencies, d_vecs.shape[1] * 2  # stored in fp16


def _splade(topics, cands, texts, cache: Path, path: str):
    """SPLADE run + per-query re-rank latency (query encoding + 100 sparse dot products + sort)."""
    from dipair_rerank.model.lexical import SpladeEncoder
    from dipair_rerank.train.teachers.splade import splade_scores, splade_vectors

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
    return run, latencies, float(np.diff(docs.indptr).mean() * 4 + 8)  # stored as uint16 id + fp16 weight


def _index_ms(encode, texts: list[str]) -> float:
    """ms per passage of ``encode(texts)`` (after one warm-up batch)."""
    encode(texts[:32])
    start = time.perf_counter()
    encode(texts)
    return (time.perf_counter() - start) * 1000 / len(texts)


def index_costs(texts: list[str], scorers: dict[str, str]) -> dict[str, float]:
    """Index time per passage (ms) of the default DiPair model's document branch (blocks and lexical terms, as the
    indexer runs it) and of each scorer's document side (``scorers``: kind -> model)."""
    from dipair_rerank.encoding import encode_documents
    from dipair_rerank.model import load_model
    from dipair_rerank.model.lexical import SpladeEncoder
    from dipair_rerank.train.teachers.biencoder import load_biencoder

    model = load_model(None)
    costs = {"dipair": _index_ms(lambda batch: encode_documents(model, batch, batch_size=32), texts)}
    lexical, model.lexical = model.lexical, None  # the blocks alone: what a model without a lexical channel costs
    costs["dipair blocks"] = _index_ms(lambda batch: encode_documents(model, batch, batch_size=32), texts)
    model.lexical = lexical
    for kind, name in scorers.items():
        if kind == "splade":
            costs[kind] = _index_ms(SpladeEncoder(name).encode, texts)
        else:
            encoder = load_biencoder(name)
            costs[kind] = _index_ms(lambda batch: encoder.encode(batch, batch_size=32, show_progress_bar=False), texts)
    return costs


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
    """Default-model DiPair runs from its index (built if missing or made with another model), with and without
    the candidates' first-stage scores; the first's latencies; the model's fingerprint; bytes stored per document."""
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
        latencies = list(sum(parts))
    else:
        latencies = [float(sum(np.median(p) for p in parts))]  # stages timed per batch: medians
    reranker = searcher.reranker  # the same candidates as docids alone: no first-stage score
    bare = {q: [(h.docid, h.score) for h in reranker.rerank(topics[q], [d for d, _ in hits])] for q, hits in cands.items()}
    cache = reranker.cache
    return run, bare, latencies, fingerprint, cache.bytes_per_doc + cache.meta.get("lexical_bytes_per_doc", 0)


def _cross_encoder(path: str, topics, cands, texts, cache: Path, latency_queries: int = 10):
    from dipair_rerank.train.teachers.scores import load_cross_encoder, score_candidates

    run = score_candidates(path, topics, cands, texts, cache_dir=cache)
    model = load_cross_encoder(path, device="cpu", max_length=None)
    latencies = []
    for qid in list(cands)[:latency_queries]:
        pairs = [(topics[qid], texts[d]) for d, _ in cands[qid]]
        start = time.perf_counter()
        model.predict(pairs, batch_size=100, show_progress_bar=False)
        latencies.append((time.perf_counter() - start) * 1000)
    return run, latencies


def _cell(value, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _format(results: dict[str, list[dict]], header: str) -> str:
    extra = ("row", "rerank_p50_ms", "index_ms", "bytes", "vs_teacher", "p_t", "p_rand", "p_hybrid_t", "p_hybrid_rand")
    lines = [header, ""]
    for name, rows in results.items():
        measures = [k for k in rows[0] if k not in extra]
        lines.append(f"**{name}** (BM25 top-100 re-ranked)\n")
        lines.append("| row | " + " | ".join(measures) + " | student/teacher | re-rank p50 ms/query | index ms/passage "
                     "| bytes/doc | vs bi-encoder: p (t-test) | p (randomisation) | vs hybrid: p (t-test) "
                     "| p (randomisation) |")
        lines.append("|---|" + "---:|" * (len(measures) + 8))
        for row in rows:
            cells = [f"{row[m]:.4f}" for m in measures]
            cells += [_cell(row["vs_teacher"], 3), _cell(row["rerank_p50_ms"], 1), _cell(row["index_ms"], 1),
                      _cell(row["bytes"], 0)]
            cells += [_cell(row[k], 4) for k in ("p_t", "p_rand", "p_hybrid_t", "p_hybrid_rand")]
            lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="eval/work/effectiveness")
    parser.add_argument("--teacher", default="eval/recipe/teacher.json",
                        help="fusion teacher weights per domain (written by eval/recipe/train_default.sh)")
    parser.add_argument("--cross-encoder", default=None, help="also a row for this fine-tuned cross-encoder")
    parser.add_argument("--embeddings", default="eval/work/embeddings", help="bi-encoder / SPLADE cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS), choices=list(COLLECTIONS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from dipair_rerank.data.corpus import read_corpus
    from dipair_rerank.train.teachers.biencoder import PACKAGED_BIENCODER
    from dipair_rerank.train.teachers.fusion import format_scorers, fuse, parse_scorers

    torch.set_num_threads(args.threads)
    data = shared_data_dir()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = json.loads(Path(args.teacher).read_text())
    cache = Path(args.embeddings)
    results: dict[str, list[dict]] = {}
    index_notes: list[str] = []
    fingerprint = None
    for name in args.collections:
        spec = COLLECTIONS[name]
        folder = data / spec["dir"]
        topics, qrels, cands = bm25_top100(spec, data)
        wanted = {d for hits in cands.values() for d, _ in hits}
        texts = {doc.docid: doc.text for doc in read_corpus(folder / "corpus.jsonl") if doc.docid in wanted}
        rows: list[dict] = []
        per_query: dict[str, dict[str, float]] = {}

        def add(label: str, run: Run, latencies: list[float] | None, slug: str, index_ms: float | None = None,
                bytes_per_doc: float | None = None) -> None:
            write_run(run, out / f"{spec['dir']}.{slug}.trec", tag=slug, hits=100)
            values, per_query[label] = _measures(qrels, run, spec["measures"])
            p50 = float(np.percentile(latencies, 50)) if latencies else None
            rows.append({"row": label, **values, "rerank_p50_ms": p50, "index_ms": index_ms, "bytes": bytes_per_doc})
            logger.info("%s | %s | %s | p50 %s", name, label, values, p50)

        teacher = parse_scorers(weights["teacher"][spec["teacher_key"]])
        hybrid = parse_scorers(weights["hybrid"][spec["teacher_key"]])
        models = {s.kind if s.model == PACKAGED_BIENCODER or s.kind != "biencoder" else "mpnet": s.model
                  for s in teacher if s.kind != "first_stage"}
        sample = sorted(texts.values())[:: max(1, len(texts) // SAMPLE)][:SAMPLE]
        cost = index_costs(sample, models)
        runs: dict[str, Run] = {"first_stage": cands}
        lat: dict[str, list[float]] = {"first_stage": [0.0] * len(cands)}
        size: dict[str, float] = {"first_stage": 0.0}
        add("BM25 (shared run)", cands, None, "bm25")
        for kind, label, slug in (("biencoder", BIENCODER, "biencoder"), ("splade", "SPLADE-tiny re-rank", "splade"),
                                  ("mpnet", "all-mpnet-base-v2 (bf16) re-rank", "mpnet")):
            run_fn = _splade if kind == "splade" else _biencoder
            runs[kind], lat[kind], size[kind] = run_fn(topics, cands, texts, cache, models[kind])
            add(label, runs[kind], lat[kind], slug, cost[kind], size[kind])

        def fused(scorers, label: str, slug: str) -> None:
            kinds = ["mpnet" if s.kind == "biencoder" and s.model != PACKAGED_BIENCODER else s.kind for s in scorers]
            begin = time.perf_counter()
            run = fuse([runs[k] for k in kinds], [s.weight for s in scorers])
            fusion_ms = (time.perf_counter() - begin) * 1000 / len(cands)
            used = [k for k, s in zip(kinds, scorers) if s.weight > 0]  # scorers run one after another: times add
            latencies = [fusion_ms + sum(lat[k][i] for k in used) for i in range(len(cands))]
            add(label, run, latencies, slug, sum(cost.get(k, 0.0) for k in used), sum(size[k] for k in used))

        fused(hybrid, f"{HYBRID} ({format_scorers(hybrid)})", "hybrid")
        half = parse_scorers(f"biencoder=0.5,{next(s.name for s in hybrid if s.kind == 'splade')}=0.5")
        fused(half, "no head: 0.5 MiniLM + 0.5 SPLADE-tiny", "hybrid-half")
        teacher_label = f"teacher: fusion {format_scorers(teacher)}"
        fused(teacher, teacher_label, "teacher")
        if args.cross_encoder:
            ce_run, ce_lat = _cross_encoder(args.cross_encoder, topics, cands, texts, out / "ce-cache")
            add(f"cross-encoder {args.cross_encoder}", ce_run, ce_lat, "cross-encoder")
        dp_run, dp_bare, dp_lat, fingerprint, dp_bytes = _dipair(spec, data, topics, cands, args.threads)
        add(STUDENT, dp_run, dp_lat, "dipair", cost["dipair"], dp_bytes)
        add(STUDENT_NO_FIRST_STAGE, dp_bare, None, "dipair-no-first-stage", cost["dipair"], dp_bytes)
        teacher_ndcg = next(r["nDCG@10"] for r in rows if r["row"] == teacher_label)
        hybrid_label = next(r["row"] for r in rows if r["row"].startswith(HYBRID))
        for row in rows:
            row["vs_teacher"] = row["nDCG@10"] / teacher_ndcg if row["row"].startswith("DiPair") else None
            tested = not row["row"].startswith(("BM25", BIENCODER))
            row["p_t"], row["p_rand"] = paired_tests(per_query[row["row"]], per_query[BIENCODER]) if tested else (None, None)
            tested = row["row"].startswith("DiPair")
            row["p_hybrid_t"], row["p_hybrid_rand"] = (paired_tests(per_query[row["row"]], per_query[hybrid_label])
                                                       if tested else (None, None))
        results[name] = rows
        index_notes.append(f"{name}: DiPair's document branch {cost['dipair']:.1f} ms/passage, of which the blocks "
                           f"alone (a model without a lexical channel) {cost['dipair blocks']:.1f}")

    table = _format(results, f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
                    f"{platform.node()} ({platform.processor() or platform.machine()}, {args.threads} threads), "
                    f"default model {str(fingerprint)[:12]}: `python eval/effectiveness.py`. Index cost: "
                    + "; ".join(index_notes) + ".")
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
