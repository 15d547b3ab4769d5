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
