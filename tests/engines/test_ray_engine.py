"""``index --engine ray``: a local 2-worker Ray cluster writes the same shards as a single process."""

import pytest

from dipair_rerank.indexer import IndexOptions, build_index

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'dipair-rerank[ray]'")


def test_ray_build_is_identical_to_a_local_build(tiny_model, tiny_files, tmp_path):
    options = dict(shard_rows=4, batch_size=4, threads=1, progress=False, dense=True)
    ray_index = build_index(tiny_files["corpus"], tmp_path / "ray", model=tiny_model,
                            options=IndexOptions(**options, engine="ray", workers=2))
    local = build_index(tiny_files["corpus"], tmp_path / "local", model=tiny_model, options=IndexOptions(**options))
    files = sorted(p.name for p in local.cache.glob("shard-*.npy"))
    assert len(files) == 6
    for name in files:
        assert (ray_index.cache / name).read_bytes() == (local.cache / name).read_bytes()
    assert (ray_index.faiss / "docid").read_text() == (local.faiss / "docid").read_text()


def test_ray_reads_a_lucene_source_in_each_actor(tiny_model, tiny_lucene, tmp_path):
    """The document source crosses to the actors (each opens the Lucene index on its own JVM)."""
    from dipair_rerank.data.lucene import LuceneSource

    options = dict(shard_rows=4, batch_size=4, threads=1, progress=False)
    ray_index = build_index(LuceneSource(tiny_lucene), tmp_path / "ray", model=tiny_model,
                            options=IndexOptions(**options, engine="ray", workers=2))
    local = build_index(LuceneSource(tiny_lucene), tmp_path / "local", model=tiny_model,
                        options=IndexOptions(**options))
    for path in sorted(local.cache.glob("shard-*.npy")):
        assert (ray_index.cache / path.name).read_bytes() == path.read_bytes()
