"""``dipair-rerank index``: corpus -> Lucene BM25 index, optional FAISS index, and the DiPair prefix cache.

Everything is built in a staging folder beside the target (``indexes/.NAME.building``) and published by
rename once complete, so readers never see half an index. Rerunning the same command after an interruption
resumes: the normalised corpus, the Lucene index and every finished cache shard are kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dipair_rerank.cache.writer import CacheWriter, write_json_atomic
from dipair_rerank.data.corpus import corpus_fingerprint, read_corpus
from dipair_rerank.encoding import encode_documents
from dipair_rerank.errors import DiPairError
from dipair_rerank.index_layout import MANIFEST, IndexLayout
from dipair_rerank.model import DiPairModel, load_model

logger = logging.getLogger(__name__)

BUILD_STATE = "build.json"
NORMALISED = "corpus.jsonl"


@dataclass
class IndexOptions:
    """How to build an index.

    Attributes:
        dense: also build a FAISS flat inner-product index of mean-pooled encoder vectors.
        batch_size: documents per encoder batch.
        shard_rows: documents per cache shard (the unit of resumption).
        threads: Lucene indexing threads and torch threads.
    """

    dense: bool = False
    batch_size: int = 32
    shard_rows: int = 65536
    threads: int = 2
    progress: bool = True


def _staging_dir(index_dir: Path) -> Path:
    return index_dir.parent / f".{index_dir.name}.building"


def _normalise_corpus(corpus: str | Path, target: Path, show: bool) -> int:
    """Validate the whole corpus and write it as Pyserini JsonCollection lines (id, contents)."""
    tmp = target.with_name(target.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for doc in tqdm(read_corpus(corpus), desc="reading corpus", unit="doc", disable=not show):
            handle.write(json.dumps({"id": doc.docid, "contents": doc.text}, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, target)
    return count


def _iter_normalised(path: Path) -> Iterator[tuple[str, str]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            yield record["id"], record["contents"]


def _build_lucene(corpus: Path, target: Path, count: int, options: IndexOptions) -> None:
    from dipair_rerank._java import ensure_jvm

    ensure_jvm()
    from pyserini.index.lucene import LuceneIndexer

    tmp = target.with_name(target.name + ".tmp")  # Java resolves relative paths against its own start-up cwd
    shutil.rmtree(tmp, ignore_errors=True)
    indexer = LuceneIndexer(
        args=["-index", str(tmp.resolve()), "-storeRaw", "-storeContents", "-storePositions", "-storeDocvectors"],
        threads=options.threads,
    )
    batch: list[str] = []
    with corpus.open(encoding="utf-8") as handle, tqdm(
        total=count, desc="BM25 index", unit="doc", disable=not options.progress
    ) as bar:
        for line in handle:
            batch.append(line)
            if len(batch) == 4096:
                indexer.add_batch_raw(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            indexer.add_batch_raw(batch)
            bar.update(len(batch))
    indexer.close()
    os.replace(tmp, target)


def _build_cache(
    model: DiPairModel, corpus: Path, staging: Path, count: int, options: IndexOptions
) -> list[str]:
    writer = CacheWriter(
        staging / "dipair",
        model_fingerprint=model.fingerprint(),
        model_config=model.config.to_dict(),
        slots=model.config.doc_slots,
        dim=model.config.proj_dim,
        shard_rows=options.shard_rows,
    )
    dense_dir = staging / "dense"
    if options.dense:
        dense_dir.mkdir(exist_ok=True)
    docids: list[str] = []
    stream = _iter_normalised(corpus)
    with tqdm(total=count, desc="DiPair cache", unit="doc", disable=not options.progress) as bar:
        for shard in range(-(-count // options.shard_rows)):
            chunk = [next(stream) for _ in range(min(options.shard_rows, count - len(docids)))]
            docids.extend(docid for docid, _ in chunk)
            dense_path = dense_dir / f"shard-{shard:05d}.npy"
            if writer.shard_done(shard, len(chunk)) and (not options.dense or dense_path.is_file()):
                bar.update(len(chunk))
                continue
            encoded = encode_documents(model, [text for _, text in chunk], batch_size=options.batch_size, progress=bar)
            if options.dense:
                tmp = dense_path.with_name(dense_path.name + ".tmp.npy")
                np.save(tmp, encoded.pooled, allow_pickle=False)
                os.replace(tmp, dense_path)
            writer.write_shard(shard, encoded.vectors, encoded.lengths)
    writer.finish(docids)
    return docids


def _build_faiss(staging: Path, docids: list[str]) -> None:
    """Pyserini's FaissSearcher layout: ``faiss/index`` (inner product on normalised vectors) + ``faiss/docid``."""
    import faiss

    shards = sorted((staging / "dense").glob("shard-*.npy"))
    first = np.load(shards[0], mmap_mode="r")
    index = faiss.IndexFlatIP(first.shape[1])
    for path in shards:
        index.add(np.ascontiguousarray(np.load(path), dtype=np.float32))
    target = staging / "faiss"
    target.mkdir(exist_ok=True)
    faiss.write_index(index, str(target / "index"))
    (target / "docid").write_text("".join(f"{docid}\n" for docid in docids), encoding="utf-8")
    shutil.rmtree(staging / "dense")


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("dipair-rerank", "pyserini", "torch", "transformers", "faiss-cpu"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions


def _publish(staging: Path, index_dir: Path) -> None:
    """Swap the finished staging folder in; a previous index stays readable until the rename."""
    old = index_dir.parent / f".{index_dir.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if index_dir.exists():
        os.replace(index_dir, old)
    os.replace(staging, index_dir)
    shutil.rmtree(old, ignore_errors=True)


def build_index(
    corpus: str | Path,
    index_dir: str | Path,
    *,
    model: DiPairModel | str | Path | None = None,
    options: IndexOptions | None = None,
) -> IndexLayout:
    """Build (or resume building) ``index_dir`` from ``corpus``; returns its layout once published.

    Args:
        corpus: a JSONL file, a folder of them, or ``irds:<id>``.
        index_dir: target folder, e.g. ``indexes/scifact``.
        model: a DiPairModel, a ``--model`` spec (saved folder or HF id), or None for the default model.
        options: see IndexOptions.
    """
    import torch

    options = options or IndexOptions()
    torch.set_num_threads(options.threads)
    index_dir = Path(index_dir)
    model_spec = str(model) if isinstance(model, (str, Path)) else ("default" if model is None else "<in-memory>")
    if isinstance(model, (str, Path)) and Path(model).exists():
        model_spec = str(Path(model).resolve())
    model = model if isinstance(model, DiPairModel) else load_model(model)
    model.eval()
    fingerprint = model.fingerprint()
    staging = _staging_dir(index_dir)
    state = {
        "corpus": str(corpus),
        "corpus_fingerprint": corpus_fingerprint(corpus),
        "model_fingerprint": fingerprint,
        "dense": options.dense,
        "shard_rows": options.shard_rows,
    }
    state_path = staging / BUILD_STATE
    if staging.exists() and (not state_path.is_file() or json.loads(state_path.read_text()) != state):
        logger.info("discarding an unfinished build of a different corpus/model at %s", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state_path, state)

    started = time.time()
    normalised = staging / NORMALISED
    if not normalised.is_file():
        try:
            _normalise_corpus(corpus, normalised, options.progress)
        except DiPairError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    count = sum(1 for _ in normalised.open(encoding="utf-8"))
    if not (staging / "lucene").is_dir():
        _build_lucene(normalised, staging / "lucene", count, options)
    docids = _build_cache(model, normalised, staging, count, options)
    if options.dense and not (staging / "faiss" / "index").is_file():
        _build_faiss(staging, docids)

    manifest: dict[str, Any] = {
        "corpus": str(corpus),
        "corpus_fingerprint": state["corpus_fingerprint"],
        "num_docs": count,
        "components": ["lucene", "dipair"] + (["faiss"] if options.dense else []),
        "model": model_spec,
        "model_fingerprint": fingerprint,
        "build_seconds": round(time.time() - started, 1),
        "versions": _library_versions(),
    }
    normalised.unlink()
    state_path.unlink()
    write_json_atomic(staging / MANIFEST, manifest)
    _publish(staging, index_dir)
    return IndexLayout(index_dir)
