from dipair_rerank.first_stage import BM25FirstStage


def test_bm25_finds_the_matching_documents(tiny_index):
    (hits,) = BM25FirstStage(tiny_index / "lucene").retrieve(["q"], ["qubit"], 3)
    assert hits[0].docid in {"d2", "d6"} and hits[0].score > 0


def test_bm25_batch_and_empty_query(tiny_index):
    bm25 = BM25FirstStage(tiny_index / "lucene")
    hits = bm25.retrieve(["a", "b"], ["qubit", "inflation"], 2, threads=2)
    assert len(hits) == 2 and hits[1][0].docid in {"d7", "d10"}
    assert bm25.retrieve(["e"], ["   "], 5) == [[]]
