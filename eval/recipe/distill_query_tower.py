"""Distil a shallower query tower from a model's own (``dipair_rerank/train/query_tower.py``) and
report, per collection, nDCG@10 of the two models re-ranking BM25's top 100 from the same cached documents, and the
mean Kendall tau between their scores per query; then the two query towers' encoding time on DL19's queries.

Training queries (texts only): the training sets of eval/recipe/prepare_train_data.py but DL21 (MS MARCO dev-subset
queries, pseudo-queries cropped from the DL21/DL22 pools, SciFact titles, SciFact train, DL22). DL21 is the
validation set; DL19 and SciFact test are reported, never used to choose anything. The document side is the
teacher's, so indexes built with the teacher serve both (indexes/eff-*, as eval/effectiveness.py builds them).

    (the recipe at git 41528e6, then eval/train_default.sh, trained the 6-layer model and ran this on it as its step 7)
    # or on a 6-layer model of your own (after python eval/recipe/prepare_train_data.py, for the training sets):
    python eval/recipe/distill_query_tower.py --teacher MODEL --skip 2 3 [--ship]   # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from scipy.stats import kendalltau

from dipair_rerank.cache import PrefixCache
from dipair_rerank.data import read_qrels, read_run, read_topics, shared_data_dir
from dipair_rerank.evaluate.metrics import evaluate
from dipair_rerank.evaluate.report import format_table, publish_report
from dipair_rerank.index_layout import IndexLayout
from dipair_rerank.model import DiPairModel
from dipair_rerank.train.query_tower import distill_query_tower, shallow_student

TRAINING_SETS = ("marco-dev", "marco-crops", "scifact-titles", "scifact-train", "dl22")
SHIPPED = Path("dipair_rerank/model/shipped")


def collections(data: Path) -> list[tuple[str, str, Path, Path, Path]]:
    """(name, index, topics, BM25 run, qrels) of the validation and the reported collections."""
    dl21, dl19, scifact = data / "msmarco-v2-dl21", data / "msmarco-dl19", data / "scifact"
    return [("DL21 (validation)", "indexes/eff-dl21", dl21 / "queries.tsv", dl21 / "runs/bm25.top100.trec",
             dl21 / "qrels.official.txt"),
            ("TREC DL19", "indexes/eff-dl19", dl19 / "queries.tsv", dl19 / "runs/bm25.top100.trec",
             dl19 / "qrels.official.txt"),
            ("SciFact test", "indexes/eff-scifact", scifact / "queries.test.tsv", scifact / "runs/bm25.top100.trec",
             scifact / "qrels.test.txt")]


def compare(models: dict[str, DiPairModel], index: str, topics_path: Path, run_path: Path, qrels_path: Path
            ) -> tuple[dict[str, float], float]:
    """nDCG@10 of each model re-ranking the run's top 100 from ``index``'s cache, and the mean Kendall tau
    between the first two models' scores per query."""
    cache = PrefixCache(IndexLayout(Path(index)).cache)
    topics, run = read_topics(topics_path), read_run(run_path)
    runs: dict[str, dict] = {name: {} for name in models}
    taus = []
    with torch.inference_mode():
        for qid, query in topics.items():
            docids = [docid for docid, _ in run.get(qid, [])[:100]]
            if not docids:
                continue
            blocks = next(iter(models.values())).document_blocks(*cache.gather(cache.rows(docids)))
            scores = []
            for name, model in models.items():
                encoded = model.encode_queries(model.tokenize([query], max_length=model.config.query_max_length))
                scores.append(model.score_prefixes(encoded.vectors, encoded.mask, *blocks).numpy())
                runs[name][qid] = list(zip(docids, scores[-1].tolist()))
            taus.append(kendalltau(scores[0], scores[1]).statistic)
    qrels = read_qrels(qrels_path)
    return {name: evaluate(qrels, r, "nDCG@10")[0].value for name, r in runs.items()}, float(np.mean(taus))


