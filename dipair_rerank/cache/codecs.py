"""How cached document blocks are stored: ``fp16`` (exact), ``int8`` (faiss scalar quantiser, 2x smaller) or
``pq`` (faiss product quantisers, about 18x smaller with the default model). Codes are decoded at gather time,
for the k candidates only. A codec's trained state is a plain float32 array (``codec.npy``), never a pickle.

Every codec turns a block [rows, slots, dim] into codes [rows, *row_shape] and back.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)

CODEC_STATE = "codec.npy"
CODEC_PARAMS = "codec.json"  # the parameters training settled on (pq may lower nbits on tiny corpora)
CODECS = ("fp16", "int8", "pq")
POOLED_BITS = (4, 6, 8)  # scalar-quantiser widths faiss offers for the pooled vector under pq


class Codec(Protocol):
    name: str
    code_dtype: np.dtype
    row_shape: tuple[int, ...]

    def train(self, blocks: np.ndarray) -> None: ...

    def encode(self, blocks: np.ndarray) -> np.ndarray: ...

    def decode(self, codes: np.ndarray) -> np.ndarray: ...

    def params(self) -> dict[str, Any]: ...

    def state(self) -> np.ndarray | None: ...


def bytes_per_row(codec: Codec) -> int:
    return int(np.prod(codec.row_shape)) * codec.code_dtype.itemsize


def _flat(vectors: np.ndarray, dim: int) -> np.ndarray:
    return np.ascontiguousarray(vectors.reshape(-1, dim), dtype=np.float32)


@contextmanager
def on_this_thread() -> Iterator[None]:
    """faiss calls made inside run on the calling thread alone (OpenMP's thread count is per thread: others keep
    theirs). Why, for decoding: a gather's decode is too small to share, and an OpenMP worker woken for it waits for
    a core; with the other core busy (the lexical projection runs beside the gather) a 100-candidate int8 decode
    took 0.87 ms instead of 0.14 (eval/bench_scale.py's case)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def scalar_quantizer(dim: int, bits: int, state: np.ndarray | None = None):
    """A faiss ScalarQuantizer of ``bits`` (4, 6 or 8) per value, trained state restored when given."""
    import faiss

    kinds = {4: faiss.ScalarQuantizer.QT_4bit, 6: faiss.ScalarQuantizer.QT_6bit, 8: faiss.ScalarQuantizer.QT_8bit}
    quantizer = faiss.ScalarQuantizer(dim, kinds[bits])
    if state is not None:
        faiss.copy_array_to_vector(np.ascontiguousarray(state, dtype=np.float32), quantizer.trained)
    return quantizer


class Fp16Codec:
    """The model's document vectors are fp16-exact, so fp16 storage is lossless."""

    name = "fp16"
    code_dtype = np.dtype(np.float16)

    def __init__(self, slots: int, dim: int):
        self.row_shape = (slots, dim)

    def train(self, blocks: np.ndarray) -> None:
        pass

    def encode(self, blocks: np.ndarray) -> np.ndarray:
        return blocks.astype(np.float16, copy=False)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return codes

    def params(self) -> dict[str, Any]:
        return {}

    def state(self) -> np.ndarray | None:
        return None


class Int8Codec:
    """Per-dimension 8-bit scalar quantisation (range trained on a sample): 1 byte per value."""

    name = "int8"
    code_dtype = np.dtype(np.uint8)

    def __init__(self, slots: int, dim: int, state: np.ndarray | None = None):
        self.slots, self.dim = slots, dim
        self.quantizer = scalar_quantizer(dim, 8, state)
        self.row_shape = (slots, int(self.quantizer.code_size))

    def train(self, blocks: np.ndarray) -> None:
        self.quantizer.train(_flat(blocks, self.dim))

    def encode(self, blocks: np.ndarray) -> np.ndarray:
        return self.quantizer.compute_codes(_flat(blocks, self.dim)).reshape(len(blocks), *self.row_shape)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        flat = np.ascontiguousarray(codes.reshape(-1, self.row_shape[1]))
        with on_this_thread():
            return self.quantizer.decode(flat).reshape(len(codes), self.slots, self.dim)

    def params(self) -> dict[str, Any]:
        return {}

    def state(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self.quantizer.trained)


class PQCodec:
    """Product quantisation of the prefix vectors: ``m`` sub-vectors each, each replaced by one of 2**nbits
    trained centroids (``m`` bytes per vector).

    The block's last ``pooled_rows`` rows (the pooled vector the score reads directly: the model's full-width
    pooled vector spread over several rows, or its one projected pooled slot) are coded apart, as ONE vector of
    ``pooled_rows * dim`` values with its own quantiser: ``pooled_m`` sub-vectors of 2**nbits centroids
    (``pooled_m`` bytes) when set, else a scalar quantiser of ``pooled_bits`` bits per value. Coarse codes were
    measured to hurt there and nowhere else (prefix vectors take 8 bytes each at no measured loss;
    docs/design-decisions.md). Params saved before ``pooled_rows`` existed mean the last row alone, at
    ``pooled_bits`` (when set): such caches decode as they always did.

    Bytes per block: ``(slots - pooled_rows) * m`` + ``pooled_m`` or ``ceil(pooled_rows * dim * pooled_bits / 8)``
    (with ``nbits`` = 8).
    """

    name = "pq"
    code_dtype = np.dtype(np.uint8)

    def __init__(self, slots: int, dim: int, m: int = 8, nbits: int = 8, pooled_bits: int = 0,
                 pooled_rows: int | None = None, pooled_m: int = 0, seed: int = 1234,
                 state: np.ndarray | None = None):
        if dim % m:
            raise DiPairError(f"pq: width {dim} is not divisible by --pq-m {m}")
        if pooled_bits not in (0, *POOLED_BITS):
            raise DiPairError(f"pq: pooled vector bits must be one of {POOLED_BITS}, got {pooled_bits}")
        if pooled_bits and pooled_m:
            raise DiPairError("pq: the pooled vector is coded either by scalar (pooled_bits) or product "
                              "quantisation (pooled_m), not both")
        if pooled_rows is None:  # params written before pooled_rows existed: the last row alone, when coded apart
            pooled_rows = 1 if pooled_bits else 0
        if not 0 <= pooled_rows <= slots or bool(pooled_rows) != bool(pooled_bits or pooled_m):
            raise DiPairError(f"pq: {pooled_rows} pooled rows of {slots}, with pooled_bits {pooled_bits} and "
                              f"pooled_m {pooled_m}: a pooled part needs rows and one way to code them")
        if pooled_m and (pooled_rows * dim) % pooled_m:
            raise DiPairError(f"pq: the pooled width {pooled_rows * dim} is not divisible by pooled_m {pooled_m}")
        self.slots, self.dim, self.m, self.nbits, self.seed = slots, dim, m, nbits, seed
        self.pooled_bits, self.pooled_rows, self.pooled_m = pooled_bits, pooled_rows, pooled_m
        self.pq_slots = slots - pooled_rows
        self.pooled_width = pooled_rows * dim
        self._make_quantizers(state)

    def _make_quantizers(self, state: np.ndarray | None = None) -> None:
        import faiss

        self.quantizer = faiss.ProductQuantizer(self.dim, self.m, self.nbits)
        self.pooled = None
        if self.pooled_m:
            self.pooled = faiss.ProductQuantizer(self.pooled_width, self.pooled_m, self.nbits)
        elif self.pooled_bits:
            self.pooled = scalar_quantizer(self.pooled_width, self.pooled_bits)
        if state is not None:
            pq_state, pooled_state = np.split(state, [self.quantizer.centroids.size()])
            faiss.copy_array_to_vector(np.ascontiguousarray(pq_state, dtype=np.float32), self.quantizer.centroids)
            if self.pooled is not None:
                target = self.pooled.centroids if self.pooled_m else self.pooled.trained
                faiss.copy_array_to_vector(np.ascontiguousarray(pooled_state, dtype=np.float32), target)
        self.pq_bytes = self.pq_slots * int(self.quantizer.code_size)
        self.row_shape = (self.pq_bytes + (int(self.pooled.code_size) if self.pooled is not None else 0),)

    def _pooled(self, blocks: np.ndarray) -> np.ndarray:
        return _flat(blocks[:, self.pq_slots :], self.pooled_width)

    def train(self, blocks: np.ndarray) -> None:
        sample = _flat(blocks[:, : self.pq_slots], self.dim)
        # 2**nbits centroids need as many vectors: the smaller sample (one pooled vector per block) decides
        smallest = len(blocks) if self.pooled_m else len(sample)
        nbits = min(self.nbits, int(math.log2(max(smallest, 2))))
        if nbits < self.nbits:  # tiny corpora
            logger.warning("pq: %d training vectors; using %d-bit codes", smallest, nbits)
            self.nbits = nbits
            self._make_quantizers()
        self.quantizer.cp.seed = self.seed  # k-means initialisation: the seed is part of the recorded params
        self.quantizer.train(sample)
        if self.pooled_m:
            self.pooled.cp.seed = self.seed
            self.pooled.cp.min_points_per_centroid = 1  # one vector per block: few per centroid is expected
            self.pooled.train(self._pooled(blocks))
        elif self.pooled is not None:
            self.pooled.train(self._pooled(blocks))

    def encode(self, blocks: np.ndarray) -> np.ndarray:
        rows = len(blocks)
        codes = self.quantizer.compute_codes(_flat(blocks[:, : self.pq_slots], self.dim)).reshape(rows, -1)
        if self.pooled is not None:
            codes = np.concatenate([codes, self.pooled.compute_codes(self._pooled(blocks))], 1)
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        rows = len(codes)
        out = np.empty((rows, self.slots, self.dim), dtype=np.float32)
        prefix = np.ascontiguousarray(codes[:, : self.pq_bytes]).reshape(rows * self.pq_slots, -1)
        with on_this_thread():
            out[:, : self.pq_slots] = self.quantizer.decode(prefix).reshape(rows, self.pq_slots, self.dim)
            if self.pooled is not None:
                pooled = self.pooled.decode(np.ascontiguousarray(codes[:, self.pq_bytes :]))
                out[:, self.pq_slots :] = pooled.reshape(rows, self.pooled_rows, self.dim)
        return out

    def params(self) -> dict[str, Any]:
        return {"m": self.m, "nbits": self.nbits, "pooled_bits": self.pooled_bits, "pooled_rows": self.pooled_rows,
                "pooled_m": self.pooled_m, "seed": self.seed}

    def state(self) -> np.ndarray:
        import faiss

        parts = [faiss.vector_to_array(self.quantizer.centroids)]
        if self.pooled is not None:
            parts.append(faiss.vector_to_array(self.pooled.centroids if self.pooled_m else self.pooled.trained))
        return np.concatenate(parts)


def pooled_rows(model_config: dict[str, Any], slots: int) -> int:
    """How many trailing rows of a ``slots``-row document block hold the pooled vector the score reads directly:
    the full-width pooled vector's rows (``full_width_residual``: every row after the head's), else the one
    projected pooled slot (``pooled_slot``), else none."""
    if model_config.get("full_width_residual"):
        return slots - (model_config["doc_prefix"] + int(bool(model_config.get("pooled_slot"))))
    return 1 if model_config.get("pooled_slot") else 0


def with_pooled_rows(params: dict[str, Any], model_config: dict[str, Any], slots: int) -> dict[str, Any]:
    """pq ``params`` with ``pooled_rows`` filled in from the model that made the blocks, when they code a pooled
    part and do not say how many rows it spans (as given otherwise, or when the model is not known); no pooled
    part for a model without one."""
    if "pooled_rows" in params or not (params.get("pooled_bits") or params.get("pooled_m")) or not model_config:
        return params
    rows = pooled_rows(model_config, slots)
    return {**params, "pooled_rows": rows, **({} if rows else {"pooled_bits": 0, "pooled_m": 0})}


def make_codec(name: str, slots: int, dim: int, *, params: dict[str, Any] | None = None,
               state: np.ndarray | None = None) -> Codec:
    params = params or {}
    if name == "fp16":
        return Fp16Codec(slots, dim)
    if name == "int8":
        return Int8Codec(slots, dim, state=state)
    if name == "pq":
        return PQCodec(slots, dim, m=params.get("m", 8), nbits=params.get("nbits", 8),
                       pooled_bits=params.get("pooled_bits", 0), pooled_rows=params.get("pooled_rows"),
                       pooled_m=params.get("pooled_m", 0), seed=params.get("seed", 1234), state=state)
    raise DiPairError(f"unknown codec {name!r} (choose from {', '.join(CODECS)})")


def save_codec_state(codec: Codec, folder: Path) -> None:
    state = codec.state()
    if state is not None:
        (folder / CODEC_PARAMS).write_text(json.dumps(codec.params()))
        np.save(folder / CODEC_STATE, state, allow_pickle=False)  # written last: its presence means trained


def load_codec(name: str, slots: int, dim: int, params: dict[str, Any], folder: Path) -> Codec:
    path = folder / CODEC_STATE
    state = np.load(path, allow_pickle=False) if path.is_file() else None
    if (folder / CODEC_PARAMS).is_file():
        params = json.loads((folder / CODEC_PARAMS).read_text())
    if name != "fp16" and state is None:
        raise DiPairError(f"cache at {folder} uses codec {name} but has no {CODEC_STATE}")
    return make_codec(name, slots, dim, params=params, state=state)
