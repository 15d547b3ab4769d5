import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dipair_rerank.data import read_run, write_run
from dipair_rerank.errors import DiPairError


def test_trec_format_ranks_and_ties(tmp_path):
    path = write_run({"q1": [("b", 1.0), ("a", 1.0), ("c", 2.5)], "q2": [("x", 0.1)]}, tmp_path / "r.trec", tag="t")
    assert path.read_text().splitlines() == [
        "q1 Q0 c 1 2.500000 t",
        "q1 Q0 a 2 1.000000 t",
        "q1 Q0 b 3 1.000000 t",
        "q2 Q0 x 1 0.100000 t",
    ]


def test_msmarco_format_and_hits_limit(tmp_path):
    path = write_run({"q1": [("a", 3.0), ("b", 2.0), ("c", 1.0)]}, tmp_path / "r.tsv", output_format="msmarco", hits=2)
    assert path.read_text() == "q1\ta\t1\nq1\tb\t2\n"


def test_round_trip(tmp_path):
    run = {"q1": [("a", 3.0), ("b", 2.0)], "q2": [("c", -1.5)]}
    assert read_run(write_run(run, tmp_path / "r.trec")) == run


def test_failed_write_leaves_nothing(tmp_path):
    class Boom(dict):
        def items(self):
            yield "q1", [("a", 1.0)]
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_run(Boom(), tmp_path / "r.trec")
    assert list(tmp_path.iterdir()) == []


def test_wrong_column_count(tmp_path):
    path = tmp_path / "r.trec"
    path.write_text("q1 Q0 d1 1 2.0 tag\nq1 d2 2 1.0\n")
    with pytest.raises(DiPairError, match=r"r.trec:2: run lines have 6 columns .* or 3 .* got 4"):
        read_run(path)


def test_reads_the_msmarco_format_it_writes(tmp_path):
    path = write_run({"q1": [("a", 3.0), ("b", 2.0), ("c", 1.0)], "q2": [("x", 0.5)]}, tmp_path / "r.tsv",
                     output_format="msmarco")
    run = read_run(path)
    assert {qid: [docid for docid, _ in hits] for qid, hits in run.items()} == {"q1": ["a", "b", "c"], "q2": ["x"]}


def test_a_repeated_docid_keeps_its_first_line(tmp_path, caplog):
    path = tmp_path / "r.trec"
    path.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\nq1 Q0 d1 3 0.5 t\n")
    assert read_run(path) == {"q1": [("d1", 2.0), ("d2", 1.0)]}
    assert "1 lines repeat a docid" in caplog.text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40), max_size=6))
def test_parser_never_crashes_on_garbage(tmp_path_factory, lines):
    """Any text either parses or raises DiPairError (never another exception)."""
    path = tmp_path_factory.mktemp("fuzz") / "r.trec"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        run = read_run(path)
    except DiPairError:
        return
    assert all(isinstance(score, float) for hits in run.values() for _, score in hits)
