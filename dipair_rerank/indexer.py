"""``dipair-rerank index``: documents -> Lucene BM25 index, optional FAISS index, and the DiPair prefix cache.

Documents come from one DocumentSource interface (``data/sources.py``): a JSONL/``irds:`` corpus, for which a
BM25 index is built, or an existing Lucene index (``data/lucene.py``), which BM25 keeps using. Everything is
built in a staging folder beside the target (``indexes/.NAME.building``) and published by rename once complete,
so readers never see half an index. Rerunning the same command after an interruption resumes: the normalised
corpus, the Lucene index and every finished cache shard are kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import tempfile
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dipair_rerank.cache.codecs import make_codec, pooled_rows
from dipair_rerank.cache.writer import CacheWriter, write_json_atomic
from dipair_rerank.data.sources import CorpusSource, DocumentSource, Span, shard_spans, span_texts
from dipair_rerank.encoding import encode_documents
from dipair_rerank.engines import ShardWriter
from dipair_rerank.errors import DiPairError
from dipair_rerank.index_layout import EXTERNAL_LUCENE, MANIFEST, IndexLayout
from dipair_rerank.model import DiPairModel, load_model

logger = logging.getLogger(__name__)

BUILD_STATE = "build.json"
SOURCE_SCRATCH = "corpus.jsonl"  # a source's working copy in the staging folder (the normalised JSONL corpus)
LUCENE_BATCH = 4096
PUBLISH_CLAIM = "publishing.lock"
POOLED_VALUES_PER_BYTE = 4  # pq: a full-width pooled vector's code (the default model's 384 values in 96 bytes)
IN_INDEX_MODEL = "model"  # an in-memory model is saved here, inside the index, and the manifest points at it


@dataclass
class IndexOptions:
    """How to build an index.

    Attributes:
        dense: also build a FAISS flat inner-product index of mean-pooled encoder vectors.
        batch_size: documents per encoder batch.
        shard_rows: documents per cache shard (the unit of resumption).
        threads: Lucene indexing threads and torch threads.
        codec / pq_m / pq_pooled_values_per_byte / pq_pooled_bits: cache storage, ``fp16`` (exact), ``int8`` or
            ``pq``: ``pq_m`` bytes per row the head reads; the pooled vector the score reads directly (every row
            of a full-width one, as one vector) product-quantised at ``pq_pooled_values_per_byte`` values per
            byte, or when that is 0, scalar-quantised to ``pq_pooled_bits`` bits per value (None: 4 for a
            pooled vector over several rows, the default model's; 0 for one pooled slot).
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
    pq_pooled_values_per_byte: int | None = None
    shard_id: int = 0
    num_shards: int = 1
    engine: str = "local"
    ray_address: str | None = None
    workers: int = 2

    def __post_init__(self) -> None:
        for name in ("batch_size", "shard_rows", "threads", "pq_m", "num_shards", "workers"):
            if getattr(self, name) < 1:
                raise DiPairError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.pq_pooled_values_per_byte is not None and self.pq_pooled_values_per_byte < 0:
            raise DiPairError(f"--pq-pooled-values-per-byte must be 0 or more, got {self.pq_pooled_values_per_byte}")
        if not 0 <= self.shard_id < self.num_shards:
            raise DiPairError(f"--shard-id must be in [0, --num-shards), got {self.shard_id} of {self.num_shards}")

    def codec_params(self, model: DiPairModel) -> dict[str, int]:
        if self.codec != "pq":
            return {}
        rows = pooled_rows(model.config.to_dict(), model.doc_block_slots)  # what the score reads directly
        width, per_byte = rows * model.config.proj_dim, self.pq_pooled_values_per_byte
        if per_byte is None:  # as measured: a full-width vector over several rows PQ'd, one projected slot at sq6
            per_byte = POOLED_VALUES_PER_BYTE if rows > 1 else 0
        if rows and per_byte and width % per_byte:
            raise DiPairError(f"--pq-pooled-values-per-byte {per_byte} does not divide the model's pooled vector "
                              f"({width} values)")
        pooled_m = width // per_byte if rows and per_byte else 0
        return {"m": self.pq_m, "pooled_rows": rows, "pooled_m": pooled_m,
                "pooled_bits": 0 if pooled_m or not rows else self.pq_pooled_bits}


def _check_target(index_dir: Path, source: DocumentSource) -> None:
    """Publishing replaces ``index_dir`` whole: refuse a target that holds anything but an index, or the input."""
    if source.lucene is not None:
        inputs = [source.lucene]
    elif isinstance(source, CorpusSource) and not source.spec.startswith("irds:"):
        inputs = [Path(source.spec)]  # a JSONL file or folder
    else:
        inputs = []
    for path in inputs:
        if index_dir.resolve() in (path.resolve(), *path.resolve().parents):
            raise DiPairError(f"--index {index_dir} holds the input it would be built from ({path}); publishing "
                              "would replace it: choose another folder")
    if index_dir.exists() and not index_dir.is_dir():
        raise DiPairError(f"--index {index_dir} is a file; give a folder for the index")
    if index_dir.is_dir() and not (index_dir / MANIFEST).is_file() and any(index_dir.iterdir()):
        raise DiPairError(f"--index {index_dir} exists and is not a dipair-rerank index (no {MANIFEST}); building "
                          "would replace it and everything in it: choose another folder")


def _staging_dir(index_dir: Path) -> Path:
    return index_dir.parent / f".{index_dir.name}.building"


def _build_lucene(source: DocumentSource, target: Path, options: IndexOptions) -> None:
    """Pyserini BM25 index of the source's documents (raw and contents stored, as ``--from-lucene`` reads)."""
    from dipair_rerank._java import ensure_jvm

    ensure_jvm()
    from pyserini.index.lucene import LuceneIndexer

    tmp = target.with_name(f"{target.name}.tmp")  # Java resolves relative paths against its own start-up cwd
    shutil.rmtree(tmp, ignore_errors=True)
    indexer = LuceneIndexer(
        args=["-index", str(tmp.resolve()), "-storeRaw", "-storeContents", "-storePositions", "-storeDocvectors"],
        threads=options.threads,
    )
    count = source.count()
    with tqdm(total=count, desc="BM25 index", unit="doc", disable=not options.progress) as bar:
        for start, stop in shard_spans(count, LUCENE_BATCH):
            indexer.add_batch_raw([json.dumps({"id": docid, "contents": text}, ensure_ascii=False)
                                   for docid, text in source.read(start, stop)])
            bar.update(stop - start)
    indexer.close()
    os.replace(tmp, target)


def _link_lucene(source_lucene: Path, target: Path) -> None:
    """``lucene/`` -> the existing index, for code that opens ``INDEX/lucene`` itself; the manifest's record of
    the path is what this package reads, so a file system without symlinks only loses the convenience."""
    if target.is_symlink() or target.exists():
        return
    try:
        target.symlink_to(source_lucene, target_is_directory=True)
    except OSError as exc:
        logger.info("could not link %s -> %s (%s); the manifest records the path", target, source_lucene, exc)


def cache_writer(model: DiPairModel, staging: Path, options: IndexOptions) -> CacheWriter:
    return CacheWriter(
        staging / "dipair",
        model_fingerprint=model.fingerprint(),
        model_config=model.config.to_dict(),
        slots=model.doc_block_slots,
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
    writer.write_shard(shard, encoded.vectors, encoded.lengths, encoded.lexical)


def load_shard_writer(model_dir: str, staging: Path, options: IndexOptions) -> ShardWriter:
    """The shard writer of another process (a Ray actor): loads the model saved at ``model_dir`` once."""
    import torch

    torch.set_num_threads(options.threads)
    model = DiPairModel.from_pretrained(model_dir)
    model.eval()
    writer = cache_writer(model, staging, options)
    return partial(encode_shard, model, writer, staging, options=options)


def _ensure_codec(model: DiPairModel, writer: CacheWriter, source: DocumentSource, spans: list[Span],
                  options: IndexOptions) -> None:
    """Train a lossy codec on the first shard's vectors, before any worker writes codes (deterministic, so
    every slice or worker that trains it gets the same state)."""
    if not writer.codec_trained:
        texts = span_texts(source, spans[0])
        writer.train_codec(encode_documents(model, texts, batch_size=options.batch_size).vectors)


def build_cache(model: DiPairModel, source: DocumentSource, staging: Path, spans: list[Span],
                options: IndexOptions) -> None:
    """Encode this process's shards (all, or every ``num_shards``-th from ``shard_id``) that are not done, here
    or on the engine ``options.engine`` names."""
    writer = cache_writer(model, staging, options)
    rows = [stop - start for start, stop in spans]
    mine = [i for i in range(len(spans)) if i % options.num_shards == options.shard_id]
    todo = [i for i in mine if not shard_done(writer, staging, i, rows[i], options.dense)]
    if not todo:
        return
    if todo[0] != 0 or options.engine == "ray":  # else encoding shard 0, here and first, trains it
        _ensure_codec(model, writer, source, spans, options)
    if options.engine == "ray":
        from dipair_rerank.engines.ray_engine import encode_shards_with_ray

        with tempfile.TemporaryDirectory(prefix="dipair-ray-model-") as model_dir:
            model.save_pretrained(model_dir)
            make_writer = partial(load_shard_writer, model_dir, staging, replace(options, progress=False))
            encode_shards_with_ray(todo, spans, source, make_writer, workers=options.workers,
                                   threads=options.threads, address=options.ray_address, progress=options.progress)
        return
    total = sum(rows[i] for i in mine)
    with tqdm(total=total, desc="DiPair cache", unit="doc", disable=not options.progress) as bar:
        bar.update(total - sum(rows[i] for i in todo))
        for shard in todo:
            encode_shard(model, writer, staging, shard, span_texts(source, spans[shard]), options, progress=bar)


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
    corpus: str | Path | DocumentSource,
    index_dir: str | Path,
    *,
    model: DiPairModel | str | Path | None = None,
    options: IndexOptions | None = None,
) -> IndexLayout:
    """Build (or resume building) ``index_dir`` from ``corpus``; returns its layout once published.

    Args:
        corpus: a JSONL file, a folder of them, ``irds:<id>``, or a DocumentSource such as
            ``LuceneSource(path)`` (an existing Pyserini index: BM25 keeps using it, nothing is re-indexed).
        index_dir: target folder, e.g. ``indexes/scifact``.
        model: a DiPairModel, a ``--model`` spec (saved folder or HF id), or None for the default model.
        options: see IndexOptions.
    """
    import torch

    options = options or IndexOptions()
    torch.set_num_threads(options.threads)
    index_dir = Path(index_dir)
    source = CorpusSource(corpus) if isinstance(corpus, (str, os.PathLike)) else corpus
    _check_target(index_dir, source)
    model_spec = str(model) if isinstance(model, (str, Path)) else ("default" if model is None else IN_INDEX_MODEL)
    if isinstance(model, (str, Path)) and Path(model).exists():
        model_spec = str(Path(model).resolve())
    model = model if isinstance(model, DiPairModel) else load_model(model)
    model.eval()
    fingerprint = model.fingerprint()
    codec_params = options.codec_params(model)
    # bad codec options (e.g. --pq-m not dividing d_p) fail here, before anything is written
    make_codec(options.codec, model.doc_block_slots, model.config.proj_dim, params=codec_params)
    staging = _staging_dir(index_dir)
    state = {
        "corpus": source.spec,
        "corpus_fingerprint": source.fingerprint(),
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
    try:
        source.prepare(staging / SOURCE_SCRATCH, progress=options.progress)
    except DiPairError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    spans = shard_spans(source.count(), options.shard_rows)
    build_cache(model, source, staging, spans, options)
    writer = cache_writer(model, staging, options)
    if not all(shard_done(writer, staging, i, stop - start, options.dense) for i, (start, stop) in enumerate(spans)):
        logger.info("shards %d/%d written; the run that writes the last one publishes", options.shard_id,
                    options.num_shards)
        return IndexLayout(index_dir)
    if not _claim(staging, options):
        return IndexLayout(index_dir)  # another slice is publishing this build
    if source.lucene is not None:
        _link_lucene(source.lucene, staging / "lucene")
    elif not (staging / "lucene").is_dir():
        _build_lucene(source, staging / "lucene", options)
    docids = [docid for span in spans for docid, _ in source.read(*span)]
    writer.finish(docids)
    if options.dense and not (staging / "faiss" / "index").is_file():
        _build_faiss(staging, docids)

    manifest: dict[str, Any] = {
        "corpus": source.spec,
        "corpus_fingerprint": state["corpus_fingerprint"],
        "num_docs": len(docids),
        "components": ["lucene", "dipair"] + (["faiss"] if options.dense else []),
        "model": model_spec,
        "model_fingerprint": fingerprint,
        "build_seconds": round(time.time() - started, 1),
        "versions": _library_versions(),
    }
    if source.lucene is not None:
        manifest[EXTERNAL_LUCENE] = str(source.lucene)
    if model_spec == IN_INDEX_MODEL:
        model.save_pretrained(staging / IN_INDEX_MODEL)
    state_path.unlink()
    (staging / PUBLISH_CLAIM).unlink()
    for scratch in staging.glob(f"{SOURCE_SCRATCH}*"):  # the source's working copy, or one killed midway
        scratch.unlink()
    write_json_atomic(staging / MANIFEST, manifest)
    _publish(staging, index_dir)
    return IndexLayout(index_dir)
