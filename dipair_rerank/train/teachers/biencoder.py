"""Bi-encoder scorer for the fusion teacher: the cosine of SentenceTransformer embeddings, each text's embedding
cached on disk (``<cache_dir>/emb-<model hash>.{npy,keys}``) so it is encoded once across runs."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dipair_rerank.data.runs import Run, sort_hits
from dipair_rerank.errors import DiPairError
from dipair_rerank.train.teachers.models import TEACHER_MODELS, teacher_path
from dipair_rerank.train.teachers.text_cache import text_hash

PACKAGED_BIENCODER = "packaged:all-MiniLM-L6-v2"


class EmbeddingCache:
    """Normalised embeddings of one SentenceTransformer by text hash, in ``<dir>/emb-<hash>.{npy,keys}``:
    the bi-encoder teacher and the bi-encoder baseline of the effectiveness table encode each text once."""

    def __init__(self, cache_dir: Path | None, model_name: str):
        self.model_name = model_name
        self.vectors: dict[str, np.ndarray] = {}
        self.path: Path | None = None
        if cache_dir is not None:
            name = hashlib.sha256(model_name.encode()).hexdigest()[:12]
            self.path = Path(cache_dir) / f"emb-{name}"
            keys, vecs = self.path.with_suffix(".keys"), self.path.with_suffix(".npy")
            if keys.is_file() and vecs.is_file():
                matrix = np.load(vecs)
                for key, row in zip(keys.read_text().split(), matrix, strict=True):
                    self.vectors[key] = row

    def save(self) -> None:
        if self.path is None or not self.vectors:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.vectors)
        tmp_vecs = self.path.with_name(self.path.name + ".tmp.npy")
        np.save(tmp_vecs, np.stack([self.vectors[k] for k in keys]))
        tmp_keys = self.path.with_name(self.path.name + ".tmp.keys")
        tmp_keys.write_text("\n".join(keys) + "\n")
        tmp_vecs.replace(self.path.with_suffix(".npy"))
        tmp_keys.replace(self.path.with_suffix(".keys"))


BF16_SUFFIX = "@bf16"


def load_biencoder(model: str = PACKAGED_BIENCODER, *, device: str = "cpu"):
    """A SentenceTransformer; ``packaged:all-MiniLM-L6-v2`` is the offline wheel's copy; a name ending in
    ``@bf16`` loads the model in bf16."""
    import torch
    from sentence_transformers import SentenceTransformer

    from dipair_rerank.model.config import resolve_encoder_path

    model = resolve_biencoder(model)
    path, bf16 = (model[: -len(BF16_SUFFIX)], True) if model.endswith(BF16_SUFFIX) else (model, False)
    try:
        return SentenceTransformer(resolve_encoder_path(path), device=device,
                                   model_kwargs={"torch_dtype": torch.bfloat16} if bf16 else None)
    except Exception as exc:  # a bad path or id: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DiPairError(f"cannot load bi-encoder {model!r}: {first}") from exc


def resolve_biencoder(model: str) -> str:
    """``model`` with the name of a fetched teacher (``all-mpnet-base-v2``, ``dipair-rerank fetch-teachers``)
    replaced by its folder; an id, a path or the packaged MiniLM as they are."""
    base, bf16 = (model[: -len(BF16_SUFFIX)], BF16_SUFFIX) if model.endswith(BF16_SUFFIX) else (model, "")
    if base in TEACHER_MODELS and not Path(base).exists():
        return str(teacher_path(base)) + bf16
    return model


def embed(
    texts: Sequence[str],
    *,
    model: str = PACKAGED_BIENCODER,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    chunk: int = 2048,
    progress: bool = True,
) -> np.ndarray:
    """L2-normalised embeddings [len(texts), dim] (fp32), encoding only texts not in the cache; the cache is
    saved every ``chunk`` texts so an interrupted run keeps its work."""
    model = resolve_biencoder(model)
    cache = EmbeddingCache(cache_dir, model)
    keys = [text_hash(t) for t in texts]
    todo = list(dict.fromkeys(k for k in keys if k not in cache.vectors))
    if todo:
        text_of = dict(zip(keys, texts))
        encoder = load_biencoder(model, device=device)
        todo.sort(key=lambda k: -len(text_of[k]))
        with tqdm(total=len(todo), desc="bi-encoder", unit="text", disable=not progress) as bar:
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                vectors = encoder.encode([text_of[k] for k in part], batch_size=batch_size,
                                         normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False)
                for key, vector in zip(part, vectors.float().cpu().numpy(), strict=True):
                    cache.vectors[key] = vector.astype(np.float32)
                cache.save()
                bar.update(len(part))
    return np.stack([cache.vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)


def biencoder_scores(
    topics: Mapping[str, str],
    candidates: Run,
    doc_text: Mapping[str, str],
    *,
    model: str = PACKAGED_BIENCODER,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
) -> Run:
    """Cosine of query and document embeddings for every candidate pair, best first."""
    qids = [q for q in candidates if q in topics]
    docids = list(dict.fromkeys(d for q in qids for d, _ in candidates[q]))
    q_vecs = embed([topics[q] for q in qids], model=model, cache_dir=cache_dir, batch_size=batch_size,
                   device=device, progress=progress)
    d_vecs = embed([doc_text[d] for d in docids], model=model, cache_dir=cache_dir, batch_size=batch_size,
                   device=device, progress=progress)
    row = {d: i for i, d in enumerate(docids)}
    run: Run = {}
    for qi, qid in enumerate(qids):
        rows = [row[d] for d, _ in candidates[qid]]
        scores = d_vecs[rows] @ q_vecs[qi]
        run[qid] = sort_hits(zip((d for d, _ in candidates[qid]), scores.astype(float).tolist()))
    return run


__all__ = ["BF16_SUFFIX", "PACKAGED_BIENCODER", "EmbeddingCache", "biencoder_scores", "embed", "load_biencoder",
           "resolve_biencoder"]
