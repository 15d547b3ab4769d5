"""CorpusSource: a JSONL/irds corpus normalised once, then read by span from any offset."""

import pickle

import pytest

from dipair_rerank.data import sources
from dipair_rerank.data.corpus import read_corpus
from dipair_rerank.data.sources import CorpusSource, shard_spans
from dipair_rerank.errors import DiPairError
from tests.conftest import TINY_DOCS, write_jsonl


def test_spans_read_the_corpus_in_order_from_any_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "STRIDE", 5)  # spans start inside, at and across offset checkpoints
    corpus = write_jsonl(tmp_path / "c.jsonl", TINY_DOCS)
    source = CorpusSource(corpus)
    source.prepare(tmp_path / "work.jsonl", progress=False)
    assert source.count() == len(TINY_DOCS)
    expected = [(d.docid, d.text) for d in read_corpus(corpus)]
    for start in range(len(TINY_DOCS) + 1):
        for stop in range(start, len(TINY_DOCS) + 2):
            assert source.read(start, stop) == expected[start:stop]
    assert pickle.loads(pickle.dumps(source)).read(3, 9) == expected[3:9]  # what a Ray actor receives
    assert source.fingerprint() == CorpusSource(corpus).fingerprint()


def test_prepare_keeps_a_finished_working_copy(tmp_path):
    """A resumed build reuses the normalised copy instead of re-reading the corpus."""
    corpus = write_jsonl(tmp_path / "c.jsonl", TINY_DOCS)
    work = tmp_path / "work.jsonl"
    CorpusSource(corpus).prepare(work, progress=False)
    corpus.write_text("not read again")
    source = CorpusSource(corpus)
    source.prepare(work, progress=False)
    assert source.read(0, 1) == [TINY_DOCS[0]]


def test_a_bad_corpus_fails_in_prepare(tmp_path):
    with pytest.raises(DiPairError, match="duplicate docid 'a'"):
        CorpusSource(write_jsonl(tmp_path / "c.jsonl", [("a", "x"), ("a", "y")])).prepare(tmp_path / "w.jsonl")
    assert not (tmp_path / "w.jsonl").exists()


def test_shard_spans():
    assert shard_spans(12, 5) == [(0, 5), (5, 10), (10, 12)]
    assert shard_spans(10, 5) == [(0, 5), (5, 10)]
    assert shard_spans(0, 5) == []
