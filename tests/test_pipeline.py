import pytest

from dipair_rerank.errors import DiPairError
from dipair_rerank.pipeline import DiPairSearcher
from tests.conftest import TINY_TOPICS


@pytest.mark.parametrize("first_stage", ["bm25", "dense"])
def test_search_and_batch_search_agree(tiny_index, first_stage):
    searcher = DiPairSearcher.from_index(tiny_index, first_stage=first_stage, depth=5)
    qids, queries = list(TINY_TOPICS), list(TINY_TOPICS.values())
    batched = searcher.batch_search(queries, qids, k=8, threads=2, batch_size=3)
    for qid, query in zip(qids, queries):
        single = searcher.search(query, k=8, qid=qid)
        assert [h.docid for h in single] == [h.docid for h in batched[qid]]
        scores = [h.score for h in single]
        assert scores == sorted(scores, reverse=True)
        assert len(single) <= 8


def test_bm25_hits_beyond_depth_follow_in_first_stage_order(tiny_index):
    from dipair_rerank.first_stage import BM25FirstStage

    bm25 = BM25FirstStage(tiny_index / "lucene").retrieve(["q"], ["quantum qubits plants light"], 10)[0]
    searcher = DiPairSearcher.from_index(tiny_index, depth=2)
    hits = searcher.search("quantum qubits plants light", k=10)
    assert {h.docid for h in hits[:2]} == {c.docid for c in bm25[:2]}
    assert [h.docid for h in hits[2:]] == [c.docid for c in bm25[2:]]


def test_run_file_candidates(tiny_index, tmp_path):
    run = tmp_path / "cands.trec"
    run.write_text("q1 Q0 d2 1 3.0 x\nq1 Q0 d5 2 2.0 x\nq1 Q0 d6 3 1.0 x\n")
    searcher = DiPairSearcher.from_index(tiny_index, candidates=run, depth=100)
    hits = searcher.search("quantum qubits", k=10, qid="q1")
    assert sorted(h.docid for h in hits) == ["d2", "d5", "d6"]
    assert searcher.search("anything", qid="absent") == []


def test_dense_needs_a_dense_index(tiny_index, tmp_path):
    import shutil

    copy = tmp_path / "nodense"
    shutil.copytree(tiny_index, copy)
    shutil.rmtree(copy / "faiss")
    with pytest.raises(DiPairError, match="has no dense index"):
        DiPairSearcher.from_index(copy, first_stage="dense")
