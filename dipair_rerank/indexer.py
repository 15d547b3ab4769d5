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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dipair_rerank.cache.codecs import make_codec
from dipair_rerank.cache.writer import CacheWriter, write_json_atomic
from dipair_rerank.data.corpus import corpus_fingerprint, read_corpus
from dipair_rerank.encoding import encode_documents
from dipair_rerank.errors import DiPairError
from dipair_rerank.index_layout import MANIFEST, IndexLayout
from dipair_rerank.model import DiPairModel, load_model

logger = logging.getLogger(__name__)

BUILD_STATE = "build.json"
NORMALISED = "corpus.jsonl"
PUBLISH_CLAIM = "publishing.lock"
IN_INDEX_MODEL = "model"  # an in-memory model is saved here, inside the index, and the manifest points at it


@dataclass
class IndexOptions:
    """How to build an index.

    Attributes:
        dense: also build a FAISS flat inner-product index of mean-pooled encoder vectors.
        batch_size: documents per encoder batch.
        shard_rows: documents per cache shard (the unit of resumption).
        threads: Lucene indexing threads and torch threads.
        codec / pq_m / pq_pooled_bits: cache storage, ``fp16`` (exact), ``int8`` or ``pq`` (``pq_m`` bytes per
            prefix vector; the model's pooled vector scalar-quantised to ``pq_pooled_bits`` bits per value).
        shard_id / num_shards: build only every ``num_shards``-th cache shard starting at ``shard_id`` (split the
            work over processes or machines sharing the folder); the run that completes the set publishes.
        engine / ray_address / workers: ``ray`` encodes shards on a Ray actor pool (``pip install
            dipair-rerank[ray]``), one model per actor.
    """

    dense: bool = False
    batch_size: int = 32
    shard_rows: int = 65536
    threads: int = 2
    progress: bool = True
    codec: str = "fp16"
    pq_m: int = 8
    pq_pooled_bits: int = 6
    shard_id: int = 0
    num_shards: int = 1
    engine: str = "local"
    ray_address: str | None = None
    workers: int = 2

    def codec_params(self, model: DiPairModel) -> dict[str, int]:
        if self.codec != "pq":
            return {}
        return {"m": self.pq_m, "pooled_bits": self.pq_pooled_bits if model.config.pooled_slot else 0}


def _staging_dir(index_dir: Path) -> Path:
    return index_dir.parent / f".{index_dir.name}.building"


