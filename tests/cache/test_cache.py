import sys

import numpy as np
import pytest

from dipair_rerank.cache import CacheWriter, PrefixCache
from dipair_rerank.errors import DiPairError


def build(folder, rows=10, shard_rows=4, slots=3, dim=5):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, slots, dim)).astype(np.float16)
    lengths = rng.integers(1, slots, rows).astype(np.uint16)
    docids = [f"doc{i}" for i in range(rows)]
    writer = CacheWriter(folder, model_fingerprint="abc", model_config={}, slots=slots, dim=dim, shard_rows=shard_rows)
    for shard, start in enumerate(range(0, rows, shard_rows)):
        writer.write_shard(shard, vectors[start : start + shard_rows], lengths[start : start + shard_rows])
    writer.finish(docids)
    return vectors, lengths, docids


def test_gather_across_shards_in_requested_order(tmp_path):
    vectors, lengths, docids = build(tmp_path)
    cache = PrefixCache(tmp_path)
    wanted = ["doc9", "doc0", "doc5", "doc4", "doc5"]
    rows = cache.rows(wanted)
    blocks, got_lengths = cache.gather(rows)
    expected = [int(d[3:]) for d in wanted]
    assert np.array_equal(blocks, vectors[expected]) and np.array_equal(got_lengths, lengths[expected])
    assert len(cache) == 10 and len(cache.vectors) == 3


def test_lexical_dots_across_shards_equal_one_shard(tmp_path):
    """A many-shard cache computes the queries' term weights once over all its shards' terms; the dot products are
    those of a one-shard cache holding the same rows (rows without terms included)."""
    from dipair_rerank.model.lexical import LexicalQueries

    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((23, 3, 5)).astype(np.float16)
    lexical = []
    for _ in range(23):
        terms = np.sort(rng.choice(500, int(rng.integers(0, 6)), replace=False)).astype(np.uint16)
        lexical.append((terms, rng.random(len(terms)).astype(np.float16)))
    caches = []
    for shard_rows in (4, 100):
        folder = tmp_path / str(shard_rows)
        writer = CacheWriter(folder, model_fingerprint="abc", model_config={}, slots=3, dim=5, shard_rows=shard_rows)
        for shard, start in enumerate(range(0, 23, shard_rows)):
            stop = start + shard_rows
            writer.write_shard(shard, vectors[start:stop], np.ones(len(vectors[start:stop]), np.uint16),
                               lexical[start:stop])
        writer.finish([f"doc{i}" for i in range(23)])
        caches.append(PrefixCache(folder))
    # query q weighs term t as (q + 1) * sqrt(t + 1)
    queries = LexicalQueries(np.array([[[1.0]], [[2.0]]]), np.ones((2, 1)),
                             lambda states, mask, terms: states[:, 0, :1] * np.sqrt(terms + 1.0)[None, :])
    rows, owner = np.array([22, 0, 5, 5, 13, 3, 9, 17]), np.array([0, 0, 0, 1, 1, 1, 1, 1])
    many, one = (cache.lexical_dots(rows, owner, queries) for cache in caches)
    expected = [(q + 1) * float(np.sqrt(lexical[r][0] + 1.0) @ lexical[r][1].astype(np.float64))
                for r, q in zip(rows, owner)]
    assert len(caches[0].vectors) == 6 and many == pytest.approx(one, rel=1e-6)
    assert one == pytest.approx(expected, rel=1e-3)
    assert caches[0].lexical_dots(rows[:0], owner[:0], queries).shape == (0,)


def test_gather_reuses_its_buffer(tmp_path):
    vectors, _, _ = build(tmp_path, shard_rows=100)
    cache = PrefixCache(tmp_path)
    first, _ = cache.gather(np.array([2, 7, 1]))
    second, _ = cache.gather(np.array([2, 7]))
    assert np.shares_memory(first, second) and np.array_equal(second, vectors[[2, 7]])


