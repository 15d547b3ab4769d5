"""Plain texts that are in no index: the document branch encodes them on the fly, then the usual head scores them.

Texts go through ``encoding.encode_documents``, the indexer's own code (length-sorted batches, fp16 rows), so a
text scores as it does from an index built with the fp16 codec (lossy codecs, int8 and pq, differ by their
quantisation error).

``DiPairModel.rank`` is built on these functions, so they take the model as an argument and import nothing of
``dipair_rerank.model`` at run time (its types only for annotations): the model package depends on this module, not
the other way round.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

from dipair_rerank.encoding import encode_documents
from dipair_rerank.errors import DiPairError

if TYPE_CHECKING:
    from dipair_rerank.model import DiPairModel
    from dipair_rerank.model.lexical import TermWeights

logger = logging.getLogger(__name__)

_truncation_reported = False


class RankedText(NamedTuple):
    """A ranked text: its position in the caller's list, its score, and the text."""

    index: int
    score: float
    text: str


def check_texts(texts: Iterable[str]) -> list[str]:
    """``texts`` as a list, refusing what would rank nothing or the wrong thing (one string, non-strings)."""
    if isinstance(texts, (str, bytes)):
        raise DiPairError("texts must be a list of strings, not one string")
    texts = list(texts)
    if not texts:
        raise DiPairError("no texts to rank: give at least one")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise DiPairError(f"texts[{position}] is a {type(text).__name__}, not a string")
    return texts


def text_inputs(model: DiPairModel, texts: Sequence[str], *, batch_size: int = 32
                ) -> tuple[torch.Tensor, torch.Tensor, list[TermWeights] | None]:
    """Head inputs for ``texts`` — the blocks and masks a cache gather would return for them — and their lexical
    terms (None for a model without a lexical channel)."""
    encoded = encode_documents(model, texts, batch_size=batch_size)
    if encoded.truncated:
        _report_truncation(encoded.truncated, len(texts), model.config.doc_max_length)
    return (*model.document_blocks(encoded.vectors, encoded.lengths), encoded.lexical)


def text_blocks(model: DiPairModel, texts: Sequence[str], *, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The blocks and masks of ``text_inputs``."""
    return text_inputs(model, texts, batch_size=batch_size)[:2]


def rank_texts(texts: Sequence[str], scores: Sequence[float], k: int | None = None) -> list[RankedText]:
    """Best first; ties by position, so equal texts keep the caller's order."""
    ranked = sorted((RankedText(i, float(s), t) for i, (t, s) in enumerate(zip(texts, scores))),
                    key=lambda r: (-r.score, r.index))
    return ranked[:k] if k is not None else ranked


def _report_truncation(count: int, total: int, max_length: int) -> None:
    """Say it once per process: a service would otherwise log it on every request."""
    global _truncation_reported
    if not _truncation_reported:
        _truncation_reported = True
        logger.warning("%d of %d texts are longer than the model's %d document tokens and were truncated, as the "
                       "indexer truncates them (said once)", count, total, max_length)
