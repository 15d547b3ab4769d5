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
