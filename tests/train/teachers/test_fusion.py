"""Fusion teacher: scorer specs, per-query z-scores, weighted fusion, weight fitting, the CLI."""

import numpy as np
import pytest

from dipair_rerank.cli import main
from dipair_rerank.data import read_run
from dipair_rerank.errors import DiPairError
from dipair_rerank.train.teachers.fusion import fit_weights, fuse, mean_ndcg10, parse_scorers, zscore
from tests.conftest import TINY_QRELS, TINY_TOPICS


def test_parse_scorers():
    scorers = parse_scorers("biencoder=0.8, first_stage=0.2,ce:some/model=0.5,biencoder:other")
    assert [(s.kind, s.model, s.weight) for s in scorers] == [
        ("biencoder", "packaged:all-MiniLM-L6-v2", 0.8), ("first_stage", None, 0.2), ("ce", "some/model", 0.5),
        ("biencoder", "other", 1.0)]
    for bad in ("bm25=1", "biencoder=x", "", "first_stage=1,first_stage=2"):
        with pytest.raises(DiPairError):
            parse_scorers(bad)


def test_zscore_and_fuse():
    a = {"q": [("d1", 10.0), ("d2", 5.0), ("d3", 0.0)]}
    b = {"q": [("d3", 0.9), ("d2", 0.5), ("d1", 0.1)]}
    z = dict(zscore(a)["q"])
    assert np.isclose(np.mean(list(z.values())), 0) and np.isclose(np.std(list(z.values())), 1)
    assert [d for d, _ in fuse([a, b], [1.0, 0.0])["q"]] == ["d1", "d2", "d3"]
    assert [d for d, _ in fuse([a, b], [0.2, 0.8])["q"]] == ["d3", "d2", "d1"]
    assert zscore({"q": [("d", 1.0), ("e", 1.0)]})["q"] == [("d", 0.0), ("e", 0.0)]  # constant: no NaN


def test_fit_weights_prefers_the_informative_scorer():
    qrels = {"q": {"d3": 1}}
    good = {"q": [("d3", 3.0), ("d2", 2.0), ("d1", 1.0)]}
    bad = {"q": [("d1", 3.0), ("d2", 2.0), ("d3", 1.0)]}
    weights, value = fit_weights([bad, good], qrels, step=0.25)
    assert value == pytest.approx(1.0) and weights[1] > weights[0]
    assert mean_ndcg10(bad, qrels) < 1.0


def test_teacher_scores_cli_first_stage_only(tiny_files, tmp_path, capsys):
    cands = tmp_path / "cands.trec"
    cands.write_text("".join(f"{q} Q0 d{i} {i} {20 - i}.0 bm25\n" for q in TINY_TOPICS for i in range(1, 9)))
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("".join(f"{q} 0 {d} {g}\n" for q, docs in TINY_QRELS.items() for d, g in docs.items()))
    out = tmp_path / "teacher.trec"
    assert main(["teacher-scores", "--topics", str(tiny_files["topics"]), "--candidates", str(cands),
                 "--corpus", str(tiny_files["corpus"]), "--scorers", "first_stage=1", "--output", str(out),
                 "--fit-qrels", str(qrels), "--cache-dir", str(tmp_path / "cache"), "--threads", "1"]) == 0
    run = read_run(out)
    assert set(run) == set(TINY_TOPICS) and all(len(h) == 8 for h in run.values())
    assert run["q1"][0][0] == "d1"  # z-scored BM25 keeps the order
    assert (tmp_path / "teacher.trec.fit.json").is_file()
    assert "fitted --scorers" in capsys.readouterr().out