def _normalise_corpus(corpus: str | Path, target: Path, show: bool) -> int:
    """Validate the whole corpus and write it as Pyserini JsonCollection lines (id, contents)."""
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for doc in tqdm(read_corpus(corpus), desc="reading corpus", unit="doc", disable=not show):
            handle.write(json.dumps({"id": doc.docid, "contents": doc.text}, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, target)
    return count


def _build_lucene(corpus: Path, target: Path, count: int, options: IndexOptions) -> None:
    from dipair_rerank._java import ensure_jvm

    ensure_jvm()
    from pyserini.index.lucene import LuceneIndexer

    tmp = target.with_name(f"{target.name}.tmp")  # Java resolves relative paths against its own start-up cwd
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


def shard_spans(corpus: Path, shard_rows: int) -> list[tuple[int, int, int]]:
    """(byte start, byte end, rows) of each shard's lines in the normalised corpus: workers read only theirs."""
    spans, start, rows, offset = [], 0, 0, 0
    with corpus.open("rb") as handle:
        for line in handle:
            offset += len(line)
            rows += 1
            if rows == shard_rows:
                spans.append((start, offset, rows))
                start, rows = offset, 0
    if rows:
        spans.append((start, offset, rows))
    return spans


def read_span(corpus: Path, span: tuple[int, int, int]) -> list[tuple[str, str]]:
    with corpus.open("rb") as handle:
        handle.seek(span[0])
        lines = handle.read(span[1] - span[0]).decode("utf-8").splitlines()
    return [(record["id"], record["contents"]) for record in map(json.loads, lines)]


def cache_writer(model: DiPairModel, staging: Path, options: IndexOptions) -> CacheWriter:
    return CacheWriter(
        staging / "dipair",
        model_fingerprint=model.fingerprint(),
        model_config=model.config.to_dict(),
        slots=model.config.doc_slots,
        dim=model.config.proj_dim,
        shard_rows=options.shard_rows,
        codec_name=options.codec,
        codec_params=options.codec_params(model),
    )


def shard_done(writer: CacheWriter, staging: Path, shard: int, rows: int, dense: bool) -> bool:
    return writer.shard_done(shard, rows) and (not dense or (staging / "dense" / f"shard-{shard:05d}.npy").is_file())


def encode_shard(model: DiPairModel, writer: CacheWriter, staging: Path, shard: int, texts: list[str],
                 options: IndexOptions, progress=None) -> None:
    """Encode one shard's documents and publish its files (dense vectors first: the shard JSON comes last)."""
    encoded = encode_documents(model, texts, batch_size=options.batch_size, progress=progress)
    if options.dense:
        dense_path = staging / "dense" / f"shard-{shard:05d}.npy"
        dense_path.parent.mkdir(exist_ok=True)
        tmp = dense_path.with_name(f"{dense_path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, encoded.pooled, allow_pickle=False)
        os.replace(tmp, dense_path)
    writer.write_shard(shard, encoded.vectors, encoded.lengths)


def _ensure_codec(model: DiPairModel, writer: CacheWriter, corpus: Path, spans, options: IndexOptions) -> None:
    """Train a lossy codec on the first shard's vectors, before any worker writes codes (deterministic, so
    every slice or worker that trains it gets the same state)."""
    if not writer.codec_trained:
        texts = [text for _, text in read_span(corpus, spans[0])]
        writer.train_codec(encode_documents(model, texts, batch_size=options.batch_size).vectors)


def _build_cache(model: DiPairModel, corpus: Path, staging: Path, spans, options: IndexOptions) -> None:
    """Encode this process's shards (all, or every ``num_shards``-th from ``shard_id``) that are not done."""
    writer = cache_writer(model, staging, options)
    mine = [i for i in range(len(spans)) if i % options.num_shards == options.shard_id]
    todo = [i for i in mine if not shard_done(writer, staging, i, spans[i][2], options.dense)]
    if todo and todo[0] != 0:
        _ensure_codec(model, writer, corpus, spans, options)
    total = sum(spans[i][2] for i in mine)
    with tqdm(total=total, desc="DiPair cache", unit="doc", disable=not options.progress) as bar:
        bar.update(total - sum(spans[i][2] for i in todo))
        for shard in todo:
            texts = [text for _, text in read_span(corpus, spans[shard])]
            encode_shard(model, writer, staging, shard, texts, options, progress=bar)


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


def _claim(staging: Path, options: IndexOptions) -> bool:
    """Exactly one process (of the slices sharing a staging folder) finishes and publishes it. A claim left by a
    process that died (interrupted while publishing) is taken over; a single-process build always proceeds."""
    path = staging / PUBLISH_CLAIM
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if options.num_shards > 1 and _alive(int(path.read_text() or 0)):
            return False
        path.write_text(str(os.getpid()))
        return True
    with os.fdopen(fd, "w") as handle:
        handle.write(str(os.getpid()))
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return pid > 0


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
    model_spec = str(model) if isinstance(model, (str, Path)) else ("default" if model is None else IN_INDEX_MODEL)
    if isinstance(model, (str, Path)) and Path(model).exists():
        model_spec = str(Path(model).resolve())
    model = model if isinstance(model, DiPairModel) else load_model(model)
    model.eval()
    fingerprint = model.fingerprint()
    codec_params = options.codec_params(model)
    # bad codec options (e.g. --pq-m not dividing d_p) fail here, before anything is written
    make_codec(options.codec, model.config.doc_slots, model.config.proj_dim, params=codec_params)
    staging = _staging_dir(index_dir)
    state = {
        "corpus": str(corpus),
        "corpus_fingerprint": corpus_fingerprint(corpus),
        "model_fingerprint": fingerprint,
        "dense": options.dense,
        "shard_rows": options.shard_rows,
        "codec": options.codec,
        "codec_params": codec_params,
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
    spans = shard_spans(normalised, options.shard_rows)
    count = sum(rows for _, _, rows in spans)
    if options.engine == "ray":
        from dipair_rerank.engines.ray_engine import build_cache_with_ray

        build_cache_with_ray(model, normalised, staging, spans, options)
    else:
        _build_cache(model, normalised, staging, spans, options)
    writer = cache_writer(model, staging, options)
    if not all(shard_done(writer, staging, i, span[2], options.dense) for i, span in enumerate(spans)):
        logger.info("shards %d/%d written; the run that writes the last one publishes", options.shard_id,
                    options.num_shards)
        return IndexLayout(index_dir)
    if not _claim(staging, options):
        return IndexLayout(index_dir)  # another slice is publishing this build
    if not (staging / "lucene").is_dir():
        _build_lucene(normalised, staging / "lucene", count, options)
    docids = [docid for span in spans for docid, _ in read_span(normalised, span)]
    writer.finish(docids)
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
    if model_spec == IN_INDEX_MODEL:
        model.save_pretrained(staging / IN_INDEX_MODEL)
    normalised.unlink()
    state_path.unlink()
    (staging / PUBLISH_CLAIM).unlink()
    for stale in staging.glob(f"{NORMALISED}.*.tmp"):  # a normalisation killed midway (its name has the pid)
        stale.unlink()
    write_json_atomic(staging / MANIFEST, manifest)
    _publish(staging, index_dir)
    return IndexLayout(index_dir)
