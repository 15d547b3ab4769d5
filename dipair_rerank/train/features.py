"""Frozen-encoder features for stage 1: each text's first ``keep`` output vectors and its mean-pooled output,
computed once and stored, so projections + head train over them for many epochs in minutes.

Why: in stage 1 the encoders are frozen, so re-running them every epoch (what ``distill.train_dipair`` does) is
>95% of the cost and changes nothing. Features are stored *before* the projection, so one store serves every
d_p and every m <= keep / n <= keep of the ablation (a smaller prefix is a slice: the encoder reads the whole
text either way).

On disk, one folder per (encoder, side, max_length, keep)::

    meta.json                       encoder identity, side, max_length, keep, hidden size
    chunk-00000.npz ...             keys [N] (text hashes), prefix [N, keep, H] fp16, mask [N, keep], pooled [N, H]

Chunks are written as they finish, so an interrupted extraction resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dipair_rerank.errors import DiPairError
from dipair_rerank.model.modeling import DiPairModel, _fp16_round, _masked_mean

logger = logging.getLogger(__name__)

META_NAME = "meta.json"


def text_key(text: str) -> str:
    """Content hash naming a text in a feature store."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def encoder_identity(model: DiPairModel, side: str, layer: int | None = None) -> str:
    """Hash of the weights of the encoder that reads ``side`` texts (features of another encoder are refused);
    with ``layer``, of the embeddings and layers below it only: the hidden states entering ``layer`` depend on
    nothing else (a query tower with left-out layers above them reads the full tower's states)."""
    encoder = model.query_encoder if side == "query" else model.doc_encoder
    below = None if layer is None else ("embeddings.", *(f"encoder.layer.{i}." for i in range(layer)))
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        if below is not None and not name.startswith(below):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy()[:64].tobytes())
    return digest.hexdigest()[:16]


class FeatureStore:
    """Features of many texts, looked up by ``text_key``; arrays live in memory (fp16 prefixes)."""

    def __init__(self, folder: Path, meta: dict, keys: list[str], prefix: np.ndarray, mask: np.ndarray,
                 pooled: np.ndarray):
        self.folder = folder
        self.meta = meta
        self.keys = keys
        self.row_of = {key: row for row, key in enumerate(keys)}
        self.prefix = prefix
        self.mask = mask
        self.pooled = pooled

    @property
    def keep(self) -> int:
        return int(self.meta["keep"])

    def rows(self, texts: Sequence[str]) -> np.ndarray:
        try:
            return np.asarray([self.row_of[text_key(t)] for t in texts], dtype=np.int64)
        except KeyError as exc:
            raise DiPairError(f"{self.folder}: a text has no features (extract them first)") from exc

    def __len__(self) -> int:
        return len(self.keys)


def _chunks(folder: Path) -> list[Path]:
    return sorted(folder.glob("chunk-*.npz"))


def _load(folder: Path, meta: dict) -> FeatureStore:
    """Read every chunk into arrays allocated once (a top-layer input store is ~5 GB: no concatenated copy)."""
    chunks = _chunks(folder)
    keys: list[str] = []
    for chunk in chunks:
        with np.load(chunk) as data:
            keys.extend(str(k) for k in data["keys"])
    hidden, keep = int(meta["hidden"]), int(meta["keep"])
    prefix = np.empty((len(keys), keep, hidden), np.float16)
    mask = np.empty((len(keys), keep), bool)
    pooled = np.empty((len(keys), hidden), np.float32)
    row = 0
    for chunk in chunks:
        with np.load(chunk) as data:
            part = data["prefix"]
            end = row + len(part)
            prefix[row:end], mask[row:end], pooled[row:end] = part, data["mask"], data["pooled"]
            del part
        row = end
    return FeatureStore(folder, meta, keys, prefix, mask, pooled)


