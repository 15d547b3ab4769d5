"""A search written in resumable parts: topics split in topic order into parts of a fixed size, each finished part
written atomically to ``RUN.parts/`` with its timings, under a manifest of the inputs' identity; rerun with the
same inputs, the finished parts are kept and only the others searched; the run is assembled in topic order.

Engine-agnostic: whoever searches a part hands back its formatted lines (``format_part``) and its timer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dipair_rerank.data.run_index import ByteRange, RunFileIndex, read_run_ranges
from dipair_rerank.data.runs import Run, atomic_write, format_hits
from dipair_rerank.errors import DiPairError
from dipair_rerank.evaluate.latency import save_latency
from dipair_rerank.index_layout import IndexLayout
from dipair_rerank.timing import StageTimer

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PARTS_SUFFIX = ".parts"

StageBatches = dict[str, list[tuple[float, int]]]
"""``StageTimer.batches``: per stage, (milliseconds, queries) per batch."""


def split_parts(qids: Sequence[str], size: int) -> list[list[str]]:
    """``qids`` in order, cut into parts of ``size`` (the last one shorter)."""
    if size < 1:
        raise DiPairError(f"part size must be at least 1, got {size}")
    return [list(qids[start : start + size]) for start in range(0, len(qids), size)]


def topics_fingerprint(topics: Mapping[str, str]) -> str:
    """sha256 of the topics as read, in order (a file and an ``irds:`` id alike)."""
    digest = hashlib.sha256()
    for qid, text in topics.items():
        digest.update(f"{qid}\t{text}\n".encode())
    return digest.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def format_part(run: Run, qids: Iterable[str], *, output_format: str, tag: str, hits: int) -> str:
    """The run lines of ``qids`` exactly as ``write_run`` writes them (a query without hits has no lines)."""
    return "".join(line for qid in qids
                   for line in format_hits(qid, run.get(qid, []), output_format=output_format, tag=tag,
                                           hits_limit=hits))


@dataclass
class PartResult:
    """One searched part: its run lines, its timings, the queries that got no candidates, and the CPU seconds
    its process spent on it (every thread)."""

    part: int
    text: str
    batches: StageBatches
    empty: list[str] = field(default_factory=list)
    cpu_s: float = 0.0


class SearchParts:
    """The parts folder beside a run (``RUN.parts/``): a manifest, ``part-NNNNN.trec`` and ``part-NNNNN.json``.

    Args:
        run_path: the run the parts assemble into.
        identity: the inputs' identity (JSON values); a folder left by a search with another identity is refused.
    """

    def __init__(self, run_path: str | Path, identity: Mapping[str, Any]):
        self.run_path = Path(run_path)
        self.folder = self.run_path.with_name(self.run_path.name + PARTS_SUFFIX)
        self.identity = dict(identity)
        manifest = self.folder / MANIFEST
        if manifest.is_file():
            try:
                recorded = json.loads(manifest.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DiPairError(f"{manifest} is damaged ({exc}): delete {self.folder} to start over") from exc
            changed = sorted(key for key in {*recorded, *self.identity} if recorded.get(key) != self.identity.get(key))
            if changed:
                raise DiPairError(f"{self.folder} holds the finished parts of a search with other inputs "
                                  f"({', '.join(changed)} differ): rerun with the same inputs to resume it, or "
                                  f"delete the folder to start over")
        else:
            if self.folder.is_dir():  # parts of unknown inputs (the manifest is written before any part)
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True)
            with atomic_write(manifest) as handle:
                json.dump(self.identity, handle, indent=1, sort_keys=True)

    def _path(self, part: int, suffix: str) -> Path:
        return self.folder / f"part-{part:05d}{suffix}"

    def done(self, parts: int) -> list[int]:
        """The finished ones among parts ``0 .. parts - 1``."""
        return [part for part in range(parts) if self._path(part, ".trec").is_file()]

    def write(self, result: PartResult) -> None:
        """Record a finished part: its timings first, then its lines (whose presence marks it finished)."""
        with atomic_write(self._path(result.part, ".json")) as handle:
            json.dump({"stages": result.batches, "empty": result.empty, "cpu_s": result.cpu_s}, handle)
        with atomic_write(self._path(result.part, ".trec")) as handle:
            handle.write(result.text)

    def _meta(self, part: int) -> dict[str, Any]:
        try:
            return json.loads(self._path(part, ".json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {"stages": {}, "empty": []}

    def cpu_seconds(self, parts: int) -> float:
        """CPU seconds spent searching parts ``0 .. parts - 1`` (in whichever process searched each)."""
        return sum(float(self._meta(part).get("cpu_s", 0.0)) for part in range(parts))

    def empty(self, parts: int) -> list[str]:
        """The queries of every part that got no candidates."""
        return [qid for part in range(parts) for qid in self._meta(part)["empty"]]

    def timer(self, parts: int) -> StageTimer:
        """Every part's timings, in part order, in one timer."""
        timer = StageTimer()
        for part in range(parts):
            for stage, batches in self._meta(part)["stages"].items():
                timer.batches[stage].extend((float(ms), int(n)) for ms, n in batches)
        return timer

    def assemble(self, parts: int) -> Path:
        """Write the run, parts ``0 .. parts - 1`` in order, atomically; every part must be finished."""
        missing = [part for part in range(parts) if not self._path(part, ".trec").is_file()]
        if missing:
            raise DiPairError(f"{self.folder}: {len(missing)} part(s) not finished (e.g. {missing[0]})")
        with atomic_write(self.run_path) as out:
            for part in range(parts):
                with self._path(part, ".trec").open(encoding="utf-8") as handle:
                    shutil.copyfileobj(handle, out)
        return self.run_path

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class SearchOptions:
    """What every part is searched with (``search``'s options); picklable, for workers in other processes.

    Args:
        candidates: a run file to re-rank instead of a first stage; read a part's queries at a time.
        part_size: queries per part (rounded up to a multiple of ``batch_size``, so batches are the same as in
            one pass over the topics).
    """

    index: str
    first_stage: str = "bm25"
    depth: int = 100
    hits: int = 1000
    model: str | None = None
    candidates: str | None = None
    batch_size: int = 1
    threads: int = 1
    query_backend: str = "auto"
    output_format: str = "trec"
    tag: str = "dipair"
    part_size: int = 32

    @property
    def queries_per_part(self) -> int:
        return -(-self.part_size // self.batch_size) * self.batch_size

    def identity(self, topics: Mapping[str, str], candidates_sha256: str | None) -> dict[str, Any]:
        """What a part's lines depend on: the inputs' fingerprints and the options that change scores or lines
        (threads and workers do not)."""
        layout = IndexLayout(Path(self.index))
        manifest = layout.manifest()
        return {
            "topics_sha256": topics_fingerprint(topics), "queries": len(topics),
            "candidates_sha256": candidates_sha256,
            "index_manifest_sha256": file_fingerprint(layout.manifest_path),
            "model_fingerprint": manifest.get("model_fingerprint"),
            "first_stage": "run" if self.candidates else self.first_stage,
            **{key: value for key, value in asdict(self).items()
               if key in ("depth", "hits", "batch_size", "query_backend", "output_format", "tag")},
            "queries_per_part": self.queries_per_part,
        }


@dataclass(frozen=True)
class PartTask:
    """A part to search: its number, its topics (in order) and, with candidates, where their lines lie."""

    part: int
    topics: dict[str, str]
    ranges: list[ByteRange] | None = None


class PartSearcher:
    """Opens the index once (model, memory-mapped cache, first stage) and searches parts with the searcher and
    settings a single-process ``search`` uses."""

    def __init__(self, options: SearchOptions):
        from dipair_rerank.pipeline import open_first_stage
        from dipair_rerank.rerank import DiPairReranker

        self.options = options
        self.reranker = DiPairReranker.from_index(options.index, model=options.model, threads=options.threads,
                                                  query_backend=options.query_backend)
        self.first_stage = (None if options.candidates else
                            open_first_stage(IndexLayout(Path(options.index)), options.first_stage))
        self.reranker.warm_up(options.depth)

    def search(self, task: PartTask) -> PartResult:
        from dipair_rerank.first_stage import RunFileFirstStage
        from dipair_rerank.pipeline import DiPairSearcher, as_run

        options = self.options
        cpu = time.process_time()
        if task.ranges is not None:
            assert options.candidates is not None
            first_stage = RunFileFirstStage(read_run_ranges(options.candidates, task.ranges))
        else:
            first_stage = self.first_stage
        searcher = DiPairSearcher(self.reranker, first_stage, depth=options.depth)
        self.reranker.timer = StageTimer()
        qids = list(task.topics)
        run = as_run(searcher.batch_search([task.topics[qid] for qid in qids], qids, k=options.hits,
                                           threads=options.threads, batch_size=options.batch_size))
        text = format_part(run, qids, output_format=options.output_format, tag=options.tag, hits=options.hits)
        return PartResult(task.part, text, dict(self.reranker.timer.batches), [qid for qid in qids if not run[qid]],
                          cpu_s=time.process_time() - cpu)


Engine = Callable[[list[PartTask]], Iterator[PartResult | None]]
"""Searches the parts it is handed and yields each result as it finishes, in any order; it may first yield None
once its workers have started (the progress bar's clock starts then)."""


@dataclass
class PartsReport:
    """A finished search in parts: the run written, its merged timer, how much was resumed, and the CPU seconds
    the searches of its parts took."""

    run_path: Path
    queries: int
    parts: int
    resumed_parts: int
    timer: StageTimer
    cpu_s: float = 0.0


def search_in_parts(topics: dict[str, str], run_path: str | Path, options: SearchOptions, engine: Engine, *,
                    progress: bool = True, on_part: Callable[[int], None] | None = None,
                    latency_extra: Mapping[str, Any] | None = None) -> PartsReport:
    """Search ``topics`` part by part with ``engine``, keeping finished parts in ``RUN.parts/`` (so an interrupted
    search resumes), then write the run in topic order and its latency sidecar, and remove the parts.

    Args:
        on_part: called with each part's number once it is written (a test interrupts the search here).
        latency_extra: more fields for the latency sidecar (e.g. the engine).
    """
    if not topics:
        raise DiPairError("no topics to search")
    qids = list(topics)
    index = None
    if options.candidates:
        index = RunFileIndex.scan(options.candidates, set(qids))
        _check_candidates(qids, index)
    parts = split_parts(qids, options.queries_per_part)
    folder = SearchParts(run_path, options.identity(topics, index.sha256 if index else None))
    done = set(folder.done(len(parts)))
    tasks = [PartTask(number, {qid: topics[qid] for qid in part}, index.ranges(part) if index else None)
             for number, part in enumerate(parts) if number not in done]
    if done:
        logger.info("%s: %d of %d parts already finished, kept", folder.folder, len(done), len(parts))
    finished = sum(len(parts[p]) for p in done)
    with tqdm(total=len(qids), initial=finished, desc="search (starting)" if tasks else "search", unit="query",
              disable=not progress) as bar:
        if tasks:
            results = engine(tasks)
            try:
                for result in results:
                    if result is None:  # started: measure the rate from here
                        bar.set_description_str("search", refresh=False)
                        bar.reset()
                        bar.n = bar.last_print_n = finished
                        bar.refresh()
                        continue
                    folder.write(result)
                    bar.update(len(parts[result.part]))
                    if on_part is not None:
                        on_part(result.part)
            finally:
                close = getattr(results, "close", None)
                if close is not None:
                    close()
    empty = folder.empty(len(parts))
    if len(empty) == len(qids):
        hint = ": do the --candidates run's query ids match the topics'?" if options.candidates else ""
        raise DiPairError(f"none of the {len(qids)} topics got any candidates (e.g. {', '.join(qids[:3])}){hint}")
    if empty:
        logger.warning("%d of %d topics got no candidates (e.g. %s)", len(empty), len(qids), ", ".join(empty[:3]))
    path = folder.assemble(len(parts))
    timer, cpu_s = folder.timer(len(parts)), folder.cpu_seconds(len(parts))
    save_latency(timer, path, hits=options.hits, batch_size=options.batch_size, threads=options.threads,
                 first_stage="run" if options.candidates else options.first_stage, depth=options.depth,
                 **(latency_extra or {}))
    folder.remove()
    return PartsReport(path, len(qids), len(parts), len(done), timer, cpu_s)


def _check_candidates(qids: list[str], index: RunFileIndex) -> None:
    """Refuse candidates that name none of the topics before any work, as a single-process search does."""
    if not index.qids:
        raise DiPairError(f"none of the {len(qids)} topics got any candidates (e.g. {', '.join(qids[:3])}): do the "
                          "--candidates run's query ids match the topics'?")
