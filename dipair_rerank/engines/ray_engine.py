"""Encode cache shards on a Ray Data actor pool (``index --engine ray``), one shard writer (one model) per actor.

Each actor writes whole shards with the writer a local build uses, so the files are the ones a single process
would write; the caller trains a lossy codec first and publishes once every shard is done.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import numpy as np

from dipair_rerank._java import jvm_signal_handlers_kept
from dipair_rerank.data.sources import DocumentSource, Span, span_texts
from dipair_rerank.engines import ShardWriter
from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)


class ShardEncoder:
    """A Ray actor: makes its shard writer once (loading the model), then encodes the shards it is handed."""

    def __init__(self, make_writer: Callable[[], ShardWriter], source: DocumentSource, spans: Sequence[Span]):
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the tokenizer's own thread pool would take the other cores
        self.write, self.source, self.spans = make_writer(), source, spans

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for shard in map(int, batch["shard"]):
            self.write(shard, span_texts(self.source, self.spans[shard]))
        return {"shard": batch["shard"]}


def encode_shards_with_ray(shards: Sequence[int], spans: Sequence[Span], source: DocumentSource,
                           make_writer: Callable[[], ShardWriter], *, workers: int, threads: int,
                           address: str | None = None, progress: bool = True) -> None:
    """Encode ``shards`` (indexes into ``spans``) on ``workers`` actors of ``threads`` CPUs each.

    Args:
        make_writer: picklable; called once in each actor to make the writer it encodes with.
        address: a Ray cluster to join (default: start a local one, shut down afterwards).
    """
    try:
        import ray
    except ImportError as exc:
        raise DiPairError("--engine ray needs Ray: pip install 'dipair-rerank[ray]'") from exc
    if not shards:
        return
    started_here = not ray.is_initialized()
    if started_here:
        with jvm_signal_handlers_kept():  # a Lucene source's JVM may run here, read again after the encoding
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": workers * threads}))
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        context.print_on_execution_start = False
        dataset = ray.data.from_items([{"shard": shard} for shard in shards], override_num_blocks=len(shards))
        encoded = dataset.map_batches(
            ShardEncoder,
            fn_constructor_kwargs={"make_writer": make_writer, "source": source, "spans": list(spans)},
            batch_size=1, num_cpus=threads,
            # one shard per task and one task at a time per actor: an idle actor takes the next shard, so
            # actors finish together instead of one queueing shards while another starves
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
        )
        written = sorted(int(row["shard"]) for row in encoded.take_all())
        logger.info("ray wrote %d shards", len(written))
    finally:
        if started_here:
            with jvm_signal_handlers_kept():
                ray.shutdown()
