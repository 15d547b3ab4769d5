"""The query branch (encoder -> kept prefix + pooled slot -> projection) on ONNX Runtime.

For one short query the PyTorch encoder spends most of its time in per-op dispatch; ONNX Runtime runs the same
graph about 3x faster on CPU (measured in eval/bench_latency.py) with outputs equal to 1e-5. The graph is
exported once per model (keyed by its fingerprint) into ``$DIPAIR_CACHE`` (default ``~/.cache/dipair-rerank``),
with attention traced as explicit ops so that ONNX Runtime's BERT optimiser can fuse each layer's attention,
layer norms and GELU (746 nodes -> 84 for the default model, ~1.1x faster per query: docs/design-decisions.md).
"""

from __future__ import annotations

import collections
import logging
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from dipair_rerank.model.modeling import DiPairModel, Prefix

logger = logging.getLogger(__name__)

CACHE_ENV = "DIPAIR_CACHE"


def onnx_available() -> bool:
    """ONNX Runtime and the exporter's ``onnx`` are installed (``onnx`` is found, not imported: importing it took
    0.55 s of opening an index, and only an export needs it)."""
    import importlib.util

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return importlib.util.find_spec("onnx") is not None


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "dipair-rerank"))


class _QueryBranch(torch.nn.Module):
    def __init__(self, model: DiPairModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        prefix = self.model.encode_queries({"input_ids": input_ids, "attention_mask": attention_mask})
        return prefix.vectors, prefix.mask, prefix.pooled


def export_graph(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path, *, inputs: list[str],
                 outputs: list[str], dynamic_axes: dict[str, dict[int, str]]) -> Path:
    """Trace ``module`` (in eval mode) to ONNX at ``path``, atomically."""
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the module must be in eval mode itself: the exporter puts the module it is given back into that module's
        # own mode afterwards, and a fresh wrapper (training mode) would switch the whole model to training, i.e.
        # dropout in every head call that follows in this process
        torch.onnx.export(module.eval(), example, str(tmp), input_names=inputs, output_names=outputs,
                          opset_version=17, dynamo=False, dynamic_axes=dynamic_axes)
    os.replace(tmp, path)
    return path


@contextmanager
def _eager_attention(encoder: torch.nn.Module) -> Iterator[None]:
    """Attention as explicit matmul/softmax ops while tracing (the pattern the BERT optimiser fuses; the default
    SDPA kernel exports as a shape it does not recognise), restored afterwards."""
    config = getattr(encoder, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if previous is None or previous == "eager" or not hasattr(encoder, "set_attn_implementation"):
        yield
        return
    encoder.set_attn_implementation("eager")
    try:
        yield
    finally:
        encoder.set_attn_implementation(previous)


def export_query_branch(model: DiPairModel, path: Path, *, fuse: bool = True) -> Path:
    """Write the query branch as ONNX (dynamic batch and length), atomically; with ``fuse``, rewritten by ONNX
    Runtime's BERT optimiser when its outputs equal the traced graph's (else the traced graph is kept)."""
    length = model.config.query_prefix + 4
    example = (torch.ones(2, length, dtype=torch.long), torch.ones(2, length, dtype=torch.long))
    tokens, rows = {0: "batch", 1: "length"}, {0: "batch"}
    traced = path.with_name(f".{path.stem}.{os.getpid()}.traced.onnx") if fuse else path
    with _eager_attention(model.query_encoder):
        export_graph(_QueryBranch(model.eval()), example, traced, inputs=["input_ids", "attention_mask"],
                     outputs=["vectors", "mask", "pooled"],
                     dynamic_axes={"input_ids": tokens, "attention_mask": tokens, "vectors": rows, "mask": rows,
                                   "pooled": rows})
    if fuse:
        try:
            _fuse_or_keep(traced, path, model)
        finally:
            traced.unlink(missing_ok=True)
    return path


def _fuse_or_keep(traced: Path, path: Path, model: DiPairModel) -> None:
    """``path`` <- the fused graph of ``traced`` if it gives the same outputs on a padded batch, else ``traced``."""
    from onnxruntime.transformers.optimizer import optimize_model

    encoder_config = model.query_encoder.config
    fused = traced.with_name(traced.name.replace(".traced.", ".fused."))
    optimiser_log = logging.getLogger("onnxruntime.transformers")
    level = optimiser_log.level
    optimiser_log.setLevel(logging.ERROR)  # it reports every fusion it tries
    try:
        optimize_model(str(traced), model_type="bert", num_heads=encoder_config.num_attention_heads,
                       hidden_size=encoder_config.hidden_size, opt_level=1).save_model_to_file(str(fused))
        ids = np.random.default_rng(0).integers(1, encoder_config.vocab_size, (2, model.config.query_prefix + 5))
        mask = np.ones_like(ids)
        mask[1, model.config.query_prefix:] = 0  # one padded row
        feed = {"input_ids": ids, "attention_mask": mask}
        same = all(np.allclose(a, b, atol=1e-4) for a, b in zip(inference_session(fused, 1).run(None, feed),
                                                                 inference_session(traced, 1).run(None, feed)))
    except Exception as exc:  # noqa: BLE001  (an encoder the optimiser does not know: the traced graph serves)
        logger.info("query graph not fused (%s: %s)", type(exc).__name__, exc)
        same = False
    finally:
        optimiser_log.setLevel(level)
    if same:
        os.replace(fused, path)
    else:
        fused.unlink(missing_ok=True)
        os.replace(traced, path)


def inference_session(path: Path, threads: int):
    """An ONNX Runtime CPU session whose workers spin within a call and sleep between calls.

    Within: the int8 query graph runs ~100 operators of a few microseconds each, and waking a sleeping worker for
    every one cost more than the work (a DL19 query's encoding 2.4 -> 1.7 ms, docs/design-decisions.md).
    Between: a worker left spinning after the call burns its core for tens of milliseconds (the same script's
    idle CPU), stealing it from the next stage, the JVM or another process (the collapse torch's OpenMP pool shows
    on a shared CPU)."""
    import onnxruntime as ort

    ort.disable_telemetry_events()  # a re-ranker should not look up Microsoft's telemetry host per process
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")  # ... and stop when the call ends
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


INT8_BLOCK = 128  # weights per int8 scale, along each weight column


def _weight_quantizer() -> type:
    """ONNX Runtime's ``MatMulNBitsQuantizer``, imported without the ``logging.basicConfig(level=INFO)`` its
    module runs on import (which would make every library's INFO lines print in the user's process)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return MatMulNBitsQuantizer


def int8_available() -> bool:
    """Whether the weight quantiser's packages are installed (it needs ``onnx-ir``): found, not imported, as for
    ``onnx_available``."""
    import importlib.util

    return onnx_available() and all(importlib.util.find_spec(name) is not None
                                    for name in ("ml_dtypes", "onnx_ir", "onnxruntime.quantization"))


def fused_query_branch(model: DiPairModel) -> Path:
    """The fp32 query graph of ``model`` (fused where the optimiser can), exported once into the cache."""
    path = cache_dir() / "onnx" / f"query-{model.fingerprint()[:20]}-fused.onnx"
    if not path.is_file():
        logger.info("exporting the query encoder to %s", path)
        export_query_branch(model, path)
    return path


def quantize_query_branch(model: DiPairModel) -> Path:
    """The int8 query branch of ``model``, made once in the cache, atomically.

    Every constant-weight product of the fused fp32 graph becomes ONNX Runtime's ``MatMulNBits``: 8-bit weights
    with one scale per block of ``INT8_BLOCK`` inputs of a column, and int8 arithmetic (accuracy level 4) over
    activations quantised per block of each call too: a query reads a quarter of fp32's 42.5 MB of weights, and
    encodes ~20% faster (docs/design-decisions.md). Per-tensor activation scales (dynamic quantisation, the
    previous int8 graph) gave a mean Kendall tau of only 0.93-0.96 against fp32; these blocks keep it at 0.99 and
    nDCG@10 within 0.002 (docs/design-decisions.md)."""
    target = cache_dir() / "onnx" / f"query-{model.fingerprint()[:20]}-int8-block{INT8_BLOCK}.onnx"
    if not target.is_file():
        logger.info("quantising the query encoder to %s", target)
        write_int8_graph(fused_query_branch(model), target)
    return target


def write_int8_graph(source: Path, target: Path, block_size: int = INT8_BLOCK) -> Path:
    """``source`` with every constant-weight product as 8-bit ``MatMulNBits`` (int8 arithmetic), atomically."""
    import onnx

    quantizer = _weight_quantizer()(onnx.load(str(source)), bits=8, block_size=block_size, is_symmetric=True,
                                    accuracy_level=4)
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")  # a line per node
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        quantizer.process()
    finally:
        quiet.setLevel(level)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        quantizer.model.save_model_to_file(str(tmp), False)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


class ContentionSwitch:
    """Whether a lone query runs on several threads (its usual, faster way) or on one.

    A parallel operator waits for its slowest thread. When another process takes a core from a running service,
    the worker that shares it runs in time slices, and one query's encoding took 2.5-4x its quiet time in some
    runs (``eval/bench_latency.py --contention``) and had a tail of 6-10 ms in most, while one thread, which the
    scheduler keeps on the free core, holds its speed (docs/design-decisions.md). The sign: the process's CPU
    time over the call's wall time, close to the thread count on a quiet machine (every thread works or spins
    throughout, even in a slower call from cold caches) and close to one when the worker waits for its core (a
    call that overlaps the end of another process's, as a client's and a service's calls do, drops a little). So
    when the median of the last ``window`` parallel calls is under ``threads - 0.75``, the next ``hold`` calls run
    on one thread; then several threads are tried again.

    The other threads of this process are a second sign, read before the call: when the process used more than
    ``busy_gap`` cores' worth of CPU since the last call ended (a cross-encoder's torch call between two DiPair
    calls, say), that runtime's workers are most likely still spinning on the cores (libgomp's default, for
    milliseconds after each call), or a JVM's threads run beside a search loop, and this one call runs on one
    thread (docs/design-decisions.md). Only calls after a gap of at least ``MIN_GAP`` seconds are judged so; a
    service idling between requests reads near zero.
    """

    MIN_GAP = 0.001

    def __init__(self, threads: int, window: int = 5, hold: int = 300, busy_gap: float = 1.5):
        self.least, self.hold, self.busy_gap = threads - 0.75, hold, busy_gap
        self._recent: collections.deque[float] = collections.deque(maxlen=window)  # CPU / wall of recent calls
        self._left = 0  # calls still sent to one thread
        self._ended: tuple[float, float] | None = None  # (process CPU, wall clock) when the last call ended
        self.switches = 0
        self.after_busy_gaps = 0  # calls sent to one thread because of what ran before them

    def parallel(self, cpu: float, wall: float) -> bool:
        """Whether this call may run in parallel, given the process's CPU time and the wall clock as it starts
        (each call asks once)."""
        ended, self._ended = self._ended, None
        if self._left:
            self._left -= 1
            return False
        if ended is not None and wall - ended[1] >= self.MIN_GAP \
                and (cpu - ended[0]) / (wall - ended[1]) > self.busy_gap:
            self.after_busy_gaps += 1
            return False
        return True

    def ended(self, cpu: float, wall: float) -> None:
        """The process's CPU time and the wall clock as a call (of any size) ends."""
        self._ended = (cpu, wall)

    def observe(self, cpu_seconds: float, wall_seconds: float) -> None:
        """The process's CPU time and the wall time of a parallel call."""
        self._recent.append(cpu_seconds / max(wall_seconds, 1e-9))
        if len(self._recent) == self._recent.maxlen and statistics.median(self._recent) < self.least:
            self._left = self.hold
            self._recent.clear()
            self.switches += 1


