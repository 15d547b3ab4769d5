"""LuceneSource: the documents a Pyserini index stored, with the text Pyserini's re-rankers read; clear errors."""

import json
import pickle
import socket
import time

import pytest

from dipair_rerank.data.corpus import read_corpus
from dipair_rerank.data.lucene import LuceneSource, stored_text
from dipair_rerank.errors import DiPairError
from tests.conftest import TINY_DOCS, pyserini_index, write_jsonl

PREBUILT = "beir-v1.0.0-scifact.flat"


@pytest.mark.parametrize("raw, contents, text", [
    (json.dumps({"id": "1", "contents": "body"}), None, "body"),  # JsonCollection
    (json.dumps({"_id": "1", "title": "T", "text": "body"}), "T body", "T body"),  # BEIR flat
    (json.dumps({"id": "1", "title": "a title .", "contents": "a title . body"}), None, "a title . body"),
    ("<DOC><TEXT>body</TEXT></DOC>", "body", "body"),  # not JSON: the parsed contents when stored
    ("<DOC><TEXT>body</TEXT></DOC>", None, "<DOC><TEXT>body</TEXT></DOC>"),
    (None, "body", "body"),  # --storeContents only
    (None, None, None),
])
def test_stored_text(raw, contents, text):
    assert stored_text(raw, contents) == text


def test_reads_what_pyserini_stored_in_its_order(tiny_lucene):
    source = LuceneSource(tiny_lucene)
    assert source.count() == len(TINY_DOCS) and source.lucene == tiny_lucene.resolve()
    assert source.read(0, 100) == TINY_DOCS  # one indexing thread: Lucene's order is the file's
    assert source.read(4, 7) == TINY_DOCS[4:7]
    assert pickle.loads(pickle.dumps(source)).read(2, 4) == TINY_DOCS[2:4]  # reopens its searcher (Ray actors)
    assert source.fingerprint() == LuceneSource(tiny_lucene).fingerprint()


def test_titles_give_the_text_of_the_same_jsonl_corpus(tmp_path):
    docs = [{"id": "a", "title": "Qubits", "contents": "are the unit of quantum information"},
            {"id": "b", "title": "cats .", "contents": "cats . sit on mats"},
            {"id": "c", "contents": "no title"}]
    (tmp_path / "in").mkdir()
    corpus = tmp_path / "in" / "c.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    source = LuceneSource(pyserini_index(tmp_path / "in", tmp_path / "lucene", "--storeRaw"))
    assert source.read(0, 3) == [(d.docid, d.text) for d in read_corpus(corpus)]


def test_an_index_without_stored_text_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "c.jsonl", TINY_DOCS[:3])
    bare = pyserini_index(tmp_path / "in", tmp_path / "bare")
    with pytest.raises(DiPairError, match=r"no 'raw' field.*--storeRaw"):
        LuceneSource(bare)


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p, lambda p: write_jsonl(p / "c.jsonl", [])])
def test_a_path_that_is_not_a_lucene_index_is_refused(tmp_path, make):
    with pytest.raises(DiPairError, match="is not a Lucene index"):
        LuceneSource(make(tmp_path))


def test_prebuilt_offline_fails_fast_with_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setenv("PYSERINI_CACHE", str(tmp_path))
    monkeypatch.setattr(socket, "create_connection", offline)
    started = time.monotonic()
    with pytest.raises(DiPairError, match=f"prebuilt index {PREBUILT} is not downloaded .*offline") as error:
        LuceneSource.prebuilt(PREBUILT)
    assert time.monotonic() - started < 10 and "\n" not in str(error.value)
    with pytest.raises(DiPairError, match="unknown Pyserini prebuilt BM25 index 'no-such-index'"):
        LuceneSource.prebuilt("no-such-index")


def test_prebuilt_already_downloaded_is_used_offline(tiny_lucene, tmp_path, monkeypatch):
    from pyserini.prebuilt_index_info import TF_INDEX_INFO

    info = TF_INDEX_INFO[PREBUILT]
    monkeypatch.setenv("PYSERINI_CACHE", str(tmp_path))
    (tmp_path / "indexes").mkdir()
    (tmp_path / "indexes" / f"{info['filename'].split('.tar.gz')[0]}.{info['md5']}").symlink_to(tiny_lucene)
    monkeypatch.setattr(socket, "create_connection", None)  # any network use fails the test
    source = LuceneSource.prebuilt(PREBUILT)
    assert source.spec == f"prebuilt:{PREBUILT}" and source.read(0, 2) == TINY_DOCS[:2]