def encoding_ms(models: dict[str, DiPairModel], queries: list[str], rounds: int = 30) -> dict[str, tuple[float, float]]:
    """Median ms per query of each model's int8 query graph (the default backend, 2 threads): (one query at a
    time, a batch of all ``queries`` as one-thread tasks of equal length), the models taking turns."""
    from dipair_rerank.model.onnx_query import OnnxQueryEncoder
    from dipair_rerank.rerank import length_groups, padded_batch, query_token_ids

    inputs = {}
    for name, model in models.items():
        encoder = OnnxQueryEncoder(model, threads=2, batch_threads=2, int8=True)
        ids = query_token_ids(model.tokenizer, model.config.query_max_length)(queries)
        pad = model.tokenizer.pad_token_id or 0
        groups = length_groups([len(row) for row in ids], 1.0)
        inputs[name] = (encoder, [padded_batch([row], pad) for row in ids],
                        [padded_batch([ids[i] for i in group], pad) for group in groups])
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in models}
    for turn in range(rounds + 1):  # the first round warms up
        for name in models if turn % 2 else list(models)[::-1]:
            encoder, lone, groups = inputs[name]
            start = time.perf_counter()
            for batch in lone:
                encoder(batch)
            middle = time.perf_counter()
            encoder.encode_many(groups)
            if turn:
                times[name][0].append((middle - start) * 1000 / len(queries))
                times[name][1].append((time.perf_counter() - middle) * 1000 / len(queries))
    return {name: (float(np.median(a)), float(np.median(b))) for name, (a, b) in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True,
                        help="the full-tower model whose query tower is distilled (a model folder or a --model name)")
    parser.add_argument("--skip", type=int, nargs="+", default=[2, 3], help="frozen query layers left out")
    parser.add_argument("--sets", default="eval/work/train/sets",
                        help="eval/recipe/prepare_train_data.py's training sets")
    parser.add_argument("--queries", nargs="+", help="topic files (qid<TAB>text, or irds:ID) to train on instead")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--work", default="eval/work/query-tower", help="checkpoints (resumable) and the model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ship", action="store_true", help="replace the shipped default model with the student")
    parser.add_argument("--output", default="eval/results/distill_query_tower.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = DiPairModel.from_pretrained(args.teacher)
    student = shallow_student(teacher, args.skip)
    work = Path(args.work) / ("skip-" + "-".join(map(str, sorted(set(args.skip)))))
    sources = args.queries or [Path(args.sets) / name / "topics.tsv" for name in TRAINING_SETS]
    queries = [text for source in sources for text in read_topics(source).values()]
    started = time.time()
    losses = distill_query_tower(teacher, student, queries, work, epochs=args.epochs, lr=args.lr)
    minutes = (time.time() - started) / 60
    folder = student.save_pretrained(work / "model", save_encoder=False)

    rows = []
    for name, index, topics, run, qrels in collections(shared_data_dir()):
        if not Path(index).is_dir():  # eval/effectiveness.py builds them (the document side is the teacher's)
            print(f"{name} not compared: no index at {index}")
            continue
        ndcg, tau = compare({"teacher": teacher, "student": student}, index, topics, run, qrels)
        rows.append({"collection": name, "nDCG@10 full tower": f"{ndcg['teacher']:.4f}",
                     "nDCG@10 shallow tower": f"{ndcg['student']:.4f}",
                     "delta": f"{ndcg['student'] - ndcg['teacher']:+.4f}", "mean Kendall tau": f"{tau:.3f}"})
    speed = encoding_ms({"teacher": teacher, "student": student},
                        list(read_topics(shared_data_dir() / "msmarco-dl19" / "queries.tsv").values()))
    timing = [{"query tower": f"{label} ({len(model.query_encoder.encoder.layer)} layers)",
               "ms per query, one at a time": f"{speed[name][0]:.3f}", "ms per query, batched": f"{speed[name][1]:.3f}"}
              for name, label, model in (("teacher", "full", teacher), ("student", "shallow", student))]
    layers = len(teacher.query_encoder.encoder.layer)
    header = (f"# distill_query_tower  {time.strftime('%Y-%m-%d %H:%M')}  query layers {layers} -> "
              f"{layers - len(set(args.skip))} (left out: {sorted(set(args.skip))}), {len(queries)} training queries, "
              f"{args.epochs} epochs (loss {' '.join(f'{x:.3f}' for x in losses)}; {minutes:.1f} min this run)\n\n")
    quality = format_table(rows, list(rows[0])) + "\n\n" if rows else ""
    publish_report(header + quality + "Query encoding over DL19's queries (int8 graph, 2 threads; the models taking "
                   "turns):\n\n" + format_table(timing, list(timing[0])) + "\n", args.output)
    if args.ship:
        staging = SHIPPED.with_name("shipped.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder, staging)
        shutil.rmtree(SHIPPED)
        staging.rename(SHIPPED)
        print(f"shipped {folder} as {SHIPPED} (rebuild indexes made with the previous default model)")


if __name__ == "__main__":
    main()
