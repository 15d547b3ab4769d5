"""Fit a trained model's channel weights on held-out TRAINING queries with qrels, its head fixed.

Why: distillation sets the channel weights to imitate the teacher, whose strongest scorer (all-mpnet-base-v2) the
head can only partly learn; the weights that rank best given what the head did learn are found on labels. The
fit uses only queries the head never trained on: all DL21 queries (BM25 top-100) and the 20% of SciFact train
held out for validation (BM25 top-30, the split ``dipair-rerank train --val-fraction 0.2 ...`` made, seed 0).
One set of weights for both domains (the mean of the two domains' nDCG@10), by grid search.

    python eval/recipe/fit_channel_weights.py --model eval/work/train/channels/model \
        --output eval/work/train/channels-fit
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from dipair_rerank.data import read_qrels, read_run, read_topics, shared_data_dir
from dipair_rerank.data.corpus import read_corpus
from dipair_rerank.encoding import encode_documents
from dipair_rerank.model import load_model
from dipair_rerank.model.channels import COSINE, FIRST_STAGE, LEXICAL, channel_inputs
from dipair_rerank.model.lexical import lexical_dots

logger = logging.getLogger("fit_channel_weights")


def scifact_validation(qids: list[str], fraction: float = 0.2, seed: int = 0) -> set[str]:
    """The SciFact-train queries ``split_validation`` held out (the first training set: group "0", ids "0:...")."""
    items = sorted(f"0:{q}" for q in qids)
    random.Random(f"{seed}:0").shuffle(items)
    return {q[2:] for q in items[: int(round(len(items) * fraction))]}


def head_and_channels(model, topics: dict[str, str], run: dict, texts: dict[str, str]):
    """Per query: (docids, head scores, channel z-scores [k, channels])."""
    docids = list(dict.fromkeys(d for hits in run.values() for d, _ in hits))
    encoded = encode_documents(model, [texts[d] for d in docids], batch_size=32)
    row = {d: i for i, d in enumerate(docids)}
    out = {}
    with torch.inference_mode():
        for qid, hits in run.items():
            rows = np.asarray([row[d] for d, _ in hits])
            q = model.encode_queries(model.tokenize([topics[qid]], max_length=model.config.query_max_length))
            d_vectors, d_mask = model.document_blocks(encoded.vectors[rows], encoded.lengths[rows])
            head = model.score_prefixes(q.vectors, q.mask, d_vectors, d_mask).numpy()
            lexical = lexical_dots(model.encode_query_lexical([topics[qid]]), [len(rows)],
                                   [encoded.lexical[i] for i in rows])
            z = model.channel_z([len(rows)], q, d_vectors, first_stage=np.asarray([s for _, s in hits]),
                                lexical=lexical)
            out[qid] = ([d for d, _ in hits], head, z)
    return out


def ndcg10(scores: np.ndarray, gains: np.ndarray, ideal: np.ndarray) -> np.ndarray:
    """nDCG@10 per row of padded [Q, K] scores (padding at -inf) with graded ``gains``."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    discounts = 1.0 / np.log2(np.arange(2, 12))
    dcg = ((2.0 ** np.take_along_axis(gains, order, axis=1) - 1) * discounts[: order.shape[1]]).sum(1)
    return np.where(ideal > 0, dcg / np.maximum(ideal, 1e-12), 0.0)