@pytest.mark.parametrize("codec, params, tolerance", [("int8", {}, 0.05), ("pq", {"m": 5}, 1.5)])
def test_lossy_codecs_round_trip_within_tolerance(tmp_path, codec, params, tolerance):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 3, 5)).astype(np.float16)
    writer = CacheWriter(tmp_path, model_fingerprint="abc", model_config={}, slots=3, dim=5, shard_rows=200,
                         codec_name=codec, codec_params=params)
    writer.write_shard(0, vectors[:200], np.ones(200, np.uint16))
    writer.write_shard(1, vectors[200:], np.ones(100, np.uint16))
    writer.finish([f"doc{i}" for i in range(300)])
    cache = PrefixCache(tmp_path)
    assert cache.meta["codec"] == codec and cache.bytes_per_doc < 3 * 5 * 2 + 2
    blocks, _ = cache.gather(cache.rows(["doc0", "doc250"]))
    assert blocks.dtype == np.float32
    assert np.abs(blocks - vectors[[0, 250]].astype(np.float32)).mean() < tolerance
    reopened = PrefixCache(tmp_path)  # the trained codec state comes back from disk
    assert np.array_equal(reopened.gather(reopened.rows(["doc7"]))[0], cache.gather(cache.rows(["doc7"]))[0])


def test_unknown_docids(tmp_path):
    build(tmp_path)
    cache = PrefixCache(tmp_path)
    assert cache.rows(["doc1", "nope", "doc1-but-much-longer-than-any-stored-id"], strict=False).tolist() == [1, -1, -1]
    with pytest.raises(DiPairError, match="not in the index: nope"):
        cache.rows(["doc1", "nope"])


def test_truncated_shard_is_refused_on_open(tmp_path):
    build(tmp_path)
    shard = tmp_path / "shard-00001.vectors.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DiPairError, match="missing or truncated"):
        PrefixCache(tmp_path)


def test_verify_finds_a_flipped_bit(tmp_path):
    build(tmp_path)
    assert PrefixCache(tmp_path).verify() == []
    shard = tmp_path / "shard-00000.vectors.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    assert any("checksum mismatch" in p for p in PrefixCache(tmp_path).verify())


def test_missing_cache(tmp_path):
    with pytest.raises(DiPairError, match="no DiPair cache"):
        PrefixCache(tmp_path)


def test_shard_done_tracks_model_and_rows(tmp_path):
    writer = CacheWriter(tmp_path, model_fingerprint="abc", model_config={}, slots=2, dim=2, shard_rows=4)
    writer.write_shard(0, np.zeros((4, 2, 2), np.float16), np.ones(4, np.uint16))
    assert writer.shard_done(0, 4) and not writer.shard_done(0, 3) and not writer.shard_done(1, 4)
    other = CacheWriter(tmp_path, model_fingerprint="xyz", model_config={}, slots=2, dim=2, shard_rows=4)
    assert not other.shard_done(0, 4)


def test_transcode_keeps_rows_and_docids(tmp_path):
    from dipair_rerank.cache.transcode import row_docids, transcode

    vectors, _, docids = build(tmp_path / "src", rows=300, shard_rows=128)
    assert row_docids(PrefixCache(tmp_path / "src")) == docids
    int8 = transcode(tmp_path / "src", tmp_path / "int8", "int8")
    blocks, _ = int8.gather(int8.rows(["doc299", "doc3"]))
    assert np.abs(blocks - vectors[[299, 3]].astype(np.float32)).max() < 0.1
    assert int8.bytes_per_doc < PrefixCache(tmp_path / "src").bytes_per_doc


def test_map_in_maps_a_cache_that_fits_and_leaves_a_larger_one(tmp_path):
    """``map_in`` (a service's warm-up) maps every cache file in; over ``max_bytes`` it does nothing."""
    from dipair_rerank.cache import reader

    vectors, _, _ = build(tmp_path)
    cache = PrefixCache(tmp_path)
    files = [*cache.vectors, *cache.lengths, cache.docids.sorted, cache.docids.rows]
    assert all(reader._mapping(array) is not None for array in files)  # each over its own file mapping
    assert not cache.map_in(max_bytes=sum(array.nbytes for array in files) - 1)
    assert cache.map_in() == (sys.platform == "linux")
    assert np.array_equal(cache.gather(cache.rows(["doc3", "doc8"]))[0], vectors[[3, 8]])
