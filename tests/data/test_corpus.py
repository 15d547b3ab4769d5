import json

import pytest

from dipair_rerank.data.corpus import corpus_fingerprint, flat_text, read_corpus
from dipair_rerank.errors import DiPairError


def test_reads_jsonl_with_flat_title(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": 1, "title": "T", "contents": "body"}) + "\n\n"
                    + json.dumps({"id": "b", "contents": "x"}) + "\n")
    docs = list(read_corpus(path))
    assert [(d.docid, d.text) for d in docs] == [("1", "T body"), ("b", "x")]


def test_reads_beir_corpus_lines(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"_id": "4983", "title": "T", "text": "body", "metadata": {}}) + "\n")
    assert [(d.docid, d.text) for d in read_corpus(path)] == [("4983", "T body")]


def test_title_already_leading_contents_is_not_repeated():
    assert flat_text("a title .", "a title . the body") == "a title . the body"
    assert flat_text(None, "body") == "body"


def test_reads_a_folder_of_jsonl_in_name_order(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "2", "contents": "two"}) + "\n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "1", "contents": "one"}) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [d.docid for d in read_corpus(tmp_path)] == ["1", "2"]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"id": "a", "contents": "x"}', "{not json"], "c.jsonl:2: malformed JSON"),
        (['{"contents": "x"}'], "c.jsonl:1: missing 'id'"),
        (['{"id": "a"}'], "c.jsonl:1: document a has no 'contents'"),
        (['{"id": "a", "contents": "x"}', '{"id": "a", "contents": "y"}'], "duplicate docid 'a'"),
        (['{"id": "a b", "contents": "x"}'], "contains whitespace"),
        (["[1, 2]"], "expected a JSON object"),
        ([], "empty corpus"),
    ],
)
def test_bad_corpus_names_file_and_line(tmp_path, lines, message):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(DiPairError, match=message.replace("(", r"\(").replace("[", r"\[")):
        list(read_corpus(path))


def test_non_utf8_bytes_are_reported(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a", "contents": "caf\xe9"}\n')
    with pytest.raises(DiPairError, match="c.jsonl:1: not UTF-8"):
        list(read_corpus(path))


def test_missing_corpus(tmp_path):
    with pytest.raises(DiPairError, match="corpus not found"):
        list(read_corpus(tmp_path / "nope.jsonl"))


def test_fingerprint_follows_content(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "contents": "x"}\n')
    first = corpus_fingerprint(path)
    path.write_text('{"id": "a", "contents": "y"}\n')
    assert corpus_fingerprint(path) != first
