"""Ray search throughput, side by side in one run: ``search --engine ray`` with 2 workers x 1 thread against
1 worker x 1 thread and against one process with 2 threads (``search``'s local path), on DL19-size work.

DL19's 43 queries are few, so its topics and BM25 top-100 candidates are repeated (``--repeat`` times, each copy
under new qids) into a larger run; every arm re-ranks the same candidates at depth 100 with batch size 1 (the
CLI's default) and writes its run. Queries/s exclude start-up: for Ray, the cluster start (``ray.init``, once)
and each arm's actors getting ready (model load, index open, warm-up) are stated separately; for the local arm,
opening the searcher and its warm-up. Arms run in alternating rounds (the VM's speed drifts). CPU ms/query is the
CPU time of the searching processes (every thread) per query: what the arms cost, whatever else runs on the cores.
Every run must equal the local run: same docids in the same order, scores to 1e-6. Then BM25 inside the workers
(each with its own JVM) instead of candidates, stated separately: a fresh JVM spends its first seconds compiling
(JIT), which each Ray arm's workers pay within the timed search.

    python eval/bench_ray_search.py        # needs indexes/eff-dl19 (eval/effectiveness.py builds it)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dipair_rerank.data import read_run, read_topics, shared_data_dir, write_run
from dipair_rerank.evaluate.report import format_rounds, format_table, publish_report
from dipair_rerank.search_parts import SearchOptions


def repeated_inputs(topics_path: Path, candidates_path: Path, repeat: int, folder: Path) -> tuple[dict, Path]:
    """The topics and their candidates ``repeat`` times over, copy ``i`` of query ``q`` named ``q_i``."""
    topics, candidates = read_topics(topics_path), read_run(candidates_path)
    topics = {q: text for q, text in topics.items() if q in candidates}
    many_topics = {f"{q}_{i}": text for i in range(repeat) for q, text in topics.items()}
    run = {f"{q}_{i}": candidates[q] for i in range(repeat) for q in topics}
    path = write_run(run, folder / "candidates.trec", tag="bm25", hits=10**9)
    return many_topics, path


def local_arm(topics: dict, options: SearchOptions, run_path: Path) -> dict:
    """One process, ``options.threads`` threads: the searcher ``search`` uses, timed after its warm-up."""
    from dipair_rerank.pipeline import DiPairSearcher, as_run

    start = time.perf_counter()
    searcher = DiPairSearcher.from_index(options.index, first_stage=options.first_stage, depth=options.depth,
                                         candidates=options.candidates, threads=options.threads)
    searcher.reranker.warm_up(options.depth)
    startup = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    qids = list(topics)
    results = searcher.batch_search([topics[q] for q in qids], qids, k=options.hits, threads=options.threads,
                                    batch_size=options.batch_size)
    write_run(as_run(results), run_path, hits=options.hits)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"queries": len(qids), "start-up s": startup, "search s": seconds, "queries/s": len(qids) / seconds,
            "CPU ms/query": cpu * 1000 / len(qids)}


def ray_arm(topics: dict, options: SearchOptions, run_path: Path, workers: int) -> dict:
    from dipair_rerank.engines.ray_search import search_with_ray

    report = search_with_ray(topics, run_path, options, workers=workers, progress=False)
    times = report.times
    return {"queries": report.queries, "start-up s": times.startup_s, "search s": times.search_s,
            "queries/s": report.queries / times.search_s, "CPU ms/query": report.cpu_s * 1000 / report.queries}


def compare_runs(path: Path, expected: Path) -> dict:
    """Whether ``path`` is ``expected``'s run: byte for byte, else docids in order and scores to 1e-6."""
    if path.read_bytes() == expected.read_bytes():
        return {"identical": "yes (byte for byte)", "max score diff": 0.0}
    got, want = read_run(path), read_run(expected)
    same_order = list(got) == list(want) and all([d for d, _ in got[q]] == [d for d, _ in want[q]] for q in want)
    diff = max((abs(a - b) for q in want for (_, a), (_, b) in zip(got.get(q, []), want[q])), default=0.0)
    ok = same_order and diff <= 1e-6
    return {"identical": f"{'yes' if ok else 'NO'} (docids {'same' if same_order else 'differ'}, scores to "
                         f"{diff:.1e})", "max score diff": diff}


