"""SPLADE scorer: max-pooled log(1 + relu(MLM logits)) vectors, dot-product scores, per-text cache, fusion spec."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dipair_rerank.train.teachers.fusion import parse_scorers, scorer_runs
from dipair_rerank.train.teachers.splade import SpladeEncoder, splade_scores
from tests.conftest import TINY_DOCS, TINY_TOPICS


def _reference_vector(path: Path, text: str) -> np.ndarray:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(path)([text], return_tensors="pt")
    with torch.no_grad():
        logits = AutoModelForMaskedLM.from_pretrained(path)(**tokens).logits[0]
    return torch.log1p(torch.relu(logits)).amax(0).numpy()


def test_splade_scores_are_dot_products_and_cached(tiny_splade, tmp_path, monkeypatch):
    docs = dict(TINY_DOCS)
    candidates = {q: [(d, 0.0) for d in list(docs)[:5]] for q in TINY_TOPICS}
    run = splade_scores(TINY_TOPICS, candidates, docs, model=str(tiny_splade), cache_dir=tmp_path, progress=False)
    assert set(run) == set(TINY_TOPICS) and all(len(h) == 5 for h in run.values())
    q_vec = _reference_vector(tiny_splade, TINY_TOPICS["q1"])
    expected = {d: float(q_vec @ _reference_vector(tiny_splade, docs[d])) for d, _ in candidates["q1"]}
    for docid, score in run["q1"]:
        assert score == pytest.approx(expected[docid], rel=1e-4)
    assert [s for _, s in run["q1"]] == sorted((s for _, s in run["q1"]), reverse=True)
    assert list(tmp_path.glob("splade-*.npz"))

    def no_encoding(self, texts):
        raise AssertionError(f"re-encoded {len(texts)} cached texts")

    monkeypatch.setattr(SpladeEncoder, "encode", no_encoding)
    again = splade_scores(TINY_TOPICS, candidates, docs, model=str(tiny_splade), cache_dir=tmp_path, progress=False)
    assert again == run


def test_splade_in_a_fusion_spec(tiny_splade, tmp_path):
    scorers = parse_scorers(f"splade:{tiny_splade}=0.5,first_stage=0.5,splade")
    assert [(s.kind, s.model) for s in scorers] == [("splade", str(tiny_splade)), ("first_stage", None),
                                                     ("splade", None)]
    docs = dict(TINY_DOCS)
    candidates = {"q1": [(d, float(10 - i)) for i, d in enumerate(list(docs)[:4])]}
    runs = scorer_runs(scorers[:2], TINY_TOPICS, candidates, docs, cache_dir=tmp_path, progress=False)
    assert len(runs) == 2 and len(runs[0]["q1"]) == 4


def test_bad_splade_path_is_one_line(tmp_path):
    from dipair_rerank.errors import DiPairError

    with pytest.raises(DiPairError, match="cannot load SPLADE model"):
        SpladeEncoder(str(tmp_path / "missing"))
