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
