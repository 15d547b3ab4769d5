"""Probe: does the head do better when the n document positions it reads are chosen by importance instead of
being the first n? Measured on validation data only, by retraining the shipped recipe's head on reordered features.

The stored stage-1 document features keep each passage's first 32 MiniLM output vectors
(``eval/recipe/extract_train_features.py``). This probe writes a copy whose slots are reordered so that the
[CLS] vector comes first, then the ``n - 1`` positions whose tokens carry the highest importance (in position
order; one position per distinct token), then the rest: a model with ``doc_prefix = n`` then reads the chosen
positions. Importance, per ``--importance``:

- ``lexical``: the token's weight in the passage's SPLADE-tiny vector (the lexical channel the index stores);
- ``idf``: the token's inverse document frequency over the training passages.

Choosing among the first 32 positions only is a lower bound of the lever (an index would choose among all 256).
Then the recipe trains on the copy (the query tower frozen, stopping before the refit), and ``--compare`` prints
each run's best epoch, the first run named being the baseline (the same recipe on the first 8 positions):

    python eval/probes/important_positions.py --importance lexical --output eval/work/features-lexical
    NAME=channels ENCODER_LR=0 SHIP=0 FIT=0 bash eval/recipe/train_default.sh       # the baseline
    FEATURES=eval/work/features-lexical NAME=important-lexical ENCODER_LR=0 SHIP=0 FIT=0 \
        bash eval/recipe/train_default.sh
    python eval/probes/important_positions.py --compare channels important-lexical important-idf
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from dipair_rerank.train.features import META_NAME, text_key
from dipair_rerank.train.sets import prepared_set_texts
from dipair_rerank.train.teachers.splade import SparseCache

logger = logging.getLogger("important_positions")
DOC_STORE = "doc-L256-k32"


def chosen_order(token_ids: list[int], weight: dict[int, float], keep: int, length: int) -> np.ndarray:
    """Slot order for one passage: [CLS], then the ``keep - 1`` most important positions (one per distinct token,
    in position order), then every other slot in position order."""
    best: dict[int, int] = {}
    for position in range(1, min(length, len(token_ids))):
        token = token_ids[position]
        if weight.get(token, 0.0) > 0 and token not in best:
            best[token] = position
    ranked = sorted(best.values(), key=lambda p: -weight[token_ids[p]])[: keep - 1]
    chosen = [0] + sorted(ranked)
    taken = set(chosen)
    return np.asarray(chosen + [p for p in range(length) if p not in taken])


def compare(runs: list[str], train_dir: Path) -> None:
    """Each training run's best epoch (validation nDCG@10 and teacher agreement)."""
    print("| run | best epoch | macro val nDCG@10 | SciFact train (held out) | title pseudo-queries | DL21 | "
          "teacher agreement |\n|---|---:|---:|---:|---:|---:|---:|")
    for name in runs:
        history = json.loads((train_dir / name / "stage1-history.json").read_text())["history"]
        best = max(history, key=lambda e: e["val_ndcg10"])
        print(f"| {name} | {best['epoch']} | {best['val_ndcg10']:.4f} | "
              + " | ".join(f"{best[f'val_ndcg10[{i}]']:.4f}" for i in range(3))
              + f" | {best['val_teacher_ndcg10']:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--importance", choices=("lexical", "idf"))
    parser.add_argument("--output", help="the reordered feature store's root (queries linked)")
    parser.add_argument("--compare", nargs="+", metavar="RUN",
                        help="training runs under --train-dir to compare, the baseline first")
    parser.add_argument("--train-dir", default="eval/work/train")
    parser.add_argument("--features", default="eval/work/features")
    parser.add_argument("--sets", default="eval/work/train/sets")
    parser.add_argument("--splade-cache", default="eval/work/embeddings/splade-2b180b2f0020.npz",
                        help="the teacher's SPLADE-tiny vectors of the training passages (its scores step)")
    parser.add_argument("--keep", type=int, default=8, help="the model's doc_prefix")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.compare:
        compare(args.compare, Path(args.train_dir))
        return
    if not (args.importance and args.output):
        parser.error("--importance and --output (or --compare)")
    source, output = Path(args.features), Path(args.output)
    tokenizer = AutoTokenizer.from_pretrained("dipair_rerank/model/shipped/tokenizer")
    _, docs = prepared_set_texts(args.sets)
    texts = {text_key(t): t for t in docs}
    ids = {key: tokenizer(text, truncation=True, max_length=32)["input_ids"] for key, text in
           tqdm(texts.items(), desc="tokens", unit="text")}
    if args.importance == "idf":
        df = Counter(token for key in texts for token in
                     set(tokenizer(texts[key], truncation=True, max_length=256)["input_ids"]))
        idf = {token: math.log(len(texts) / count) for token, count in df.items()}
        weights = {key: idf for key in texts}
    else:
        path = Path(args.splade_cache)
        rows = SparseCache(path.parent, path.stem.removeprefix("splade-"), vocab_size=tokenizer.vocab_size).rows
        weights = {}
        for key in texts:
            if key[:16] not in rows:
                raise SystemExit(f"no SPLADE-tiny vector cached for {key}: run the recipe's teacher step first")
            indices, values = rows[key[:16]]
            weights[key] = dict(zip(indices.tolist(), values.tolist()))
    (output / DOC_STORE).mkdir(parents=True, exist_ok=True)
    shutil.copy(source / DOC_STORE / META_NAME, output / DOC_STORE / META_NAME)
    for query_store in source.glob("query-*"):
        link = output / query_store.name
        if not link.exists():
            link.symlink_to(query_store.resolve())
    moved = []
    for chunk in tqdm(sorted((source / DOC_STORE).glob("chunk-*.npz")), desc="chunks"):
        with np.load(chunk) as data:
            keys, prefix, mask, pooled = data["keys"], data["prefix"], data["mask"], data["pooled"]
        for row, key in enumerate(keys):
            order = chosen_order(ids[str(key)], weights[str(key)], args.keep, prefix.shape[1])
            prefix[row], mask[row] = prefix[row][order], mask[row][order]
            moved.append(float(np.mean(order[1: args.keep] != np.arange(1, args.keep))))
        np.savez(output / DOC_STORE / chunk.name, keys=keys, prefix=prefix, mask=mask, pooled=pooled)
    logger.info("%d passages; share of slots 1..%d that moved: %.3f", len(moved), args.keep - 1, np.mean(moved))
    (output / "probe.json").write_text(json.dumps({"importance": args.importance, "keep": args.keep}) + "\n")


if __name__ == "__main__":
    main()