def section(label: str, topics: dict, options: SearchOptions, scratch: Path, rounds: int) -> dict:
    """The three arms in ``rounds`` alternating rounds, their ratios and the identity of every run."""
    arms = {"local, 1 process x 2 threads": ("local", 1, 2), "ray, 1 worker x 1 thread": ("ray", 1, 1),
            "ray, 2 workers x 1 thread": ("ray", 2, 1)}
    results: dict[str, list[dict]] = {name: [] for name in arms}
    checks: dict[str, dict] = {}
    reference = scratch / f"{label}-local1-0.trec"
    for round_no in range(rounds):
        for name, (engine, workers, threads) in arms.items():
            arm_options = replace(options, threads=threads)
            run_path = scratch / f"{label}-{engine}{workers}-{round_no}.trec"
            if engine == "local":
                results[name].append(local_arm(topics, arm_options, run_path))
            else:
                results[name].append(ray_arm(topics, arm_options, run_path, workers))
            checks[f"{name}, round {round_no + 1}"] = compare_runs(run_path, reference)
            print(f"  {label} round {round_no + 1} {name}: {results[name][-1]['queries/s']:.1f} queries/s",
                  file=sys.stderr, flush=True)
    qps = {name: statistics.median(r["queries/s"] for r in rows) for name, rows in results.items()}
    local, one, two = (qps[name] for name in arms)
    return {"arms": results, "median queries/s": qps, "ray2 / ray1": two / one, "ray2 / local": two / local,
            "checks": checks}


def format_section(title: str, result: dict, targets: bool) -> str:
    lines = [f"## {title}", "",
             format_rounds("arm", result["arms"], ["queries/s", "search s", "CPU ms/query", "start-up s"]),
             f"Ray 2 workers / 1 worker: {result['ray2 / ray1']:.2f}x" + ("  (target >= 1.6x)" if targets else ""),
             f"Ray 2 workers / 1 process x 2 threads: {result['ray2 / local']:.2f}x"
             + ("  (target >= 0.85x)" if targets else ""), "",
             format_table([{"run": name, **check} for name, check in result["checks"].items()],
                          ["run", "identical"])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = shared_data_dir() / "msmarco-dl19"
    parser.add_argument("--index", default="indexes/eff-dl19")
    parser.add_argument("--topics", default=str(data / "queries.tsv"))
    parser.add_argument("--candidates", default=str(data / "runs" / "bm25.top100.trec"))
    parser.add_argument("--repeat", type=int, default=20, help="copies of the topics, under new qids (default 20)")
    parser.add_argument("--bm25-repeat", type=int, default=20, help="copies for the BM25 part (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the candidates arms")
    parser.add_argument("--bm25-rounds", type=int, default=1, help="alternating rounds of the BM25 arms")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--part-size", type=int, default=32)
    parser.add_argument("--json", default="eval/results/bench_ray_search.json")
    parser.add_argument("--report", default="eval/results/bench_ray_search.txt")
    args = parser.parse_args()

    import ray

    from dipair_rerank._java import jvm_signal_handlers_kept

    load_before = os.getloadavg()[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-ray-search-") as folder:
        scratch = Path(folder)
        topics, candidates = repeated_inputs(Path(args.topics), Path(args.candidates), args.repeat, scratch)
        start = time.perf_counter()
        with jvm_signal_handlers_kept():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
        try:
            options = SearchOptions(index=args.index, candidates=str(candidates), depth=args.depth, hits=args.depth,
                                    part_size=args.part_size)
            reranked = section("candidates", topics, options, scratch, args.rounds)
            bm25 = None
            if args.bm25_repeat:
                bm25_topics = {q: t for i, (q, t) in enumerate(topics.items())
                               if i < args.bm25_repeat * len(topics) // args.repeat}
                bm25 = section("bm25", bm25_topics,
                               SearchOptions(index=args.index, first_stage="bm25", depth=args.depth, hits=args.depth,
                                             part_size=args.part_size), scratch, args.bm25_rounds)
        finally:
            with jvm_signal_handlers_kept():
                ray.shutdown()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    header = (f"# bench_ray_search  {time.strftime('%Y-%m-%d %H:%M')}  commit {commit}  {os.cpu_count()} cores "
              f"({cpu})\n\n{len(topics)} queries (DL19's {len(topics) // args.repeat} x {args.repeat}, new qids), "
              f"depth {args.depth}, batch size 1, parts of {args.part_size} queries; queries/s exclude start-up.\n"
              f"Ray cluster start (ray.init, once): {ray_start:.1f} s; each arm's actor start-up (model, index, "
              f"warm-up; JVM for BM25) is its 'start-up s'.\n"
              f"Load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} (other processes "
              f"on these 2 cores take from every arm).\n")
    text = header + "\n" + format_section("Re-ranking the candidates run (--candidates)", reranked, targets=True)
    if bm25:
        text += "\n" + format_section(f"BM25 inside the workers ({len(bm25_topics)} queries)", bm25, targets=False)
    publish_report(text, args.report)
    Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit,
                                           "ray_init_s": ray_start, "load_before": load_before,
                                           "candidates": reranked, "bm25": bm25}, indent=1, default=str))


if __name__ == "__main__":
    main()
