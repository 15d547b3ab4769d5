"""Engines that encode the cache shards of an ``index`` build (``ray_engine``: an optional extra).

An engine is handed what it needs and nothing of the indexer: the shards to encode, their spans of a document
source (``data/sources.py``), and a factory of shard writers (``write(shard, texts)`` encodes and writes a shard).
"""

from collections.abc import Callable

ShardWriter = Callable[[int, list[str]], None]
"""Encodes one shard's document texts and writes its files."""
