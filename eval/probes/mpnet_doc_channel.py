"""Probe: would all-mpnet-base-v2 document vectors, stored at index time, help the shipped model if its own query
tower stood in for mpnet's query side through a linear map? Measured on validation data only.

1. The map: ridge regression from the shipped model's pooled query vector (384) to all-mpnet-base-v2's query
   embedding (768), fitted on the training sets' queries except DL21 and SciFact train (the queries the channel
   weight is chosen on); reported: mean cosine of mapped and true mpnet query vectors per set.
   With ``--queries mpnet`` the channel reads mpnet's own query vectors instead: the ceiling of any query tower
   distilled into mpnet's space (a perfect one), which bounds what this lever can give.
2. The channel: the shipped model's score + w * z(cos(mapped query, mpnet document)), w on a grid, nDCG@10 on all
   DL21 queries (BM25 top-100) and the held-out 20% of SciFact train (BM25 top-30), as
   ``eval/recipe/fit_channel_weights.py`` fits the other channel weights (its saved inputs are reused).

Needs what ``bash eval/recipe/train_default.sh`` leaves in eval/work/ (training sets, the mpnet embedding cache,
``channels-fit-inputs.npz``) and ``dipair-rerank fetch-teachers``.

    python eval/probes/mpnet_doc_channel.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipe"))

from fit_channel_weights import ndcg10, scifact_validation  # noqa: E402

from dipair_rerank.data import read_qrels, read_run, read_topics, shared_data_dir  # noqa: E402
from dipair_rerank.data.corpus import read_corpus  # noqa: E402
from dipair_rerank.model import load_model  # noqa: E402
from dipair_rerank.train.teachers.biencoder import embed  # noqa: E402

MPNET = "all-mpnet-base-v2@bf16"
SETS = ("scifact-train", "scifact-titles", "marco-dev", "marco-crops", "dl22", "dl21")


def pooled_queries(model, texts: list[str]) -> np.ndarray:
    out = []
    for start in range(0, len(texts), 256):
        batch = model.tokenize(texts[start: start + 256], max_length=model.config.query_max_length)
        with torch.inference_mode():
            out.append(model.encode_queries(batch).pooled.numpy())
    return np.concatenate(out)


def zscore(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / (values.std() + 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="eval/work")
    parser.add_argument("--ridge", type=float, default=1.0)
    parser.add_argument("--queries", choices=("ridge", "mpnet"), default="ridge",
                        help="the channel's query vectors: ours mapped by ridge, or mpnet's own (the ceiling)")
    args = parser.parse_args()
    work, data = Path(args.work), shared_data_dir()
    torch.set_num_threads(2)
    model = load_model(None).eval()

    def mpnet_vectors(texts: list[str]) -> np.ndarray:
        return embed(texts, model=MPNET, cache_dir=work / "embeddings", progress=False)

    topics = {name: read_topics(work / "train/sets" / name / "topics.tsv") for name in SETS}
    texts = {name: list(t.values()) for name, t in topics.items()}
    ours = {name: pooled_queries(model, texts[name]) for name in SETS}
    every = mpnet_vectors([q for name in SETS for q in texts[name]])
    bounds = np.cumsum([0] + [len(texts[name]) for name in SETS])
    true = {name: every[bounds[i]: bounds[i + 1]] for i, name in enumerate(SETS)}
    fit_sets = [name for name in SETS if name not in ("dl21", "scifact-train")]
    x = np.concatenate([np.hstack([ours[n], np.ones((len(ours[n]), 1))]) for n in fit_sets])
    y = np.concatenate([true[n] for n in fit_sets])
    weights = np.linalg.solve(x.T @ x + args.ridge * np.eye(x.shape[1]), x.T @ y)

    def mapped(queries: list[str]) -> np.ndarray:
        p = np.hstack([pooled_queries(model, queries), np.ones((len(queries), 1))]) @ weights
        return p / np.linalg.norm(p, axis=1, keepdims=True)

    print("mean cosine(mapped, true mpnet query vector):")
    for name in SETS:
        print(f"  {name}: {float((mapped(texts[name]) * true[name]).sum(1).mean()):.3f}"
              f"{'' if name in fit_sets else ' (not fitted on)'}")

    saved = np.load(work / "train/channels-fit-inputs.npz")
    shipped_weights = model.channel_weights.detach().numpy().astype(np.float64)
    sci = work / "train/sets/scifact-train"
    held_out = scifact_validation(list(read_run(sci / "candidates.trec")))
    domains = {
        "DL21": (read_topics(data / "msmarco-v2-dl21/queries.tsv"), read_run(data / "msmarco-v2-dl21/runs/bm25.top100.trec"),
                 read_qrels(data / "msmarco-v2-dl21/qrels.txt"), data / "msmarco-v2-dl21/corpus.jsonl"),
        "SciFact train held out": (topics["scifact-train"], {q: h for q, h in read_run(sci / "candidates.trec").items()
                                                             if q in held_out},
                                   read_qrels(sci / "qrels.txt"), data / "scifact/corpus.jsonl"),
    }
    inputs = []
    for number, (name, (domain_topics, run, qrels, corpus)) in enumerate(domains.items()):
        run = {q: hits[:100] for q, hits in run.items() if q in domain_topics}
        wanted = {d for hits in run.values() for d, _ in hits}
        passages = {doc.docid: doc.text for doc in read_corpus(corpus) if doc.docid in wanted}
        qids = [q for q in run if q in qrels]  # the order fit_channel_weights.packed saved
        texts_in_order = [domain_topics[q] for q in qids]
        if args.queries == "mpnet":
            queries = mpnet_vectors(texts_in_order)
            queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        else:
            queries = mapped(texts_in_order)
        docids = sorted(wanted)
        vectors = dict(zip(docids, mpnet_vectors([passages[d] for d in docids])))
        head, z, gains, ideal = (saved[f"{key}{number}"] for key in ("head", "z", "gains", "ideal"))
        channel = np.zeros_like(head)
        for i, (qid, query) in enumerate(zip(qids, queries)):
            docs = np.stack([vectors[d] for d, _ in run[qid]])
            channel[i, : len(docs)] = zscore(docs @ query)
        inputs.append((name, head + z @ shipped_weights, channel, gains, ideal))
    print(f"\nshipped model + w * z(cosine of {args.queries} query vectors with mpnet documents), nDCG@10:")
    print("| w | " + " | ".join(name for name, *_ in inputs) + " | mean |\n|---|" + "---|" * (len(inputs) + 1))
    for w in np.arange(0, 2.01, 0.2):
        per = [float(ndcg10(base + w * channel, gains, ideal).mean()) for _, base, channel, gains, ideal in inputs]
        print(f"| {w:.1f} | " + " | ".join(f"{v:.4f}" for v in per) + f" | {np.mean(per):.4f} |")


if __name__ == "__main__":
    main()
