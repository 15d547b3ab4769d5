"""dipair-rerank: DiPair re-ranking (Chen et al., Findings of EMNLP 2020) over Pyserini first stages.

    from dipair_rerank import DiPairReranker, DiPairSearcher
    reranker = DiPairReranker.from_index("indexes/scifact")
    searcher = DiPairSearcher.from_index("indexes/scifact", first_stage="bm25", depth=100)

Submodules import torch, transformers and pyserini; they load on first attribute access so that
``import dipair_rerank`` (and ``dipair-rerank --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DiPairConfig": "dipair_rerank.model",
    "DiPairModel": "dipair_rerank.model",
    "load_model": "dipair_rerank.model",
    "DiPairReranker": "dipair_rerank.rerank",
    "RankedHit": "dipair_rerank.rerank",
    "RankedText": "dipair_rerank.texts",
    "DiPairSearcher": "dipair_rerank.pipeline",
    "IndexOptions": "dipair_rerank.indexer",
    "build_index": "dipair_rerank.indexer",
    "DiPairError": "dipair_rerank.errors",
    "ensure_jvm": "dipair_rerank._java",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from dipair_rerank._java import ensure_jvm
    from dipair_rerank.errors import DiPairError
    from dipair_rerank.indexer import IndexOptions, build_index
    from dipair_rerank.model import DiPairConfig, DiPairModel, load_model
    from dipair_rerank.pipeline import DiPairSearcher
    from dipair_rerank.rerank import DiPairReranker, RankedHit
    from dipair_rerank.texts import RankedText


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dipair_rerank' has no attribute {name!r}")