class OnnxQueryEncoder:
    """Drop-in for ``DiPairModel.encode_queries`` at inference.

    Args:
        model: the DiPair model (its query branch is exported on first use).
        threads: ONNX Runtime intra-op threads for one query (one while the CPU is contended: ``ContentionSwitch``).
        batch_threads: ... for several queries at once (default ``threads``).
        int8: run the int8 copy of the graph (``quantize_query_branch``); what it costs in quality is in
            docs/design-decisions.md.
    """

    def __init__(self, model: DiPairModel, *, threads: int = 1, batch_threads: int | None = None, int8: bool = False):
        path = quantize_query_branch(model) if int8 else fused_query_branch(model)
        self.path = path  # the graph this encoder runs
        batch_threads = batch_threads or threads
        sessions = {count: inference_session(path, count) for count in {1, threads, batch_threads}}
        self.session, self.batch_session, self.single_session = sessions[threads], sessions[batch_threads], sessions[1]
        self._pool = ThreadPoolExecutor(batch_threads, thread_name_prefix="dipair-query") if batch_threads > 1 else None
        self.switch = ContentionSwitch(threads) if threads > 1 else None
        self.min_length = model.config.query_prefix  # the graph was traced with at least this many tokens
        self.pad_id = model.tokenizer.pad_token_id or 0

    @property
    def runs_tasks(self) -> bool:
        """Whether ``encode_many`` runs its batches side by side (the batch thread count is above one)."""
        return self._pool is not None

    def encode_many(self, batches: list[dict[str, torch.Tensor]]) -> list[Prefix]:
        """Several padded batches (a batch of queries in length groups), in order: with several batch threads, as
        tasks on one thread each, that many at a time, largest first; else, or for a single batch (e.g. one query,
        which keeps every thread it is given), one plain call after another. Why tasks: no padding is needed
        across groups and no barrier between threads after each of the graph's ~100 operators
        (docs/design-decisions.md)."""
        if self._pool is None or len(batches) < 2:
            return [self(batch) for batch in batches]
        order = sorted(range(len(batches)), key=lambda i: -batches[i]["input_ids"].numel())
        encoded = dict(zip(order, self._pool.map(lambda i: self(batches[i], one_thread=True), order)))
        return [encoded[i] for i in range(len(batches))]

    def __call__(self, batch: dict[str, torch.Tensor], *, one_thread: bool = False) -> Prefix:
        input_ids = batch["input_ids"].numpy().astype(np.int64, copy=False)
        attention = batch["attention_mask"].numpy().astype(np.int64, copy=False)
        short = self.min_length - input_ids.shape[1]
        if short > 0:
            input_ids = np.pad(input_ids, ((0, 0), (0, short)), constant_values=self.pad_id)
            attention = np.pad(attention, ((0, 0), (0, short)))
        feeds = {"input_ids": input_ids, "attention_mask": attention}
        switch, cpu, started = self.switch, time.process_time(), time.perf_counter()
        parallel = not one_thread and len(input_ids) == 1 and switch is not None and switch.parallel(cpu, started)
        several = len(input_ids) > 1 and not one_thread
        session = self.batch_session if several else self.session if parallel else self.single_session
        vectors, mask, pooled = session.run(None, feeds)
        if switch is not None:
            cpu_now, now = time.process_time(), time.perf_counter()
            if parallel:
                switch.observe(cpu_now - cpu, now - started)
            switch.ended(cpu_now, now)
        return Prefix(torch.from_numpy(vectors), torch.from_numpy(mask), torch.from_numpy(pooled))
