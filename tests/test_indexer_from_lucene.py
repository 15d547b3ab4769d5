"""``index --from-lucene`` / ``--from-prebuilt``: an existing Pyserini index is reused for BM25 (nothing
re-indexed), its stored documents fill the cache, and search over it equals search over a JSONL-built index."""

import json
import shutil

import pytest

from dipair_rerank.cli import main
from dipair_rerank.data.lucene import LuceneSource
from dipair_rerank.data.runs import write_run
from dipair_rerank.index_layout import IndexLayout
from dipair_rerank.indexer import IndexOptions, build_index
from dipair_rerank.pipeline import DiPairSearcher
from tests.conftest import TINY_DOCS, TINY_TOPICS, pyserini_index, write_jsonl, write_topics

TINY_BUILD = ["--shard-rows", "5", "--batch-size", "4", "--threads", "1"]  # as the tiny_index fixture's


def pyserini_bm25_run(lucene, topics: dict[str, str], k: int, path):
    """The run Pyserini's own LuceneSearcher gives (its BM25 defaults), written as ours are."""
    from dipair_rerank._java import ensure_jvm

    ensure_jvm()
    from pyserini.search.lucene import LuceneSearcher

    hits = LuceneSearcher(str(lucene)).batch_search(list(topics.values()), list(topics), k, 2)
    return write_run({qid: [(h.docid, h.score) for h in hits[qid]] for qid in topics}, path, tag="bm25").read_text()


def our_bm25_run(index, topics: dict[str, str], k: int, path):
    """The first stage ``search --first-stage bm25`` runs over ``index``."""
    first_stage = DiPairSearcher.from_index(index, first_stage="bm25", query_backend="torch").first_stage
    found = first_stage.retrieve(list(topics), list(topics.values()), k, threads=2)
    return write_run({qid: [(c.docid, c.score) for c in hits] for qid, hits in zip(topics, found)}, path,
                     tag="bm25").read_text()


def search(index, topics_file, run, depth: int = 100) -> str:
    """``search --first-stage bm25``, the run holding only the re-ranked ``depth`` (as for re-ranking metrics)."""
    assert main(["search", "--index", str(index), "--topics", str(topics_file), "--run", str(run), "--first-stage",
                 "bm25", "--depth", str(depth), "--hits", str(depth), "--threads", "1", "--batch-size", "16",
                 "--query-backend", "torch"]) == 0
    return run.read_text()


@pytest.fixture(scope="module")
def from_lucene(tiny_lucene, tiny_model_dir, tmp_path_factory):
    target = tmp_path_factory.mktemp("indexes") / "from-lucene"
    assert main(["index", "--from-lucene", str(tiny_lucene), "--index", str(target), "--model", str(tiny_model_dir),
                 "--dense", *TINY_BUILD]) == 0
    return target


def test_records_the_lucene_index_and_reindexes_nothing(from_lucene, tiny_lucene, tiny_index):
    layout = IndexLayout(from_lucene)
    manifest = layout.manifest()
    assert layout.lucene == tiny_lucene.resolve() and manifest["lucene_path"] == str(tiny_lucene.resolve())
    assert (from_lucene / "lucene").resolve() == tiny_lucene.resolve()  # a link, for code opening INDEX/lucene
    assert manifest["corpus"] == str(tiny_lucene.resolve()) and manifest["num_docs"] == len(TINY_DOCS)
    assert set(manifest["components"]) == {"lucene", "dipair", "faiss"}
    assert sorted(p.name for p in from_lucene.iterdir()) == ["dipair", "faiss", "lucene", "manifest.json"]
    assert (from_lucene / "faiss" / "docid").read_text() == (tiny_index / "faiss" / "docid").read_text()
    assert main(["verify", "--index", str(from_lucene)]) == 0


def test_training_sets_read_texts_and_bm25_through_the_recorded_index(from_lucene, tiny_files):
    from dipair_rerank.train.sets import TrainSetSpec, load_texts

    spec = TrainSetSpec(str(tiny_files["topics"]), index=str(from_lucene))
    assert load_texts(spec, {docid for docid, _ in TINY_DOCS}) == dict(TINY_DOCS)


def test_a_moved_lucene_index_is_one_clear_line(from_lucene, tiny_lucene, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(from_lucene, copy, symlinks=True)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "lucene_path": str(tmp_path / "moved")}))
    _fails(["verify", "--index", str(copy)], capsys, f"no Lucene index at {tmp_path / 'moved'}")
    topics = write_topics(tmp_path / "t.tsv", TINY_TOPICS)
    _fails(["search", "--index", str(copy), "--topics", str(topics), "--run", str(tmp_path / "r.trec"),
            "--query-backend", "torch"], capsys, "no Lucene index at")


