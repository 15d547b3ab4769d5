"""Pseudo-queries cut from documents, for collections with few real queries.

Independent cropping, as Contriever trains without queries: a short span of one sentence of a document becomes a
query. Retrieved against the collection it came from, such a query finds the documents of its own topic, the near
misses a first stage's top 100 is made of, and a teacher labels them. The source document is not marked relevant
(the span matches it word for word, which would teach copying, not relevance).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

# Lucene's English stop words: a crop does not start or end on one.
STOP_WORDS = frozenset("a an and are as at be but by for if in into is it no not of on or such that the their then "
                       "there these they this to was will with".split())

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[\w'-]+")


def cropped_queries(documents: Iterable[tuple[str, str]], count: int, *, seed: int = 0, shortest: int = 3,
                    longest: int = 8, attempts: int = 5) -> dict[str, str]:
    """Up to ``count`` pseudo-queries ``{"crop-<docid>": text}`` from as many documents drawn at random.

    Each is a random span of ``shortest``..``longest`` words of one random sentence, lower-cased, trimmed of stop
    words at both ends and holding at least two other words; a document gets ``attempts`` tries. The same
    documents and seed give the same queries.
    """
    documents = list(documents)
    rng = random.Random(seed)
    queries: dict[str, str] = {}
    for docid, text in rng.sample(documents, min(count, len(documents))):
        sentences = [words for sentence in _SENTENCE_END.split(text)
                     if len(words := _WORD.findall(sentence.lower())) >= shortest]
        for _ in range(attempts if sentences else 0):
            words = rng.choice(sentences)
            length = rng.randint(shortest, min(longest, len(words)))
            start = rng.randint(0, len(words) - length)
            span = words[start : start + length]
            while span and span[0] in STOP_WORDS:
                span = span[1:]
            while span and span[-1] in STOP_WORDS:
                span = span[:-1]
            if len(span) >= shortest and sum(word not in STOP_WORDS for word in span) >= 2:
                queries[f"crop-{docid}"] = " ".join(span)
                break
    return queries


__all__ = ["STOP_WORDS", "cropped_queries"]
