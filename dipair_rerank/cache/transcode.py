"""Re-store an existing cache with another codec, without re-encoding a single document."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dipair_rerank.cache.reader import PrefixCache
from dipair_rerank.cache.writer import CacheWriter


def row_docids(cache: PrefixCache) -> list[str]:
    """docids in row order (inverting the sorted lookup)."""
    docids = np.empty(len(cache), dtype=object)
    docids[np.asarray(cache.docids.rows)] = [bytes(d).decode("utf-8") for d in cache.docids.sorted]
    return docids.tolist()


def transcode(source: str | Path, target: str | Path, codec: str, codec_params: dict | None = None) -> PrefixCache:
    """Write ``source``'s rows into ``target`` with ``codec`` (trained on the first shard, as at index time)."""
    cache = PrefixCache(source)
    writer = CacheWriter(Path(target), model_fingerprint=cache.model_fingerprint,
                         model_config=cache.meta.get("model_config", {}), slots=cache.slots, dim=cache.dim,
                         shard_rows=cache.shard_rows, codec_name=codec, codec_params=codec_params or {})
    for index, (vectors, lengths) in enumerate(zip(cache.vectors, cache.lengths)):
        writer.write_shard(index, cache.codec.decode(np.asarray(vectors)).astype(np.float16), np.asarray(lengths),
                           cache.lexical_rows(index) if cache.has_lexical else None)  # terms carried as they are
    writer.finish(row_docids(cache))
    (Path(target) / "transcoded_from.json").write_text(json.dumps({"source": str(source)}) + "\n")
    return PrefixCache(target)