def test_bm25_is_pyserinis_and_the_reranked_run_equals_a_jsonl_built_index(from_lucene, tiny_lucene, tiny_index,
                                                                          tiny_files, tmp_path):
    assert our_bm25_run(from_lucene, TINY_TOPICS, 10, tmp_path / "ours") == \
        pyserini_bm25_run(tiny_lucene, TINY_TOPICS, 10, tmp_path / "pyserini")
    reranked = search(from_lucene, tiny_files["topics"], tmp_path / "lucene.trec")
    assert reranked == search(tiny_index, tiny_files["topics"], tmp_path / "jsonl.trec")
    assert len(reranked.splitlines()) > len(TINY_TOPICS)
    cache_files = sorted(p.name for p in (tiny_index / "dipair").glob("shard-*.npy"))
    for name in cache_files:  # same documents, same text, same order: byte-identical cache
        assert (from_lucene / "dipair" / name).read_bytes() == (tiny_index / "dipair" / name).read_bytes()


def test_an_interrupted_build_resumes(tiny_lucene, tiny_model, tmp_path, monkeypatch):
    import dipair_rerank.indexer as indexer

    real, calls = indexer.encode_documents, []

    def interrupted_at_shard_2(model, texts, **kwargs):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, texts, **kwargs)

    options = IndexOptions(shard_rows=5, batch_size=4, threads=1, progress=False)
    monkeypatch.setattr(indexer, "encode_documents", interrupted_at_shard_2)
    with pytest.raises(KeyboardInterrupt):
        build_index(LuceneSource(tiny_lucene), tmp_path / "idx", model=tiny_model, options=options)
    monkeypatch.setattr(indexer, "encode_documents", lambda *a, **k: (calls.append(len(a[1])), real(*a, **k))[1])
    calls.clear()
    layout = build_index(LuceneSource(tiny_lucene), tmp_path / "idx", model=tiny_model, options=options)
    assert calls == [5, 2] and layout.manifest()["num_docs"] == len(TINY_DOCS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def _fails(argv, capsys, *fragments):
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and all(f in err[0] for f in fragments), err


def test_bad_lucene_indexes_get_one_line_and_nothing_is_written(tiny_lucene, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "c.jsonl", TINY_DOCS[:3])
    bare = pyserini_index(tmp_path / "in", tmp_path / "bare")  # no --storeRaw
    capsys.readouterr()
    before = sorted(p.name for p in tmp_path.iterdir())
    index = ["index", "--index", str(tmp_path / "indexes" / "x"), "--model", str(tiny_model_dir)]
    _fails(index + ["--from-lucene", str(bare)], capsys, "'raw'", "--storeRaw")
    _fails(index + ["--from-lucene", str(tmp_path / "in")], capsys, "is not a Lucene index")
    _fails(index + ["--from-lucene", str(tmp_path / "nope")], capsys, "is not a Lucene index")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    for target in (tiny_lucene, tiny_lucene.parent):  # publishing there would delete the index it reads
        _fails(["index", "--from-lucene", str(tiny_lucene), "--index", str(target), "--model", str(tiny_model_dir)],
               capsys, "holds the input it would be built from")
    assert LuceneSource(tiny_lucene).count() == len(TINY_DOCS)


def test_prebuilt_offline_is_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import socket

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setenv("PYSERINI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(socket, "create_connection", offline)
    _fails(["index", "--from-prebuilt", "beir-v1.0.0-scifact.flat", "--index", str(tmp_path / "indexes" / "x"),
            "--model", str(tiny_model_dir)], capsys, "is not downloaded", "--from-lucene")
    assert not (tmp_path / "indexes").exists()


@pytest.mark.integration
def test_cranfield_from_lucene_equals_jsonl(shared_data, tiny_model_dir, tmp_path):
    """Cranfield indexed by ``python -m pyserini.index.lucene --storeRaw``: our BM25 over it is Pyserini's, and
    the re-ranked run equals the one from the JSONL-built index of the same corpus."""
    from dipair_rerank.data.corpus import read_corpus

    # one corpus file for both: Cranfield's flat text, without the 2 empty documents Pyserini would skip (ours
    # keeps them, which shifts every IDF) and with the 2 titles its contents do not start with already joined
    # (Pyserini's BM25 reads only 'contents'; ours the flat title + contents, as the encoder does)
    (tmp_path / "in").mkdir()
    corpus = write_jsonl(tmp_path / "in" / "corpus.jsonl", [
        (doc.docid, doc.text) for doc in read_corpus(shared_data / "cranfield" / "corpus.jsonl") if doc.text.strip()])
    lucene = pyserini_index(tmp_path / "in", tmp_path / "lucene", "--storeRaw")
    topics_file = shared_data / "cranfield" / "queries.tsv"
    topics = dict(line.split("\t", 1) for line in topics_file.read_text().splitlines())
    built = {}
    for name, source in (("lucene", ["--from-lucene", str(lucene)]), ("jsonl", ["--corpus", str(corpus)])):
        built[name] = tmp_path / "indexes" / name
        assert main(["index", *source, "--index", str(built[name]), "--model", str(tiny_model_dir),
                     "--shard-rows", "512", "--threads", "2"]) == 0
    assert json.loads((built["lucene"] / "manifest.json").read_text())["num_docs"] == 1398
    assert our_bm25_run(built["lucene"], topics, 100, tmp_path / "ours") == \
        pyserini_bm25_run(lucene, topics, 100, tmp_path / "pyserini")
    assert search(built["lucene"], topics_file, tmp_path / "lucene.trec") == \
        search(built["jsonl"], topics_file, tmp_path / "jsonl.trec")
