"""PyTerrier (issue 12, item 2): DiPairReRanker in a ``>>`` pipeline scores as DiPairReranker.rerank does, and
runs inside pt.Experiment."""

from __future__ import annotations

from pathlib import Path

import pytest

pt = pytest.importorskip("pyterrier", reason="PyTerrier not installed: pip install 'dipair-rerank[pyterrier]'")
import pandas as pd  # noqa: E402  (after the skip: pandas comes with PyTerrier)

from dipair_rerank.errors import DiPairError  # noqa: E402
from dipair_rerank.first_stage import BM25FirstStage  # noqa: E402
from dipair_rerank.pyterrier import DiPairReRanker, FrameError  # noqa: E402
from dipair_rerank.rerank import DiPairReranker  # noqa: E402
from tests.conftest import TINY_DOCS, TINY_TOPICS  # noqa: E402

TEXT = dict(TINY_DOCS)


def topics_frame(topics: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"qid": list(topics), "query": list(topics.values())})


def bm25_frame(lucene_dir: Path, topics: dict[str, str], k: int) -> pd.DataFrame:
    """A BM25 run as a PyTerrier result frame (ranks from pt.model.FIRST_RANK), to feed pt.Transformer.from_df."""
    hits = BM25FirstStage(lucene_dir).retrieve(list(topics), list(topics.values()), k, threads=2)
    rows = [(qid, hit.docid, hit.score, rank) for qid, candidates in zip(topics, hits)
            for rank, hit in enumerate(candidates, start=pt.model.FIRST_RANK)]
    return pd.DataFrame(rows, columns=["qid", "docno", "score", "rank"])


@pytest.fixture(scope="module")
def reranker(tiny_index) -> DiPairReranker:
    return DiPairReranker.from_index(tiny_index, query_backend="torch")


@pytest.fixture(scope="module")
def first_stage(tiny_index) -> pt.Transformer:
    return pt.Transformer.from_df(bm25_frame(tiny_index / "lucene", TINY_TOPICS, k=10))


def test_pipeline_scores_as_rerank(tiny_index, reranker, first_stage):
    depth = 5
    out = ((first_stage % depth) >> DiPairReRanker(tiny_index, query_backend="torch")).transform(
        topics_frame(TINY_TOPICS))
    assert list(out.columns[:3]) == ["qid", "query", "docno"] and {"score", "rank"} <= set(out.columns)
    bm25 = first_stage.transform(topics_frame(TINY_TOPICS))
    for qid, query in TINY_TOPICS.items():
        got = out[out["qid"] == qid]
        candidates = bm25[(bm25["qid"] == qid) & (bm25["rank"] < depth)]["docno"].tolist()
        expected = reranker.rerank(query, candidates)
        assert got["docno"].tolist() == [h.docid for h in expected]
        assert got["score"].tolist() == pytest.approx([h.score for h in expected], abs=1e-5)
        assert got["rank"].tolist() == list(range(pt.model.FIRST_RANK, pt.model.FIRST_RANK + len(expected)))
    assert out["qid"].drop_duplicates().tolist() == list(TINY_TOPICS)  # queries stay in input order


def test_takes_an_open_reranker_and_an_empty_frame(reranker):
    ranker = DiPairReRanker(reranker)
    empty = ranker.transform(pd.DataFrame(columns=["qid", "query", "docno", "score", "rank"]))
    assert empty.empty and {"score", "rank"} <= set(empty.columns)
    assert pt.inspect.transformer_inputs(ranker) == [["qid", "docno", "query"]]


@pytest.mark.parametrize("drop", ["query", "docno"])
def test_a_frame_without_query_or_docno_is_one_clear_line(reranker, drop):
    frame = pd.DataFrame({"qid": ["q1"], "query": ["pets"], "docno": ["d1"]}).drop(columns=[drop])
    with pytest.raises(FrameError, match=f"lacks {drop} ") as caught:
        DiPairReRanker(reranker).transform(frame)
    assert isinstance(caught.value, DiPairError) and "\n" not in str(caught.value)


