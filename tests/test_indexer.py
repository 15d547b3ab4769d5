import json

import pytest

from dipair_rerank.cache import PrefixCache
from dipair_rerank.errors import DiPairError
from dipair_rerank.index_layout import IndexLayout
from dipair_rerank.indexer import IndexOptions, build_index
from tests.conftest import TINY_DOCS, write_jsonl

OPTIONS = dict(shard_rows=5, batch_size=4, threads=1, progress=False)


def test_index_layout(tiny_index, tiny_model):
    layout = IndexLayout(tiny_index)
    manifest = layout.manifest()
    assert manifest["num_docs"] == len(TINY_DOCS)
    assert manifest["model_fingerprint"] == tiny_model.fingerprint()
    assert set(manifest["components"]) == {"lucene", "dipair", "faiss"}
    assert (layout.faiss / "docid").read_text().split() == [d for d, _ in TINY_DOCS]
    cache = PrefixCache(layout.cache)
    assert len(cache.meta["shards"]) == 3 and cache.verify() == []
    assert not list(tiny_index.parent.glob(".*building"))


def test_resume_reuses_finished_shards(tiny_model, tiny_files, tmp_path, monkeypatch):
    """An interrupted build, rerun, encodes only the shards it had not finished and equals a clean build."""
    import dipair_rerank.indexer as indexer

    real = indexer.encode_documents
    calls = []

    def flaky(model, texts, **kwargs):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted while encoding the second shard
        return real(model, texts, **kwargs)

    monkeypatch.setattr(indexer, "encode_documents", flaky)
    target = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_files["corpus"], target, model=tiny_model, options=IndexOptions(**OPTIONS))
    assert not target.exists() and (tmp_path / ".idx.building").is_dir()
    calls.clear()
    monkeypatch.setattr(indexer, "encode_documents", lambda *a, **k: (calls.append(len(a[1])), real(*a, **k))[1])
    build_index(tiny_files["corpus"], target, model=tiny_model, options=IndexOptions(**OPTIONS))
    assert calls == [5, 2]  # shard 0 kept; shards 1 and 2 encoded

    clean = build_index(tiny_files["corpus"], tmp_path / "clean", model=tiny_model, options=IndexOptions(**OPTIONS))
    for name in ("shard-00000", "shard-00001", "shard-00002"):
        for kind in ("vectors", "lengths"):
            assert (target / "dipair" / f"{name}.{kind}.npy").read_bytes() == \
                (clean.cache / f"{name}.{kind}.npy").read_bytes()


@pytest.mark.parametrize("docs, message", [
    ([], "empty corpus"),
    ([("a", "x"), ("a", "y")], "duplicate docid 'a'"),
])
def test_bad_corpus_leaves_nothing(tiny_model, tmp_path, docs, message):
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    with pytest.raises(DiPairError, match=message):
        build_index(corpus, tmp_path / "idx", model=tiny_model, options=IndexOptions(**OPTIONS))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


def test_rebuild_replaces_the_previous_index(tiny_model, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", TINY_DOCS[:3])
    build_index(corpus, tmp_path / "idx", model=tiny_model, options=IndexOptions(**OPTIONS))
    write_jsonl(corpus, TINY_DOCS[:4])
    build_index(corpus, tmp_path / "idx", model=tiny_model, options=IndexOptions(**OPTIONS))
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["num_docs"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "idx"]


def test_an_empty_folder_may_be_the_target_but_a_folder_with_files_is_kept(tiny_model, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", TINY_DOCS[:3])
    (tmp_path / "empty").mkdir()
    build_index(corpus, tmp_path / "empty", model=tiny_model, options=IndexOptions(**OPTIONS))
    assert (tmp_path / "empty" / "manifest.json").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DiPairError, match="is not a dipair-rerank index"):
        build_index(corpus, tmp_path / "mine", model=tiny_model, options=IndexOptions(**OPTIONS))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_shard_slices_publish_once_complete_and_equal_a_single_build(tiny_model, tiny_files, tmp_path):
    target = tmp_path / "sliced"
    for shard_id in (1, 0):
        build_index(tiny_files["corpus"], target, model=tiny_model,
                    options=IndexOptions(**OPTIONS, shard_id=shard_id, num_shards=2))
        assert (target / "manifest.json").is_file() == (shard_id == 0)  # the slice completing the set publishes
    single = build_index(tiny_files["corpus"], tmp_path / "single", model=tiny_model, options=IndexOptions(**OPTIONS))
    for path in sorted(single.cache.glob("*.npy")):
        assert (target / "dipair" / path.name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("codec", ["int8", "pq"])
def test_lossy_codec_index_reranks(tiny_model, tiny_files, tmp_path, codec):
    from dipair_rerank.rerank import DiPairReranker

    layout = build_index(tiny_files["corpus"], tmp_path / codec, model=tiny_model,
                         options=IndexOptions(**OPTIONS, codec=codec, pq_m=4))
    cache = PrefixCache(layout.cache)
    assert cache.meta["codec"] == codec and (layout.cache / "codec.npy").is_file()
    exact = DiPairReranker.from_index(tiny_index_for(tiny_model, tiny_files, tmp_path), query_backend="torch")
    lossy = DiPairReranker.from_index(layout.root, query_backend="torch")
    docids = [d for d, _ in TINY_DOCS]
    exact_scores = {h.docid: h.score for h in exact.rerank("quantum pets", docids)}
    lossy_scores = {h.docid: h.score for h in lossy.rerank("quantum pets", docids)}
    assert max(abs(exact_scores[d] - lossy_scores[d]) for d in docids) < (0.05 if codec == "int8" else 0.5)


def tiny_index_for(model, files, tmp_path):
    return build_index(files["corpus"], tmp_path / "fp16", model=model, options=IndexOptions(**OPTIONS)).root