def packed(per_query, qrels) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Padded head [Q, K], channel z [Q, K, C], gains [Q, K] and ideal DCG@10 [Q] of the judged queries."""
    qids = [q for q in per_query if q in qrels]
    width = max(len(per_query[q][0]) for q in qids)
    channels = next(iter(per_query.values()))[2].shape[1]
    head = np.full((len(qids), width), -1e9)
    z = np.zeros((len(qids), width, channels))
    gains = np.zeros((len(qids), width))
    ideal = np.zeros(len(qids))
    discounts = 1.0 / np.log2(np.arange(2, 12))
    for i, q in enumerate(qids):
        docids, h, zq = per_query[q]
        head[i, : len(docids)], z[i, : len(docids)] = h, zq
        gains[i, : len(docids)] = [qrels[q].get(d, 0) for d in docids]
        best = sorted(qrels[q].values(), reverse=True)[:10]  # ideal over every judged document, as trec_eval
        ideal[i] = ((2.0 ** np.asarray(best) - 1) * discounts[: len(best)]).sum()
    return head, z, gains, ideal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output", required=True, help="where the model with the fitted weights is saved")
    parser.add_argument("--sets", default="eval/work/train/sets")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    data = shared_data_dir()
    model = load_model(args.model)
    trained = model.channel_weights.detach().clone()
    with torch.no_grad():
        model.channel_weights.zero_()  # head scores alone; the channels come back as z-scores
    sci = Path(args.sets) / "scifact-train"
    sci_topics = read_topics(sci / "topics.tsv")
    held_out = scifact_validation(list(read_run(sci / "candidates.trec")))
    domains = {
        "DL21 (53 queries, BM25 top-100)": (read_topics(data / "msmarco-v2-dl21/queries.tsv"),
                                            read_run(data / "msmarco-v2-dl21/runs/bm25.top100.trec"),
                                            read_qrels(data / "msmarco-v2-dl21/qrels.txt"),
                                            data / "msmarco-v2-dl21/corpus.jsonl"),
        f"SciFact train, held out ({len(held_out)} queries, BM25 top-30)": (
            sci_topics, {q: h for q, h in read_run(sci / "candidates.trec").items() if q in held_out},
            read_qrels(sci / "qrels.txt"), data / "scifact/corpus.jsonl"),
    }
    arrays = {}
    output = Path(args.output)
    stored = output.with_name(output.name + "-inputs.npz")  # head scores and channel z-scores: refits skip encoding
    saved = dict(np.load(stored)) if stored.is_file() else {}
    for number, (name, (topics, run, qrels, corpus)) in enumerate(domains.items()):
        if f"head{number}" not in saved:
            run = {q: hits[:100] for q, hits in run.items() if q in topics}
            wanted = {d for hits in run.values() for d, _ in hits}
            texts = {doc.docid: doc.text for doc in read_corpus(corpus) if doc.docid in wanted}
            for key, value in zip(("head", "z", "gains", "ideal"), packed(head_and_channels(model, topics, run, texts),
                                                                         qrels)):
                saved[f"{key}{number}"] = value
        arrays[name] = tuple(saved[f"{key}{number}"] for key in ("head", "z", "gains", "ideal"))
        logger.info("%s: %d judged queries", name, len(arrays[name][0]))
    stored.parent.mkdir(parents=True, exist_ok=True)
    np.savez(stored, **saved)
    channels = model.config.channels
    # wide enough that the channels can outweigh the head (its per-query spread is logged): the ranking depends on
    # the weights relative to the head's scale only
    for name, (head, *_) in arrays.items():
        logger.info("%s: head score spread per query (std, median) %.3f", name,
                    float(np.median([row[row > -1e8].std() for row in head])))
    grids = {FIRST_STAGE: np.arange(0, 3.01, 0.1), LEXICAL: np.arange(0, 6.01, 0.1), COSINE: np.arange(-3, 3.01, 0.2)}
    best = (-1.0, None)
    for weights in itertools.product(*(grids[c] for c in channels)):
        w = np.asarray(weights)
        value = np.mean([ndcg10(head + z @ w, gains, ideal).mean() for head, z, gains, ideal in arrays.values()])
        if value > best[0] + 1e-9:
            best = (value, w)
    value, w = best
    report = {"channels": channels, "trained_weights": trained.tolist(), "fitted_weights": w.round(4).tolist(),
              "mean_ndcg10": round(float(value), 4)}
    for label, weights in (("trained", trained.numpy()), ("fitted", w)):
        report[f"{label}_per_set"] = {name: round(float(ndcg10(h + z @ weights, g, i).mean()), 4)
                                      for name, (h, z, g, i) in arrays.items()}
    logger.info("%s", report)
    with torch.no_grad():
        model.channel_weights.copy_(torch.as_tensor(w, dtype=torch.float32))
    model.save_pretrained(args.output, save_encoder=False)
    (Path(args.output) / "channel-fit.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