def test_unknown_docnos_need_allow_text(reranker):
    frame = pd.DataFrame({"qid": "q1", "query": "pets", "docno": ["d1", "new1", "new2"], "text": "cats"})
    with pytest.raises(DiPairError, match=r"2 docno\(s\) not in the index .*: new1, new2 \(.*allow_text=True"):
        DiPairReRanker(reranker).transform(frame)


def test_allow_text_scores_uncached_docnos_from_their_text(reranker):
    """A docno outside the cache scores from its text as the cached document with that text does."""
    frame = pd.DataFrame({
        "qid": ["q1", "q1", "q1", "q2", "q2", "q3"],
        "query": ["quantum qubits"] * 3 + ["pet cats and dogs"] * 2 + ["inflation"],
        "docno": ["d2", "copy-of-d6", "d1", "copy-of-d3", "d9", "d10"],
        "text": [None, TEXT["d6"], None, TEXT["d3"], None, None],
    })
    out = DiPairReRanker(reranker, allow_text=True).transform(frame)
    cached = {(qid, hit.docid): hit.score for qid, query, docs in [("q1", "quantum qubits", ["d2", "d6", "d1"]),
                                                                   ("q2", "pet cats and dogs", ["d3", "d9"]),
                                                                   ("q3", "inflation", ["d10"])]
              for hit in reranker.rerank(query, docs)}
    for qid, docno, score in out[["qid", "docno", "score"]].itertuples(index=False):
        assert score == pytest.approx(cached[qid, docno.removeprefix("copy-of-")], rel=1e-3, abs=1e-3)
    assert len(out) == len(frame)


def test_allow_text_needs_a_text_for_each_uncached_docno(reranker):
    frame = pd.DataFrame({"qid": "q1", "query": "pets", "docno": ["d1", "new1"]})
    with pytest.raises(FrameError, match="lacks text "):
        DiPairReRanker(reranker, allow_text=True).transform(frame)
    with pytest.raises(DiPairError, match="neither in the index nor with a text: new1"):
        DiPairReRanker(reranker, allow_text=True).transform(frame.assign(text=["a text", None]))


@pytest.mark.integration
def test_experiment_on_cranfield(shared_data, tiny_model_dir, tmp_path):
    """pt.Experiment over Cranfield (225 queries x 100 candidates, one head call): BM25 against BM25 >> DiPair with
    nDCG@10 and mean response time; DiPair's nDCG@10 is that of DiPairReranker.rerank_batch's run."""
    from dipair_rerank.data import read_qrels, read_topics
    from dipair_rerank.evaluate import evaluate
    from dipair_rerank.indexer import IndexOptions, build_index

    cran = shared_data / "cranfield"
    index = build_index(cran / "corpus.jsonl", tmp_path / "cranfield", model=tiny_model_dir,
                        options=IndexOptions(shard_rows=512, threads=2, progress=False))
    topics, qrels = read_topics(cran / "queries.tsv"), read_qrels(cran / "qrels.txt")
    run = bm25_frame(index.lucene, topics, k=100)
    bm25, dipair = pt.Transformer.from_df(run), DiPairReRanker(index.root, threads=2)
    table = pt.Experiment([bm25, (bm25 % 100) >> dipair], topics_frame(topics),
                          pd.DataFrame([(qid, docno, label) for qid, labels in qrels.items()
                                        for docno, label in labels.items()], columns=["qid", "docno", "label"]),
                          [pt.measures.nDCG @ 10, "mrt"], names=["BM25", "DiPair"]).set_index("name")
    reranked = dipair.reranker.rerank_batch(list(topics.values()), [run[run["qid"] == qid]["docno"] for qid in topics])
    reference = evaluate(qrels, {qid: list(hits) for qid, hits in zip(topics, reranked)}, "nDCG@10")[0].value
    assert 0.25 < table.loc["BM25", "nDCG@10"] < 0.45, table  # Cranfield BM25 nDCG@10 is ~0.34
    assert table.loc["DiPair", "nDCG@10"] == pytest.approx(reference, abs=1e-6), table
    assert table.loc["DiPair", "mrt"] > 0, table
