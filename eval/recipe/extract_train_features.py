"""Frozen-encoder features of every training query and candidate document (stage-1 inputs), computed before
the teacher so the bi-encoder cache can be seeded from them (eval/recipe/seed_biencoder_cache.py).

    python eval/recipe/extract_train_features.py --sets eval/work/train/sets --features eval/work/features

Keeps m <= 16 query and n <= 32 document vectors: enough for the default model and every ablation row.
``--doc-input-layer 5`` also stores every document token's input to the top layer (~5.5 GB for the ~28k
training passages): what a model with a trained document top layer (``--set doc_tuned_layer=true``) trains on.
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
    parser.add_argument("--doc-input-layer", type=int, default=None,
                        help="also store the documents' hidden states entering this encoder layer (all tokens)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    model = DiPairModel(DiPairConfig())  # the packaged encoder, as every default-shaped model reads it
    queries, docs = prepared_set_texts(args.sets)
    features = Path(args.features)
    extract_features(model, queries, features / "query-L32-k16", side="query", keep=16)
    extract_features(model, docs, features / "doc-L256-k32", side="doc", keep=32)
    if args.doc_input_layer is not None:
        length = model.config.doc_max_length
        extract_features(model, docs, features / f"doc-L{length}-in{args.doc_input_layer}", side="doc",
                         keep=length, layer=args.doc_input_layer)


if __name__ == "__main__":
    main()
