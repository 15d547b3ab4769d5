"""Head latency over the model shapes the default is chosen from (issues 10 and 11), side by side in one run.

For each shape (head layers x doc prefix n x width d_p; m = 8 and the pooled slots as shipped), one head call
scoring ``--candidates`` cached blocks for one query, as ``DiPairReranker`` makes it (inference path, position 0
only in the last layer), fp32 and bf16 autocast, at 1 and 2 torch threads, and for one-layer heads the same call
on ONNX Runtime (``model/onnx_head.py``, what the re-ranker runs by default) at 1 thread. Random weights: only time
matters here; quality per shape is in eval/RESULTS.md (ablation).

    python eval/bench_head.py [--candidates 100] [--calls 200]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ablation import head_latency_ms
from dipair_rerank.evaluate.report import format_table
from dipair_rerank.model import DiPairConfig, DiPairModel, tiny_encoder_config
from dipair_rerank.model.onnx_head import OnnxHead, head_exports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", default="eval/results/bench_head.json")
    args = parser.parse_args()
    rows = []
    for layers, doc_prefix, width in itertools.product((1, 2), (8, 16), (96, 128)):
        # the encoder is irrelevant to head timing: a tiny one keeps the set-up fast
        model = DiPairModel(DiPairConfig(encoder_config=tiny_encoder_config(), head_layers=layers,
                                         doc_prefix=doc_prefix, proj_dim=width)).eval()
        row: dict[str, object] = {"head layers": layers, "n": doc_prefix, "d_p": width,
                                  "bytes/doc (fp16)": (doc_prefix + 1) * width * 2}
        for threads, bf16 in itertools.product((1, 2), (False, True)):
            torch.set_num_threads(threads)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                row[f"{'bf16' if bf16 else 'fp32'} {threads}t ms"] = head_latency_ms(model, args.candidates, args.calls)
        onnx = OnnxHead(model, threads=1) if head_exports(model) else None
        row["onnx 1t ms"] = head_latency_ms(model, args.candidates, args.calls, score=onnx) if onnx else "-"
        rows.append(row)
    columns = list(rows[0])
    print(f"# bench_head  {time.strftime('%Y-%m-%d %H:%M')}  {args.candidates} candidates, m=8, p50 of "
          f"{args.calls} calls")
    print(format_table(rows, columns))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
