"""Build the training sets of the default model: topics, BM25 candidates and qrels, one folder per set.

Only allowed training data: SciFact *train* queries and SciFact document titles (pseudo-queries) over the
SciFact corpus; DL21 (graded qrels) and DL22 queries with their shared BM25 runs; MS MARCO dev-subset queries
against the DL21 + DL22 passage pools (BM25 over a Lucene index of the pools); cropped pseudo-queries from those
pools' passages. Never SciFact test, never DL19.

    python eval/recipe/prepare_train_data.py --work eval/work/train [--depth 30]

Writes ``WORK/sets/<name>/{topics.tsv,candidates.trec[,qrels.txt],corpus}`` (``corpus`` is a folder of symlinks
to the shared JSONL files: data is referenced, never copied) and ``WORK/lucene-*`` indexes. Idempotent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

from dipair_rerank.data import read_corpus, read_qrels, read_run, read_topics, shared_data_dir, write_run
from dipair_rerank.train.pseudo_queries import cropped_queries

logger = logging.getLogger("prepare_train_data")


def _link_corpus(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, file in enumerate(files):
        link = folder / f"part{index}.jsonl"
        if not link.exists():
            link.symlink_to(file.resolve())
    return folder


def _pool_corpus(folder: Path, files: list[Path]) -> Path:
    """The DL21 and DL22 pools share passages: one deduplicated JSONL (a derived file in the git-ignored work
    folder, never in the repository)."""
    target = folder / "pool.jsonl"
    if target.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for file in files:
            with file.open(encoding="utf-8") as handle:
                for line in handle:
                    docid = json.loads(line)["id"]
                    if docid not in seen:
                        seen.add(docid)
                        out.write(line)
    tmp.replace(target)
    return folder


def _lucene(corpus: Path, target: Path, threads: int) -> Path:
    """A BM25 index of ``corpus`` (flat text, as the package indexes it)."""
    if (target / "done").is_file():
        return target
    from dipair_rerank._java import ensure_jvm

    ensure_jvm()
    from pyserini.index.lucene import LuceneIndexer

    shutil.rmtree(target, ignore_errors=True)
    indexer = LuceneIndexer(args=["-index", str(target), "-storeRaw"], threads=threads)
    batch: list[str] = []
    for doc in read_corpus(corpus):
        batch.append(json.dumps({"id": doc.docid, "contents": doc.text}))
        if len(batch) == 4096:
            indexer.add_batch_raw(batch)
            batch = []
    if batch:
        indexer.add_batch_raw(batch)
    indexer.close()
    (target / "done").write_text("ok\n")
    return target


def _bm25(index: Path, topics: dict[str, str], depth: int, threads: int) -> dict[str, list[tuple[str, float]]]:
    from dipair_rerank.first_stage import BM25FirstStage

    bm25 = BM25FirstStage(index)
    qids = [q for q, t in topics.items() if t.strip()]
    hits = bm25.retrieve(qids, [topics[q] for q in qids], depth, threads=threads)
    return {q: [(c.docid, c.score) for c in found] for q, found in zip(qids, hits) if found}


def _write_set(folder: Path, topics: dict[str, str], run, qrels=None, corpus: Path | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    run = {q: hits for q, hits in run.items() if q in topics and hits}
    (folder / "topics.tsv").write_text("".join(f"{q}\t{topics[q]}\n" for q in run))
    write_run(run, folder / "candidates.trec", tag="bm25", hits=10_000)
    if qrels:
        lines = [f"{q} 0 {d} {g}\n" for q, docs in qrels.items() if q in run for d, g in docs.items()]
        (folder / "qrels.txt").write_text("".join(lines))
    if corpus is not None and not (folder / "corpus").exists():
        os.symlink(corpus.resolve(), folder / "corpus")
    logger.info("%s: %d queries, %d pairs", folder.name, len(run), sum(len(h) for h in run.values()))


def _write_crops(folder: Path, corpus: Path, index: Path, count: int, depth: int, threads: int, **lengths: int
                 ) -> None:
    """A set of ``count`` cropped pseudo-queries from ``corpus``, with BM25 candidates from ``index`` (no qrels:
    the teacher labels them)."""
    topics = cropped_queries(((doc.docid, doc.text) for doc in read_corpus(corpus)), count, **lengths)
    _write_set(folder, topics, _bm25(index, topics, depth, threads), None, corpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="eval/work/train")
    parser.add_argument("--depth", type=int, default=30, help="BM25 candidates per training query")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--crops", type=int, default=6000, help="cropped pseudo-queries from the DL21/DL22 pools")
    parser.add_argument("--scifact-crops", type=int, default=0,
                        help="claim-length cropped pseudo-queries from SciFact (0: none; measured, not shipped)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = shared_data_dir()
    work = Path(args.work)
    sets = work / "sets"

    scifact_corpus = _link_corpus(work / "corpora" / "scifact", [data / "scifact/corpus.jsonl"])
    pool_corpus = _pool_corpus(work / "corpora" / "dl21-dl22-pool",
                               [data / "msmarco-v2-dl21/corpus.jsonl", data / "msmarco-v2-dl22/corpus.jsonl"])
    scifact_index = _lucene(scifact_corpus, work / "lucene-scifact", args.threads)
    pool_index = _lucene(pool_corpus, work / "lucene-dl21-dl22-pool", args.threads)

    # SciFact train queries (never the test split) over the SciFact corpus.
    topics = read_topics(data / "scifact/queries.train.tsv")
    _write_set(sets / "scifact-train", topics, _bm25(scifact_index, topics, args.depth, args.threads),
               read_qrels(data / "scifact/qrels.train.txt"), scifact_corpus)

    # Pseudo-queries: each SciFact document's title; the document itself is the one known relevant.
    titles: dict[str, str] = {}
    with (data / "scifact/corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if str(record.get("title", "")).strip():
                titles["t" + str(record["_id"] if "_id" in record else record["id"])] = record["title"].strip()
    title_qrels = {q: {q[1:]: 1} for q in titles}
    _write_set(sets / "scifact-titles", titles, _bm25(scifact_index, titles, args.depth, args.threads),
               title_qrels, scifact_corpus)
    if args.scifact_crops:  # spans of the abstracts, claim-length (SciFact's queries are claims)
        _write_crops(sets / "scifact-crops", scifact_corpus, scifact_index, args.scifact_crops, args.depth,
                     args.threads, shortest=5, longest=14)

    # DL21 (graded qrels) and DL22 (none) with their shared BM25 runs.
    for name, qrels_file in (("msmarco-v2-dl21", "qrels.txt"), ("msmarco-v2-dl22", None)):
        topics = read_topics(data / name / "queries.tsv")
        run = {q: hits[: args.depth] for q, hits in read_run(data / name / "runs/bm25.top100.trec").items()}
        _write_set(sets / name.removeprefix("msmarco-v2-"), topics, run,
                   read_qrels(data / name / qrels_file) if qrels_file else None, pool_corpus)

    # MS MARCO dev-subset queries against the DL21 + DL22 pools (their qrels name v1 passages: unusable here).
    topics = read_topics(data / "msmarco-dev-subset/queries.tsv")
    _write_set(sets / "marco-dev", topics, _bm25(pool_index, topics, args.depth, args.threads), None, pool_corpus)

    # Cropped pseudo-queries from the pools' passages, against the pools. The dev-subset queries above meet these
    # passages as strangers (their candidates are mostly off topic); a crop's candidates are the other passages of
    # its own topic, the near misses DL19's BM25 top 100 is made of.
    _write_crops(sets / "marco-crops", pool_corpus, pool_index, args.crops, args.depth, args.threads)


if __name__ == "__main__":
    main()
