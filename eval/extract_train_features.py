"""Frozen-encoder features of every training query and candidate document (stage-1 inputs), computed before
the teacher so the bi-encoder cache can be seeded from them (eval/seed_biencoder_cache.py).

    python eval/extract_train_features.py --sets eval/work/train/sets --features eval/work/features

Keeps m <= 16 query and n <= 32 document vectors: enough for the default model and every ablation row.
Resumable (chunks), and ``dipair-rerank train --cached-stage1 --features ...`` finds them already there.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from dipair_rerank.model import DiPairConfig, DiPairModel
from dipair_rerank.train.features import extract_features
from dipair_rerank.train.sets import prepared_set_texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="eval/work/train/sets")
    parser.add_argument("--features", default="eval/work/features")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    model = DiPairModel(DiPairConfig())  # the packaged encoder, as every default-shaped model reads it
    queries, docs = prepared_set_texts(args.sets)
    features = Path(args.features)
    extract_features(model, queries, features / "query-L32-k16", side="query", keep=16)
    extract_features(model, docs, features / "doc-L256-k32", side="doc", keep=32)


if __name__ == "__main__":
    main()
