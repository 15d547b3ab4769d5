"""How cached document vectors are stored: ``fp16`` (exact), ``int8`` (faiss scalar quantiser, 2x smaller) or
``pq`` (faiss product quantiser, ``m`` bytes per vector). Codes are decoded at gather time, for the k
candidates only. A codec's trained state is a plain float32 array (``codec.npy``), never a pickle."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)

CODEC_STATE = "codec.npy"
CODEC_PARAMS = "codec.json"  # the parameters training settled on (pq may lower nbits on tiny corpora)
CODECS = ("fp16", "int8", "pq")


class Codec(Protocol):
    name: str
    dim: int

    @property
    def code_dtype(self) -> np.dtype: ...

    @property
    def code_size(self) -> int: ...

    def train(self, vectors: np.ndarray) -> None: ...

    def encode(self, vectors: np.ndarray) -> np.ndarray: ...

    def decode(self, codes: np.ndarray) -> np.ndarray: ...

    def params(self) -> dict[str, Any]: ...

    def state(self) -> np.ndarray | None: ...


class Fp16Codec:
    """The model's document vectors are fp16-exact, so fp16 storage is lossless."""

    name = "fp16"
    code_dtype = np.dtype(np.float16)

    def __init__(self, dim: int):
        self.dim = dim
        self.code_size = dim

    def train(self, vectors: np.ndarray) -> None:
        pass

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return vectors.astype(np.float16, copy=False)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return codes

    def params(self) -> dict[str, Any]:
        return {}

    def state(self) -> np.ndarray | None:
        return None


class _FaissCodec:
    """Shared plumbing: faiss codecs work on [N, dim] float32; blocks are [rows, slots, dim]."""

    code_dtype = np.dtype(np.uint8)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        rows, slots, _ = vectors.shape
        flat = np.ascontiguousarray(vectors.reshape(-1, self.dim), dtype=np.float32)
        return self.quantizer.compute_codes(flat).reshape(rows, slots, self.code_size)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        rows, slots, _ = codes.shape
        flat = np.ascontiguousarray(codes.reshape(-1, self.code_size))
        return self.quantizer.decode(flat).reshape(rows, slots, self.dim)


class Int8Codec(_FaissCodec):
    """Per-dimension 8-bit scalar quantisation (range trained on a sample): 1 byte per value."""

    name = "int8"

    def __init__(self, dim: int, state: np.ndarray | None = None):
        import faiss

        self.dim = dim
        self.quantizer = faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit)
        self.code_size = int(self.quantizer.code_size)
        if state is not None:
            faiss.copy_array_to_vector(np.ascontiguousarray(state, dtype=np.float32), self.quantizer.trained)

    def train(self, vectors: np.ndarray) -> None:
        self.quantizer.train(np.ascontiguousarray(vectors.reshape(-1, self.dim), dtype=np.float32))

    def params(self) -> dict[str, Any]:
        return {}

    def state(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self.quantizer.trained)


class PQCodec(_FaissCodec):
    """Product quantisation: ``m`` sub-vectors, each replaced by one of 2**nbits trained centroids."""

    name = "pq"

    def __init__(self, dim: int, m: int = 8, nbits: int = 8, state: np.ndarray | None = None):
        import faiss

        if dim % m:
            raise DiPairError(f"pq: width {dim} is not divisible by --pq-m {m}")
        self.dim, self.m, self.nbits = dim, m, nbits
        self.quantizer = faiss.ProductQuantizer(dim, m, nbits)
        self.code_size = int(self.quantizer.code_size)
        if state is not None:
            faiss.copy_array_to_vector(np.ascontiguousarray(state, dtype=np.float32), self.quantizer.centroids)

    def train(self, vectors: np.ndarray) -> None:
        import faiss

        sample = np.ascontiguousarray(vectors.reshape(-1, self.dim), dtype=np.float32)
        nbits = min(self.nbits, int(math.log2(max(len(sample), 2))))
        if nbits < self.nbits:  # too few vectors for 2**nbits centroids (tiny corpora)
            logger.warning("pq: %d training vectors; using %d-bit codes", len(sample), nbits)
            self.nbits = nbits
            self.quantizer = faiss.ProductQuantizer(self.dim, self.m, nbits)
            self.code_size = int(self.quantizer.code_size)
        self.quantizer.train(sample)

    def params(self) -> dict[str, Any]:
        return {"m": self.m, "nbits": self.nbits}

    def state(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self.quantizer.centroids)


def make_codec(name: str, dim: int, *, params: dict[str, Any] | None = None, state: np.ndarray | None = None) -> Codec:
    params = params or {}
    if name == "fp16":
        return Fp16Codec(dim)
    if name == "int8":
        return Int8Codec(dim, state=state)
    if name == "pq":
        return PQCodec(dim, m=params.get("m", 8), nbits=params.get("nbits", 8), state=state)
    raise DiPairError(f"unknown codec {name!r} (choose from {', '.join(CODECS)})")


def save_codec_state(codec: Codec, folder: Path) -> None:
    state = codec.state()
    if state is not None:
        (folder / CODEC_PARAMS).write_text(json.dumps(codec.params()))
        np.save(folder / CODEC_STATE, state, allow_pickle=False)  # written last: its presence means trained


def load_codec(name: str, dim: int, params: dict[str, Any], folder: Path) -> Codec:
    path = folder / CODEC_STATE
    state = np.load(path, allow_pickle=False) if path.is_file() else None
    if (folder / CODEC_PARAMS).is_file():
        params = json.loads((folder / CODEC_PARAMS).read_text())
    if name != "fp16" and state is None:
        raise DiPairError(f"cache at {folder} uses codec {name} but has no {CODEC_STATE}")
    return make_codec(name, dim, params=params, state=state)
