"""Re-rank stage p50 of two git revisions side by side, on the same indexes and candidates.

Each revision is checked out once as a git worktree under ``--work`` and runs in its own worker process (its
package first on ``sys.path``); the workers take turns over chunks of queries, so both see the same machine load.
Candidates: ``--depth`` rows drawn uniformly over each index (seeded), the same for both revisions, or with
``--topics``/``--run`` real queries and their first-stage top ``--depth`` (cycled up to ``--queries``); one untimed
pass over every query first (page cache and the revisions' first calls warm).

    python eval/probes/compare_revisions.py --base fff4df9 --index eval/work/scale/10k-int8 eval/work/scale/10M-int8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def workload(reranker, queries: int, depth: int, seed: int, topics: str | None, run: str | None
             ) -> tuple[list[str], list[list[str]]]:
    """Query texts and their candidates: real ones from ``topics``/``run``, else made up over the whole index."""
    if topics and run:
        from dipair_rerank.data import read_run, read_topics

        texts, hits = read_topics(topics), read_run(run)
        qids = [qid for qid in texts if qid in hits]
        chosen = [qids[i % len(qids)] for i in range(queries)]
        return [texts[q] for q in chosen], [[docid for docid, _ in hits[q][:depth]] for q in chosen]
    lookup, rng = reranker.cache.docids, np.random.default_rng(seed)
    candidates = [[bytes(lookup.sorted[i]).decode() for i in rng.integers(0, len(lookup), depth)]
                  for _ in range(queries)]
    return [f"query {i} about blood pressure and heart disease" for i in range(queries)], candidates


def worker(index: str, queries: int, depth: int, seed: int, topics: str | None, run: str | None) -> None:
    """Answer each stdin line (a "start stop" range of queries) with the re-rank stage ms of those queries."""
    import dipair_rerank
    from dipair_rerank.rerank import DiPairReranker
    from dipair_rerank.timing import StageTimer

    if not Path(dipair_rerank.__file__).resolve().is_relative_to(Path(sys.path[0]).resolve()):
        raise SystemExit(f"imported {dipair_rerank.__file__}, not the revision's package under {sys.path[0]}")

    reranker = DiPairReranker.from_index(index)
    reranker.warm_up()
    texts, candidates = workload(reranker, queries, depth, seed, topics, run)
    for text, docids in zip(texts, candidates):
        reranker.rerank(text, docids)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        start, stop = map(int, line.split())
        timings = []
        for text, docids in zip(texts[start:stop], candidates[start:stop]):
            reranker.timer = StageTimer()
            reranker.rerank(text, docids)
            timings.append(sum(float(reranker.timer.per_query_ms(stage).sum())
                               for stage in ("query_encoding", "gather", "head")))
        print(json.dumps(timings), flush=True)


def checkout(revision: str, work: Path) -> Path:
    """A worktree of ``revision``, named by its commit (a name like HEAD moves)."""
    commit = subprocess.run(["git", "rev-parse", "--short", f"{revision}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    tree = work / f"rev-{commit}"
    if not tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the revision compared with the working tree")
    parser.add_argument("--index", nargs="+", required=True)
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--topics", default=None, help="real queries (TSV), with --run")
    parser.add_argument("--run", default=None, help="their candidates (a TREC run)")
    parser.add_argument("--work", default="eval/work", help="where the base revision is checked out (git-ignored)")
    parser.add_argument("--worker", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        tree, index, queries, seed = args.worker
        sys.path.insert(0, tree)
        return worker(index, int(queries), args.depth, int(seed), args.topics, args.run)
    trees = {f"base {args.base}": checkout(args.base, ROOT / args.work), "working tree": ROOT}
    print(f"# compare_revisions  {time.strftime('%Y-%m-%d %H:%M')}  depth {args.depth}  {args.queries} queries")
    for index in args.index:
        workers = {}
        for label, tree in trees.items():
            command = [sys.executable, __file__, "--depth", str(args.depth), "--base", args.base, "--index", index,
                       "--worker", str(tree), index, str(args.queries), str(args.seed)]
            if args.topics and args.run:
                command += ["--topics", args.topics, "--run", args.run]
            workers[label] = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                              cwd=ROOT)
            json.loads(workers[label].stdout.readline())  # ready: loaded, warmed, every query run once
        timings = {label: [] for label in workers}
        for k, start in enumerate(range(0, args.queries, args.chunk)):
            for label in (list(workers) if k % 2 == 0 else list(workers)[::-1]):
                workers[label].stdin.write(f"{start} {min(start + args.chunk, args.queries)}\n")
                workers[label].stdin.flush()
                timings[label] += json.loads(workers[label].stdout.readline())
        for process in workers.values():
            process.stdin.close()
            process.wait()
        p50 = {label: float(np.median(values)) for label, values in timings.items()}
        base, new = p50.values()
        print(f"{index}: re-rank stage p50 " + ", ".join(f"{label} {ms:.2f} ms" for label, ms in p50.items())
              + f"; working tree / base {new / base:.2f}x")


if __name__ == "__main__":
    main()
