"""The DiPair prefix cache: projected document prefixes [N, slots, d_p] in fp16 shards, memory-mapped."""

from dipair_rerank.cache.docids import DocidLookup
from dipair_rerank.cache.reader import PrefixCache
from dipair_rerank.cache.writer import CacheWriter

__all__ = ["CacheWriter", "DocidLookup", "PrefixCache"]
