import pytest

from dipair_rerank.errors import DiPairError
from dipair_rerank.evaluate import evaluate, format_measures


def test_known_values_and_missing_queries_count_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 2}}
    run = {"q1": [("a", 2.0), ("x", 1.0)], "q3": [("b", 1.0)]}
    values = {(v.measure, v.qid): v.value for v in evaluate(qrels, run, "RR@10 R@100", per_query=True)}
    assert values[("RR@10", "q1")] == 1.0 and values[("RR@10", "q2")] == 0.0
    assert values[("RR@10", "all")] == pytest.approx(0.5)
    assert ("RR@10", "q3") not in values


def test_graded_cutoff_measure():
    qrels = {"q": {"a": 1, "b": 2}}
    run = {"q": [("a", 2.0), ("b", 1.0)]}
    (value,) = evaluate(qrels, run, "RR(rel=2)@10")
    assert value.value == pytest.approx(0.5)


def test_trec_eval_style_lines():
    text = format_measures(evaluate({"q": {"a": 1}}, {"q": [("a", 1.0)]}, "nDCG@10"))
    assert text.split() == ["nDCG@10", "all", "1.0000"]


def test_unknown_measure():
    with pytest.raises(DiPairError, match="unknown measure"):
        evaluate({"q": {"a": 1}}, {"q": [("a", 1.0)]}, "NotAMeasure@3")


def test_a_run_for_other_queries_is_refused_not_scored_zero():
    with pytest.raises(DiPairError, match="share no query ids"):
        evaluate({"201": {"a": 1}}, {"q1": [("a", 1.0)]}, "nDCG@10")


def test_judged_queries_missing_from_the_run_count_as_zero_with_a_warning(caplog):
    (value,) = evaluate({"q": {"a": 1}, "r": {"b": 1}}, {"q": [("a", 1.0)]}, "RR@10")
    assert value.value == 0.5
    assert "1 of 2 judged queries have no lines in the run" in caplog.text
