"""RunFileIndex: a run read a few queries at a time equals the same queries of ``read_run``, grouped or not."""

import random

import pytest

from dipair_rerank.data.run_index import RunFileIndex, read_run_ranges
from dipair_rerank.data.runs import read_run
from dipair_rerank.errors import DiPairError


def _lines(queries=6, hits=5):
    return [f"q{q} Q0 d{(q * 7 + h) % 13} {h + 1} {10 - h + q / 10:.3f} bm25\n" for q in range(queries)
            for h in range(hits)]


def test_a_grouped_run_takes_one_range_per_query(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("".join(_lines()))
    index = RunFileIndex.scan(path)
    assert index.qids == tuple(f"q{q}" for q in range(6))
    assert len(index.ranges(["q1", "q2"])) == 1 and len(index.ranges(["q1", "q3"])) == 2  # adjacent ones merged
    whole = read_run(path)
    assert read_run_ranges(path, index.ranges(["q3", "q1"])) == {"q1": whole["q1"], "q3": whole["q3"]}


def test_an_ungrouped_run_is_read_correctly(tmp_path):
    lines = _lines() + ["q2 Q0 d5 9 0.5 bm25\n", "\n"]  # d5 repeated for q2 (first line kept), a blank line
    random.Random(0).shuffle(lines)
    path = tmp_path / "run.trec"
    path.write_text("".join(lines).rstrip("\n"))  # no final newline
    index = RunFileIndex.scan(path, {"q2", "q4", "absent"})
    assert set(index.qids) == {"q2", "q4"} and "q0" not in index and "absent" not in index
    assert read_run_ranges(path, index.ranges(["q2", "q4", "absent"])) == {q: read_run(path)[q] for q in ("q2", "q4")}


def test_msmarco_format_and_bad_lines(tmp_path):
    path = tmp_path / "run.tsv"
    path.write_text("q1\td1\t1\nq1\td2\t2\nq2\td3\t1\n")
    index = RunFileIndex.scan(path)
    assert read_run_ranges(path, index.ranges(["q1"])) == {"q1": read_run(path)["q1"]}
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 1.0 x\nq2 Q0 d2 1 high x\n")
    with pytest.raises(DiPairError, match="bad.trec:byte 17: score 'high' is not a number"):
        read_run_ranges(bad, RunFileIndex.scan(bad).ranges(["q2"]))
    (tmp_path / "empty.trec").write_text("\n")
    with pytest.raises(DiPairError, match="empty run"):
        RunFileIndex.scan(tmp_path / "empty.trec")
    with pytest.raises(DiPairError, match="run file not found"):
        RunFileIndex.scan(tmp_path / "missing.trec")
