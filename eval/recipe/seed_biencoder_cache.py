"""Fill the bi-encoder embedding cache from the stage-1 feature stores instead of encoding every text twice.

The packaged all-MiniLM-L6-v2 sentence-transformer is mean pooling over 256 tokens + L2 normalisation of the
same encoder the DiPair features come from; a document feature store read at 256 tokens holds exactly that mean
(a query store read at 32 tokens matches for queries shorter than 32 tokens, the only ones seeded). A sample is
checked against sentence-transformers before anything is written; the rest of the texts are left for the
fusion teacher to encode.

    python eval/recipe/seed_biencoder_cache.py --features eval/work/features --sets eval/work/train/sets \
        --cache eval/work/embeddings
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

import numpy as np

from dipair_rerank.model import DiPairConfig, DiPairModel
from dipair_rerank.train.features import _load, normalised_pooled, text_key
from dipair_rerank.train.sets import prepared_set_texts
from dipair_rerank.train.teachers.biencoder import PACKAGED_BIENCODER, EmbeddingCache, load_biencoder
from dipair_rerank.train.teachers.text_cache import text_hash

logger = logging.getLogger("seed_biencoder_cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default="eval/work/features")
    parser.add_argument("--sets", default="eval/work/train/sets")
    parser.add_argument("--cache", default="eval/work/embeddings")
    parser.add_argument("--check", type=int, default=48, help="texts compared with sentence-transformers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tokenizer = DiPairModel(DiPairConfig()).tokenizer
    queries, docs = prepared_set_texts(args.sets)
    short = [q for q in dict.fromkeys(queries) if len(tokenizer(q)["input_ids"]) < 32]
    sources = []
    for side, texts, max_length in (("query", short, 32), ("doc", list(dict.fromkeys(docs)), 256)):
        found = [p for p in Path(args.features).iterdir() if (p / "meta.json").is_file()
                 and json.loads((p / "meta.json").read_text())["side"] == side]
        meta = json.loads((found[0] / "meta.json").read_text())
        assert meta["max_length"] == max_length, meta
        store = _load(found[0], meta)
        vectors = normalised_pooled(store)
        texts = [t for t in texts if text_key(t) in store.row_of]
        sources.append((texts, vectors[[store.row_of[text_key(t)] for t in texts]]))
        logger.info("%s: %d texts seeded from %s", side, len(texts), found[0])
    model = load_biencoder()
    rng = random.Random(0)
    for texts, vectors in sources:
        sample = rng.sample(range(len(texts)), min(args.check, len(texts)))
        reference = model.encode([texts[i] for i in sample], normalize_embeddings=True, convert_to_numpy=True)
        agreement = float(np.min(np.sum(reference * vectors[sample], axis=1)))
        logger.info("min cosine to sentence-transformers on %d texts: %.6f", len(sample), agreement)
        if agreement < 0.9999:
            raise SystemExit(f"features do not reproduce the bi-encoder (min cosine {agreement:.6f})")
    cache = EmbeddingCache(Path(args.cache), PACKAGED_BIENCODER)
    for texts, vectors in sources:
        for text, vector in zip(texts, vectors, strict=True):
            cache.vectors.setdefault(text_hash(text), vector.astype(np.float32))
    cache.save()
    logger.info("cache now holds %d embeddings", len(cache.vectors))


if __name__ == "__main__":
    main()
