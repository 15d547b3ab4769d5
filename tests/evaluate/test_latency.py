import pytest

from dipair_rerank.evaluate.latency import load_latency, save_latency
from dipair_rerank.timing import StageTimer


def test_batches_are_shared_per_query_and_saved(tmp_path):
    timer = StageTimer()
    timer.batches["head"] = [(40.0, 4), (10.0, 1)]
    timer.batches["query_encoding"] = [(20.0, 4), (5.0, 1)]
    timer.batches["gather"] = [(4.0, 4), (1.0, 1)]
    assert timer.per_query_ms("head").tolist() == [10.0] * 5
    summary = timer.summary()
    assert summary["rerank"]["p50"] == pytest.approx(16.0) and summary["head"]["n"] == 5
    run = tmp_path / "r.trec"
    save_latency(timer, run, batch_size=4)
    assert load_latency(run)["head"]["p50"] == pytest.approx(10.0)
    assert load_latency(tmp_path / "other.trec") is None


def test_time_context_records_even_on_error():
    timer = StageTimer()
    with pytest.raises(ValueError), timer.time("gather"):
        raise ValueError
    assert len(timer.per_query_ms("gather")) == 1
