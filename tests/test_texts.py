"""Plain texts (issue 12, item 3): ``rerank_texts`` and ``DiPairModel.from_pretrained(...).rank`` score a text as
the cached path scores the same text (fp16 cache: equal up to fp16 rounding)."""

import logging

import pytest

from dipair_rerank import texts as texts_module
from dipair_rerank.errors import DiPairError
from dipair_rerank.model import DiPairModel
from dipair_rerank.rerank import DiPairReranker
from dipair_rerank.texts import RankedText
from tests.conftest import TINY_DOCS

DOCIDS = [d for d, _ in TINY_DOCS]
TEXTS = [t for _, t in TINY_DOCS]
QUERIES = ["quantum qubits and pets", "interest rates", "x"]


@pytest.fixture(scope="module")
def reranker(tiny_index):
    return DiPairReranker.from_index(tiny_index, query_backend="torch")


@pytest.mark.parametrize("query", QUERIES)
def test_texts_score_as_the_cached_documents(reranker, query):
    cached = {hit.docid: hit.score for hit in reranker.rerank(query, DOCIDS)}
    ranked = reranker.rerank_texts(query, TEXTS)
    assert sorted(r.index for r in ranked) == list(range(len(TEXTS)))
    assert all(isinstance(r, RankedText) and r.text == TEXTS[r.index] for r in ranked)
    for r in ranked:
        assert r.score == pytest.approx(cached[DOCIDS[r.index]], rel=1e-3, abs=1e-3)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)


def test_model_rank_equals_the_reranker_and_keeps_k(reranker, tiny_model_dir):
    model = DiPairModel.from_pretrained(tiny_model_dir)
    assert model.fingerprint() == reranker.model.fingerprint()
    got = model.rank("plants light", TEXTS, k=3)
    expected = reranker.rerank_texts("plants light", TEXTS, k=3)
    assert [r.index for r in got] == [r.index for r in expected] and len(got) == 3
    assert [r.score for r in got] == pytest.approx([r.score for r in expected], abs=1e-5)


def test_several_queries_in_one_call_equal_one_at_a_time(reranker):
    groups = [TEXTS[:5], TEXTS[3:], ["a lone text"]]
    batched = reranker.score_texts(QUERIES, groups, batch_size=4)
    for query, group, scores in zip(QUERIES, groups, batched):
        single = sorted(reranker.rerank_texts(query, group), key=lambda r: r.index)
        assert scores == pytest.approx([r.score for r in single], abs=1e-4)


def test_duplicate_texts_keep_their_order(reranker):
    ranked = reranker.rerank_texts("pets", ["same text", "same text"])
    assert [r.index for r in ranked] == [0, 1] and ranked[0].score == pytest.approx(ranked[1].score, abs=1e-5)


def test_default_model_loads_by_none_and_by_name():
    model = DiPairModel.from_pretrained()
    assert DiPairModel.from_pretrained("default").fingerprint() == model.fingerprint()
    ranked = model.rank("what is a qubit", ["Bananas are yellow fruit.", "A qubit is a unit of quantum information."])
    assert ranked[0].index == 1


@pytest.mark.parametrize("bad, message", [
    ([], "no texts to rank"),
    ("one string", "a list of strings, not one string"),
    (["fine", 3], r"texts\[1\] is a int, not a string"),
])
def test_bad_texts_fail_in_one_line(reranker, bad, message):
    with pytest.raises(DiPairError, match=message):
        reranker.rerank_texts("q", bad)


def test_long_texts_are_truncated_and_said_once(reranker, monkeypatch, caplog):
    monkeypatch.setattr(texts_module, "_truncation_reported", False)
    long_text = " ".join(TEXTS)  # far over the tiny model's 32 document tokens
    with caplog.at_level(logging.WARNING, logger="dipair_rerank.texts"):
        first = reranker.rerank_texts("pets", [long_text, "short"])
        reranker.rerank_texts("pets", [long_text])
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 2 texts" in warnings[0].getMessage()
    assert {r.index for r in first} == {0, 1}
