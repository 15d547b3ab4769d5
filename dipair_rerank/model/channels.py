"""Channels: cheap scores added to the head's output with weights trained beside the head.

    score = head(query prefix, document prefix) + sum over channels c of weight_c * z_c

Why: the cheap scorers DiPair is made of — the first stage's own score, a stored lexical (SPLADE) vector per
document, the cosine of the pooled vectors already in the cache — fused with fixed weights and no head beat a
head that had to re-learn them through a few frozen prefix vectors. Given as inputs, the head learns only what
they miss. Each channel is z-scored over one query's candidates (scorers on different scales become comparable,
as in the fusion teacher); a channel a caller cannot give (no first-stage score for plain texts) is 0, i.e. the
query's mean, and the model is trained with it dropped now and then so that this is a supported input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FIRST_STAGE = "first_stage"
LEXICAL = "lexical"
COSINE = "cosine"
CHANNELS = (FIRST_STAGE, LEXICAL, COSINE)


def check_channels(channels: Sequence[str]) -> None:
    from dipair_rerank.errors import DiPairError

    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or len(set(channels)) != len(channels):
        raise DiPairError(f"channels {list(channels)}: each at most once, from {', '.join(CHANNELS)}")


def zscore_groups(values: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Per-query z-scores of ``values`` [sum(counts)] (float64 math); NaN (missing) and a query whose values are
    all equal give 0."""
    out = np.zeros(len(values), np.float32)
    start = 0
    for count in counts:
        part = np.asarray(values[start : start + count], np.float64)
        if count > 1 and np.isfinite(part).all():
            std = part.std()
            if std > 0:
                out[start : start + count] = (part - part.mean()) / std
        start += count
    return out




def channel_inputs(channels: Sequence[str], counts: Sequence[int], values: dict[str, np.ndarray | None]
                   ) -> np.ndarray:
    """The channels' z-scores [sum(counts), len(channels)] from each channel's raw values (None: missing)."""
    total = int(sum(counts))
    columns = [zscore_groups(values[name], counts) if values.get(name) is not None else np.zeros(total, np.float32)
               for name in channels]
    return np.stack(columns, axis=1) if columns else np.zeros((total, 0), np.float32)


__all__ = ["CHANNELS", "COSINE", "FIRST_STAGE", "LEXICAL", "channel_inputs", "check_channels", "zscore_groups"]
