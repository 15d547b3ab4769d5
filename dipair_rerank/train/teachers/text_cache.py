"""Names of texts in the scorers' caches (embeddings, SPLADE vectors): each text is encoded once across runs."""

from __future__ import annotations

import hashlib


def text_hash(text: str) -> str:
    """sha256 of the text, 16 hex digits: the key of its cached vector."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


__all__ = ["text_hash"]
