import json

import numpy as np
import pytest

from dipair_rerank.cache import CacheWriter, PrefixCache
from dipair_rerank.cache.codecs import make_codec
from dipair_rerank.errors import DiPairError


def blocks(rows=400, slots=5, dim=16, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, slots, dim)).astype(np.float32)


def test_pq_keeps_the_pooled_slot_in_its_own_finer_quantiser():
    data = blocks()
    codec = make_codec("pq", 5, 16, params={"m": 4, "pooled_bits": 8})
    codec.train(data)
    codes = codec.encode(data)
    assert codes.shape == (400, 4 * 4 + 16) and codes.dtype == np.uint8  # 4 PQ'd slots x 4 B + 16 dims x 8 bit
    decoded = codec.decode(codes)
    pq_error = np.abs(decoded[:, :4] - data[:, :4]).mean()
    pooled_error = np.abs(decoded[:, 4] - data[:, 4]).mean()
    assert pooled_error < pq_error / 5


def test_pq_without_pooled_bits_codes_every_slot_alike():
    codec = make_codec("pq", 5, 16, params={"m": 4})
    codec.train(blocks())
    assert codec.row_shape == (5 * 4,)


def test_pq_state_round_trips_through_its_params(tmp_path):
    data = blocks()
    writer = CacheWriter(tmp_path, model_fingerprint="abc", model_config={}, slots=5, dim=16, shard_rows=400,
                         codec_name="pq", codec_params={"m": 4, "pooled_bits": 6, "seed": 7})
    writer.write_shard(0, data.astype(np.float16), np.full(400, 4, np.uint16))
    writer.finish([f"doc{i}" for i in range(400)])
    cache = PrefixCache(tmp_path)
    assert cache.meta["codec_params"]["seed"] == 7
    assert cache.bytes_per_doc == 4 * 4 + 12 + 2  # 16 values x 6 bit = 12 B, + uint16 length
    decoded, _ = cache.gather(np.arange(400))
    assert np.array_equal(decoded, writer.codec.decode(writer.codec.encode(data.astype(np.float16))))


def test_shard_codes_of_another_layout_are_refused(tmp_path):
    writer = CacheWriter(tmp_path, model_fingerprint="abc", model_config={}, slots=5, dim=16, shard_rows=400,
                         codec_name="pq", codec_params={"m": 4, "pooled_bits": 6})
    writer.write_shard(0, blocks().astype(np.float16), np.full(400, 4, np.uint16))
    writer.finish([f"doc{i}" for i in range(400)])
    params = json.loads((tmp_path / "codec.json").read_text())
    (tmp_path / "codec.json").write_text(json.dumps({**params, "pooled_bits": 8}))  # a codec that expects 16 B more
    with pytest.raises(DiPairError, match="rebuild the index"):
        PrefixCache(tmp_path)


# ----- the pooled vector spread over several rows (a model with full_width_residual) --------------------------
HEAD_ROWS, POOLED_ROWS, DIM = 3, 3, 16


def residual_blocks(rows=600, seed=0):
    """Blocks like the shipped model's: head rows, then one unit-norm vector of POOLED_ROWS * DIM values spread over
    the last POOLED_ROWS rows (made low-rank, as real pooled vectors are: a product quantiser can learn them)."""
    rng = np.random.default_rng(seed)
    data = blocks(rows, HEAD_ROWS + POOLED_ROWS, DIM, seed)
    pooled = rng.standard_normal((rows, 6)) @ rng.standard_normal((6, POOLED_ROWS * DIM))
    data[:, HEAD_ROWS:] = (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).reshape(rows, POOLED_ROWS, DIM)
    return data


def pooled_cosines(decoded, data):
    a, b = (x[:, HEAD_ROWS:].reshape(len(x), -1) for x in (decoded, data))
    return (a * b).sum(1) / np.linalg.norm(a, axis=1)


