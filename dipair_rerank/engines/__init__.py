"""Engines that encode the cache shards of an ``index`` build (``ray_engine``) or search parts of a topic set
(``ray_search``); Ray is an optional extra.

An index engine is handed what it needs and nothing of the indexer: the shards to encode, their spans of a document
source (``data/sources.py``), and a factory of shard writers (``write(shard, texts)`` encodes and writes a shard).
A search engine is handed parts of topics and yields their results (``search_parts.Engine``).
"""

from collections.abc import Callable

ShardWriter = Callable[[int, list[str]], None]
"""Encodes one shard's document texts and writes its files."""
