"""Where a query's encoding goes, operator by operator (issue 11): ONNX Runtime's own profiler over the default
query graph, one DL19 query at a time, with the shipped thread policy (workers spin within a call) and with
workers that sleep whenever idle (the policy before). Small operators that cost far more than their work point
at thread wake-ups, not arithmetic.

    python eval/profile_query_graph.py   # the default model; writes eval/results/profile_query_graph.md
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from dipair_rerank.data import read_topics, shared_data_dir
from dipair_rerank.evaluate.report import publish_report

POLICIES = {"shipped: spin within a call": "1", "workers sleep whenever idle": "0"}


def profile(path: Path, spin: str, feeds: list[dict[str, np.ndarray]], threads: int, passes: int
            ) -> dict[str, tuple[float, float]]:
    """op type -> (microseconds per query, nodes per query), from ONNX Runtime's profile of ``passes`` passes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.force_spinning_stop", "1")
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "query")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(passes + 1):  # the first pass warms up: profiled too, dropped below
            for feed in feeds:
                session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = passes * len(feeds)
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                        key=lambda e: e["ts"])[len(feeds):]
    first = model_runs[0]["ts"]
    micros: dict[str, float] = collections.defaultdict(float)
    nodes: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first:
            micros[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    total = sum(e["dur"] for e in model_runs)
    result = {op: (micros[op] / runs, nodes[op] / runs) for op in micros}
    result["(whole run)"] = (total / runs, 0.0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3, help="passes over the 43 DL19 queries per policy")
    parser.add_argument("--output", default="eval/results/profile_query_graph.md")
    args = parser.parse_args()
    from dipair_rerank.model import load_model
    from dipair_rerank.model.onnx_query import quantize_query_branch
    from dipair_rerank.rerank import query_token_ids

    model = load_model(None)
    path = quantize_query_branch(model)
    encode = query_token_ids(model.tokenizer, model.config.query_max_length)
    queries = list(read_topics(shared_data_dir() / "msmarco-dl19" / "queries.tsv").values())
    feeds = []
    for ids in encode(queries):
        row = np.array([ids], dtype=np.int64)
        feeds.append({"input_ids": row, "attention_mask": np.ones_like(row)})
    profiles = {name: profile(path, spin, feeds, args.threads, args.passes) for name, spin in POLICIES.items()}
    shipped, before = profiles.values()
    ops = sorted(set(shipped) | set(before), key=lambda op: -before.get(op, (0.0, 0.0))[0])
    lines = [f"# profile_query_graph  {time.strftime('%Y-%m-%d %H:%M')}  {path.name}, {args.threads} threads, "
             f"{len(feeds)} DL19 queries x {args.passes}, one at a time; microseconds per query (ONNX Runtime's "
             "profiler: kernel time of each operator type, summed)", "",
             "| operator | nodes per query | " + " | ".join(f"{name}: us" for name in POLICIES)
             + " | us per node, shipped | us per node, sleeping |", "|---|---:|" + "---:|" * (len(POLICIES) + 2)]
    for op in ops:
        count = before.get(op, shipped.get(op))[1]
        cells = [f"{profiles[name].get(op, (0.0, 0.0))[0]:.1f}" for name in POLICIES]
        per_node = [f"{p.get(op, (0.0, 0.0))[0] / count:.1f}" if count else "" for p in (shipped, before)]
        lines.append(f"| {op} | {f'{count:.0f}' if count else ''} | " + " | ".join(cells + per_node) + " |")
    publish_report("\n".join(lines) + "\n", args.output)


if __name__ == "__main__":
    main()
