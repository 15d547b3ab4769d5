"""Write a prefix cache in fixed-size shards; each shard is published by rename with a JSON of its rows and
checksum, so an interrupted build resumes from the completed shards."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dipair_rerank.cache.codecs import (
    CODEC_STATE,
    Codec,
    bytes_per_row,
    load_codec,
    make_codec,
    save_codec_state,
    with_pooled_rows,
)
from dipair_rerank.cache.docids import ROWS_NAME, SORTED_NAME, write_docid_lookup
from dipair_rerank.model.lexical import TermWeights, stored_terms

CACHE_CONFIG = "cache.json"
FORMAT_VERSION = 1
BLOCK_KINDS = ("vectors", "lengths")
LEXICAL_KINDS = ("lexical-offsets", "lexical-terms", "lexical-weights")
"""Per shard, a model with a lexical channel also stores each document's SPLADE terms as CSR arrays (offsets
int64 [rows + 1], term ids uint16, weights fp16), beside its blocks and checked the same way."""


def shard_kinds(shard_meta: dict[str, Any]) -> tuple[str, ...]:
    """The files a shard has, from its JSON."""
    return BLOCK_KINDS + (LEXICAL_KINDS if "lexical-terms_bytes" in shard_meta else ())


def shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@dataclass
class CacheWriter:
    """Writes ``folder/shard-XXXXX.{vectors,lengths}.npy`` + ``.json`` and, on ``finish``, ``cache.json``.

    Args:
        folder: the cache folder (``indexes/NAME/dipair`` while staging).
        model_fingerprint: identity of the model whose document branch produced the vectors.
        model_config: that model's DiPairConfig as a dict (recorded for users and checks).
        slots / dim: block shape per document.
        shard_rows: documents per shard.
        codec / codec_params: how vectors are stored (see cache/codecs.py); a codec that needs training is
            trained on the first shard written (or ``train_codec``) and its state kept in the folder, so a
            resumed build encodes the rest identically. pq params that code a pooled part without saying how
            many rows it spans get ``model_config``'s (``codecs.with_pooled_rows``).
    """

    folder: Path
    model_fingerprint: str
    model_config: dict[str, Any]
    slots: int
    dim: int
    shard_rows: int = 65536
    codec_name: str = "fp16"
    codec_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.codec_name == "pq":
            self.codec_params = with_pooled_rows(self.codec_params, self.model_config, self.slots)
        trained = self.codec_name == "fp16" or (self.folder / CODEC_STATE).is_file()
        if trained:
            self.codec: Codec = load_codec(self.codec_name, self.slots, self.dim, self.codec_params, self.folder)
        else:
            self.codec = make_codec(self.codec_name, self.slots, self.dim, params=self.codec_params)
        self.codec_trained = trained

    def train_codec(self, vectors: np.ndarray) -> None:
        """Fit the codec on ``vectors`` [rows, slots, dim] and keep its state beside the shards."""
        self.codec.train(vectors)
        save_codec_state(self.codec, self.folder)
        self.codec_trained = True

    def shard_done(self, index: int, rows: int) -> bool:
        """A shard counts as written when its JSON exists and names this model and row count."""
        meta_path = self.folder / f"{shard_stem(index)}.json"
        if not meta_path.is_file():
            return False
        meta = json.loads(meta_path.read_text())
        return meta.get("rows") == rows and meta.get("model_fingerprint") == self.model_fingerprint

    def write_shard(self, index: int, vectors: np.ndarray, lengths: np.ndarray,
                    lexical: list[TermWeights] | None = None) -> None:
        if vectors.shape[1:] != (self.slots, self.dim):
            raise ValueError(f"shard block shape {vectors.shape[1:]} != {(self.slots, self.dim)}")
        if not self.codec_trained:
            self.train_codec(vectors)
        stem = shard_stem(index)
        arrays = {"vectors": self.codec.encode(vectors), "lengths": np.asarray(lengths, dtype=np.uint16)}
        if lexical is not None:
            arrays.update(zip(LEXICAL_KINDS, stored_terms(lexical)))
        meta: dict[str, Any] = {"rows": int(len(vectors)), "model_fingerprint": self.model_fingerprint}
        for kind, array in arrays.items():
            path = self.folder / f"{stem}.{kind}.npy"
            _save_atomic(path, np.ascontiguousarray(array))
            meta[f"{kind}_sha256"] = file_sha256(path)
            meta[f"{kind}_bytes"] = path.stat().st_size
        write_json_atomic(self.folder / f"{stem}.json", meta)

    def finish(self, docids: list[str]) -> None:
        """Write the docid lookup and ``cache.json`` (the cache is complete only once this exists)."""
        num_shards = -(-len(docids) // self.shard_rows)
        shards = []
        for index in range(num_shards):
            meta = json.loads((self.folder / f"{shard_stem(index)}.json").read_text())
            shards.append({"stem": shard_stem(index), **meta})
        if sum(shard["rows"] for shard in shards) != len(docids):
            raise RuntimeError("cache shards do not cover the corpus")
        lexical_bytes = sum(sum(shard.get(f"{kind}_bytes", 0) for kind in LEXICAL_KINDS) for shard in shards)
        write_docid_lookup(self.folder, docids)
        side_files = [name for name in (SORTED_NAME, ROWS_NAME, CODEC_STATE) if (self.folder / name).is_file()]
        write_json_atomic(
            self.folder / CACHE_CONFIG,
            {
                "files_sha256": {name: file_sha256(self.folder / name) for name in side_files},  # checked by verify
                "format_version": FORMAT_VERSION,
                "model_fingerprint": self.model_fingerprint,
                "model_config": self.model_config,
                "codec": self.codec.name,
                "codec_params": self.codec.params(),
                "row_shape": list(self.codec.row_shape),
                "bytes_per_doc": bytes_per_row(self.codec) + 2,  # + the uint16 prefix length
                "lexical": "lexical-terms_bytes" in shards[0] if shards else False,
                "lexical_bytes_per_doc": round(lexical_bytes / max(1, len(docids)), 1),
                "num_docs": len(docids),
                "slots": self.slots,
                "dim": self.dim,
                "shard_rows": self.shard_rows,
                "shards": shards,
            },
        )