@torch.inference_mode()
def extract_features(
    model: DiPairModel,
    texts: Sequence[str],
    folder: str | Path,
    *,
    side: str,
    keep: int,
    max_length: int | None = None,
    layer: int | None = None,
    batch_size: int = 64,
    chunk_size: int = 2048,
    progress: bool = True,
) -> FeatureStore:
    """Encode the ``texts`` not yet in ``folder`` with the model's frozen ``side`` encoder; return the store.

    Args:
        model: supplies the tokenizer and the encoder (its head is not used).
        texts: texts to have features for (duplicates are encoded once).
        folder: the store (created, or extended when it already holds other texts).
        side: "query" or "doc".
        keep: output vectors kept per text (the largest m or n to be trained).
        max_length: tokens read (default: the model config's for that side).
        layer: store the hidden states entering encoder layer ``layer`` (0 = the embeddings) instead of the
            outputs: the input of the layers trained above it (``query_tuned_layers``, ``doc_tuned_layer``);
            use keep = max_length. ``pooled`` is the mean of the frozen encoder's outputs either way.
    """
    if side not in ("query", "doc"):
        raise DiPairError(f"side must be 'query' or 'doc', got {side!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    max_length = max_length or (model.config.query_max_length if side == "query" else model.config.doc_max_length)
    meta = {"encoder": encoder_identity(model, side, layer), "side": side, "max_length": max_length, "keep": keep,
            "hidden": model.hidden_size}
    if layer is not None:
        meta["layer"] = layer
    meta_path = folder / META_NAME
    if meta_path.is_file():
        stored = json.loads(meta_path.read_text())
        if stored != meta:
            raise DiPairError(f"{folder} holds features of another encoder/shape ({stored}); use a new folder")
    else:
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    done: set[str] = set()
    for chunk in _chunks(folder):
        with np.load(chunk) as data:
            done.update(str(k) for k in data["keys"])
    todo_texts: dict[str, str] = {}
    for text in texts:
        key = text_key(text)
        if key not in done:
            todo_texts.setdefault(key, text)
    encoder = model.query_encoder if side == "query" else model.doc_encoder
    encoder.eval()
    order = sorted(todo_texts, key=lambda k: len(todo_texts[k]))  # similar lengths share a batch
    next_chunk = len(_chunks(folder))
    with tqdm(total=len(order), desc=f"{side} features", unit="text", disable=not progress) as bar:
        for start in range(0, len(order), chunk_size):
            part = order[start : start + chunk_size]
            prefixes, masks, pooled = [], [], []
            for batch_start in range(0, len(part), batch_size):
                batch_keys = part[batch_start : batch_start + batch_size]
                batch = model.tokenize([todo_texts[k] for k in batch_keys], max_length=max_length)
                attention = batch["attention_mask"]
                outputs = encoder(input_ids=batch["input_ids"], attention_mask=attention,
                                  output_hidden_states=layer is not None)
                hidden = outputs.last_hidden_state if layer is None else outputs.hidden_states[layer]
                prefix, mask = hidden[:, :keep].float(), attention[:, :keep].bool()
                if prefix.shape[1] < keep:
                    pad = keep - prefix.shape[1]
                    prefix = F.pad(prefix, (0, 0, 0, pad))
                    mask = F.pad(mask, (0, pad), value=False)
                prefixes.append((prefix * mask.unsqueeze(-1)).to(torch.float16).numpy())
                masks.append(mask.numpy())
                pooled.append(_masked_mean(outputs.last_hidden_state, attention).float().numpy())
                bar.update(len(batch_keys))
            target = folder / f"chunk-{next_chunk:05d}.npz"
            tmp = target.with_name(target.stem + ".tmp.npz")
            np.savez(tmp, keys=np.asarray(part), prefix=np.concatenate(prefixes), mask=np.concatenate(masks),
                     pooled=np.concatenate(pooled))
            tmp.replace(target)
            next_chunk += 1
    return _load(folder, meta)


def project_features(
    model: DiPairModel,
    side: str,
    prefix: torch.Tensor,
    mask: torch.Tensor,
    pooled: torch.Tensor,
    keep: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors [B, slots, d_p], mask [B, slots]) from stored features: what ``encode_queries`` /
    ``encode_documents`` return after the encoder (a test checks the two paths agree)."""
    prefix, mask = prefix[:, :keep].float(), mask[:, :keep]
    if model.config.pooled_slot:
        prefix = torch.cat([prefix, pooled.float().unsqueeze(1)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    projection = model.query_projection if side == "query" else model.doc_projection
    vectors, mask = model.with_residual_rows(projection(prefix), mask, F.normalize(pooled.float(), dim=-1))
    if side == "doc":
        vectors = _fp16_round(vectors) * mask.unsqueeze(-1)
    return vectors, mask


def normalised_pooled(store: FeatureStore) -> np.ndarray:
    """The bi-encoder embedding of every stored text (L2-normalised mean pool, as sentence-transformers'
    all-MiniLM-L6-v2 computes it when ``max_length`` matches its 256 tokens)."""
    norms = np.linalg.norm(store.pooled, axis=1, keepdims=True)
    return store.pooled / np.maximum(norms, 1e-12)


__all__ = ["FeatureStore", "extract_features", "normalised_pooled", "project_features", "text_key"]
