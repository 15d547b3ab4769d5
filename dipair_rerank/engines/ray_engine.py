"""Encode cache shards on a Ray Data actor pool (``index --engine ray``), one model per actor.

Each actor writes whole shards with the same writer as a local build, so the files are the ones a single
process would write; the driver trains a lossy codec first, then publishes once every shard is done.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from dipair_rerank.errors import DiPairError
from dipair_rerank.model import DiPairModel

logger = logging.getLogger(__name__)


class ShardEncoder:
    """A Ray actor: loads the model once, then encodes and writes the shards it is handed."""

    def __init__(self, model_dir: str, corpus: str, staging: str, spans: list[tuple[int, int, int]],
                 options: dict[str, Any]):
        import os

        import torch

        from dipair_rerank.indexer import IndexOptions, cache_writer

        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the tokenizer's own thread pool would take the other cores
        self.options = IndexOptions(**{**options, "progress": False})
        torch.set_num_threads(self.options.threads)
        self.model = DiPairModel.from_pretrained(model_dir)
        self.corpus, self.staging, self.spans = Path(corpus), Path(staging), spans
        self.writer = cache_writer(self.model, self.staging, self.options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from dipair_rerank.indexer import encode_shard, read_span

        for shard in batch["shard"]:
            texts = [text for _, text in read_span(self.corpus, self.spans[int(shard)])]
            encode_shard(self.model, self.writer, self.staging, int(shard), texts, self.options)
        return {"shard": batch["shard"]}


def build_cache_with_ray(model: DiPairModel, corpus: Path, staging: Path, spans, options) -> None:
    try:
        import ray
    except ImportError as exc:
        raise DiPairError("--engine ray needs Ray: pip install 'dipair-rerank[ray]'") from exc
    from dipair_rerank.indexer import _ensure_codec, cache_writer, shard_done

    writer = cache_writer(model, staging, options)
    todo = [i for i, span in enumerate(spans) if not shard_done(writer, staging, i, span[2], options.dense)]
    if not todo:
        return
    _ensure_codec(model, writer, corpus, spans, options)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False,
                 **({} if options.ray_address else {"num_cpus": options.workers * options.threads}))
    try:
        with tempfile.TemporaryDirectory(prefix="dipair-ray-model-") as model_dir:
            model.save_pretrained(model_dir)
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = options.progress
            context.print_on_execution_start = False
            dataset = ray.data.from_items([{"shard": shard} for shard in todo], override_num_blocks=len(todo))
            encoded = dataset.map_batches(
                ShardEncoder,
                fn_constructor_kwargs={"model_dir": model_dir, "corpus": str(corpus), "staging": str(staging),
                                       "spans": spans, "options": asdict(options)},
                batch_size=1, num_cpus=options.threads,
                # one shard per task and one task at a time per actor: an idle actor takes the next shard, so
                # actors finish together instead of one queueing shards while another starves
                compute=ray.data.ActorPoolStrategy(size=options.workers, max_tasks_in_flight_per_actor=1),
            )
            written = sorted(int(row["shard"]) for row in encoded.take_all())
        logger.info("ray wrote %d shards", len(written))
    finally:
        if started_here:
            ray.shutdown()