@pytest.mark.parametrize("pooled", [{"pooled_bits": 6}, {"pooled_m": 24}])
def test_pooled_rows_are_coded_as_one_vector_closer_than_the_last_row_alone(pooled):
    data = residual_blocks()
    codec = make_codec("pq", 6, DIM, params={"m": 4, "pooled_rows": POOLED_ROWS, **pooled})
    codec.train(data)
    new = pooled_cosines(codec.decode(codec.encode(data)), data)
    old = make_codec("pq", 6, DIM, params={"m": 4, "pooled_bits": 6})  # the layout before: the last row alone
    old.train(data)
    before = pooled_cosines(old.decode(old.encode(data)), data)
    assert new.min() > 0.98 > before.min()  # the score reads this cosine directly
    assert 1 - new.mean() < (1 - before.mean()) / 5


@pytest.mark.parametrize("params, code_bytes", [
    ({"m": 4, "pooled_rows": POOLED_ROWS, "pooled_bits": 6}, HEAD_ROWS * 4 + POOLED_ROWS * DIM * 6 // 8),
    ({"m": 4, "pooled_rows": POOLED_ROWS, "pooled_bits": 4}, HEAD_ROWS * 4 + POOLED_ROWS * DIM * 4 // 8),
    ({"m": 8, "pooled_rows": POOLED_ROWS, "pooled_m": 24}, HEAD_ROWS * 8 + 24),
    ({"m": 4, "pooled_rows": 1, "pooled_bits": 6}, (HEAD_ROWS + POOLED_ROWS - 1) * 4 + DIM * 6 // 8),
    ({"m": 4}, (HEAD_ROWS + POOLED_ROWS) * 4),
])
def test_pq_bytes_per_doc_follow_the_stated_formula(tmp_path, params, code_bytes):
    """(slots - pooled_rows) x m, + pooled_m or pooled_rows x dim x pooled_bits / 8, + the uint16 length."""
    data = residual_blocks(300)
    writer = CacheWriter(tmp_path, model_fingerprint="abc", model_config={}, slots=6, dim=DIM, shard_rows=300,
                         codec_name="pq", codec_params=params)
    writer.write_shard(0, data.astype(np.float16), np.full(300, 2, np.uint16))
    writer.finish([f"doc{i}" for i in range(300)])
    cache = PrefixCache(tmp_path)
    assert cache.bytes_per_doc == code_bytes + 2 == cache.meta["bytes_per_doc"]
    assert np.asarray(cache.vectors[0]).shape == (300, code_bytes)


@pytest.mark.parametrize("pooled", [{"pooled_bits": 6}, {"pooled_m": 24}])
def test_the_pooled_layout_round_trips_through_the_cache(tmp_path, pooled):
    data = residual_blocks(600).astype(np.float16)
    model_config = {"doc_prefix": HEAD_ROWS - 1, "pooled_slot": True, "full_width_residual": True}
    writer = CacheWriter(tmp_path, model_fingerprint="abc", model_config=model_config, slots=6, dim=DIM,
                         shard_rows=400, codec_name="pq", codec_params={"m": 4, **pooled})
    writer.write_shard(0, data[:400], np.full(400, 2, np.uint16))
    writer.write_shard(1, data[400:], np.full(200, 2, np.uint16))
    writer.finish([f"doc{i}" for i in range(600)])
    cache = PrefixCache(tmp_path)  # the rows the model's pooled vector spans came from its config
    assert cache.meta["codec_params"]["pooled_rows"] == POOLED_ROWS == cache.codec.pooled_rows
    assert json.loads((tmp_path / "codec.json").read_text())["pooled_rows"] == POOLED_ROWS
    decoded, _ = cache.gather(np.arange(600))
    assert np.array_equal(decoded, writer.codec.decode(writer.codec.encode(data)))
    assert pooled_cosines(decoded, data.astype(np.float32)).min() > 0.98


def test_a_cache_written_before_pooled_rows_existed_decodes_as_before(tmp_path):
    """codec.json of an older cache has no pooled_rows (nor pooled_m): the last row alone is coded apart, as the
    codec always did — checked against that layout decoded by hand from the stored state."""
    import faiss

    data = residual_blocks(400)
    writer = CacheWriter(tmp_path, model_fingerprint="abc", model_config={}, slots=6, dim=DIM, shard_rows=400,
                         codec_name="pq", codec_params={"m": 4, "pooled_bits": 6, "pooled_rows": 1})
    writer.write_shard(0, data.astype(np.float16), np.full(400, 2, np.uint16))
    writer.finish([f"doc{i}" for i in range(400)])
    old_params = {"m": 4, "nbits": 8, "pooled_bits": 6, "seed": 1234}  # what the older writer recorded
    (tmp_path / "codec.json").write_text(json.dumps(old_params))
    meta = json.loads((tmp_path / "cache.json").read_text())
    (tmp_path / "cache.json").write_text(json.dumps({**meta, "codec_params": old_params}))
    cache = PrefixCache(tmp_path)
    assert cache.codec.pooled_rows == 1 and cache.bytes_per_doc == 5 * 4 + 12 + 2
    codes = np.asarray(cache.vectors[0])
    state = np.load(tmp_path / "codec.npy")
    pq = faiss.ProductQuantizer(DIM, 4, 8)
    faiss.copy_array_to_vector(state[: pq.centroids.size()], pq.centroids)
    sq = faiss.ScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_6bit)
    faiss.copy_array_to_vector(state[pq.centroids.size() :], sq.trained)
    by_hand = np.concatenate([pq.decode(np.ascontiguousarray(codes[:, :20]).reshape(-1, 4)).reshape(400, 5, DIM),
                              sq.decode(np.ascontiguousarray(codes[:, 20:]))[:, None]], 1)
    assert np.array_equal(cache.gather(np.arange(400))[0], by_hand)


def test_pooled_params_are_checked():
    with pytest.raises(DiPairError, match="not both"):
        make_codec("pq", 6, DIM, params={"pooled_rows": 3, "pooled_bits": 6, "pooled_m": 24})
    with pytest.raises(DiPairError, match="not divisible"):
        make_codec("pq", 6, DIM, params={"pooled_rows": 3, "pooled_m": 20})
    with pytest.raises(DiPairError, match="pooled part"):
        make_codec("pq", 6, DIM, params={"pooled_rows": 3})


def test_index_pq_codes_a_full_width_residual_models_pooled_rows_as_one():
    """What `index --codec pq` asks of the codec: for a model with the full-width pooled vector, every row after the
    head's, coded as one vector at 4 values per byte; for a model with one projected pooled slot, that slot at 6
    bits per value, as before."""
    from types import SimpleNamespace

    from dipair_rerank.indexer import IndexOptions
    from dipair_rerank.model import DiPairModel
    from tests.conftest import tiny_config

    config = tiny_config(full_width_residual=True)
    model = DiPairModel(config)
    params = IndexOptions(codec="pq").codec_params(model)
    rows = model.doc_block_slots - config.doc_slots
    assert rows > 1 and params["pooled_rows"] == rows and params["pooled_m"] == rows * config.proj_dim // 4
    codec = make_codec("pq", model.doc_block_slots, config.proj_dim, params=params)
    assert codec.row_shape == (config.doc_slots * 8 + rows * config.proj_dim // 4,)
    assert IndexOptions(codec="pq", pq_pooled_values_per_byte=0).codec_params(model)["pooled_bits"] == 6

    plain = tiny_config()  # no full-width vector: the blocks are the head's rows, the last the pooled slot
    params = IndexOptions(codec="pq").codec_params(SimpleNamespace(config=plain, doc_block_slots=plain.doc_slots))
    assert params == {"m": 8, "pooled_rows": 1, "pooled_m": 0, "pooled_bits": 6}


def test_decoding_runs_faiss_on_the_calling_thread_alone_and_restores_its_threads():
    """A gather's decode must not wake OpenMP workers (they wait for a core the lexical side thread holds); the
    setting is the calling thread's own, so another thread's count is left as it was."""
    import threading

    import faiss

    from dipair_rerank.cache.codecs import on_this_thread

    def other_thread_count() -> int:
        seen = []
        other = threading.Thread(target=lambda: seen.append(faiss.omp_get_max_threads()))
        other.start()
        other.join()
        return seen[0]

    faiss.omp_set_num_threads(2)
    before = other_thread_count()
    with on_this_thread():
        inside = faiss.omp_get_max_threads()
        beside = other_thread_count()
    assert inside == 1 and faiss.omp_get_max_threads() == 2 and beside == before
    codec = make_codec("int8", 5, 16)
    data = blocks()
    codec.train(data)
    assert np.abs(codec.decode(codec.encode(data)) - data).max() < 0.05 and faiss.omp_get_max_threads() == 2
