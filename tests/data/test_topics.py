import pytest

from dipair_rerank.data import read_qrels, read_topics
from dipair_rerank.errors import DiPairError


def test_topics_in_file_order(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("2\tsecond query\n1\tfirst\twith tab\n")
    assert list(read_topics(path).items()) == [("2", "second query"), ("1", "first\twith tab")]


@pytest.mark.parametrize("text, message", [
    ("1 no tab here\n", "t.tsv:1: expected 'qid<TAB>query text'"),
    ("1\ta\n1\tb\n", "t.tsv:2: duplicate qid '1'"),
    ("", "no topics"),
])
def test_bad_topics(tmp_path, text, message):
    path = tmp_path / "t.tsv"
    path.write_text(text)
    with pytest.raises(DiPairError, match=message):
        read_topics(path)


def test_qrels(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("1 0 d1 2\n1 0 d2 0\n2 Q0 d3 1\n")
    assert read_qrels(path) == {"1": {"d1": 2, "d2": 0}, "2": {"d3": 1}}


@pytest.mark.parametrize("text, message", [("1 0 d1\n", "4 columns"), ("1 0 d1 x\n", "not an integer")])
def test_bad_qrels(tmp_path, text, message):
    path = tmp_path / "q.txt"
    path.write_text(text)
    with pytest.raises(DiPairError, match=message):
        read_qrels(path)


def test_missing_file(tmp_path):
    with pytest.raises(DiPairError, match="file not found"):
        read_topics(tmp_path / "missing.tsv")
