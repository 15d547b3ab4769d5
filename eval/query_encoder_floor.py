"""The floor under query encoding on this machine (issue 11): weight bytes against memory bandwidth, and the
ONNX Runtime variants of the default model's query branch, timed side by side in one loop.

Encoding one short query multiplies a few token vectors by every weight matrix of the query tower once, so when
the weights do not fit in the last-level cache each query streams them from memory. This prints:
  1. the fp32 bytes of the query tower's encoder layers, and the rate at which 1 and 2 threads read memory here
     (twice that many bytes, summed): bytes / the 2-thread rate is the least a query can cost before any
     arithmetic, when its weights come from memory;
  2. p50 ms per DL19 query (one at a time, 2 threads, the order of the variants rotated per query) of the fp32
     graph (``--query-backend onnx``: attention, layer norms and GELU fused by ONNX Runtime's BERT optimiser), the
     same graph as traced (unfused), the int8 graph the default backend runs (``onnx-int8``: the fused graph's
     products as 8-bit MatMulNBits, one scale per 128 weights, int8 arithmetic), the same with blocks of 32, and
     fp16 weights cast to fp32 in the graph (graph optimisations off, or the casts are folded away);
  3. the fp32 and int8 graphs over all the queries at once, in the re-ranker's length groups (as
     ``batch_search`` encodes a batch): ms per query.

    python eval/query_encoder_floor.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from dipair_rerank.data import read_topics, shared_data_dir
from dipair_rerank.evaluate.report import publish_report


def tower_matrices(model) -> list[np.ndarray]:
    """The query tower's encoder weight matrices (frozen lower layers and tuned top layers), fp32."""
    return [p.detach().float().numpy() for name, p in model.query_encoder.named_parameters()
            if p.ndim == 2 and ".layer." in name]


def read_gb_per_s(total_bytes: int, threads: int, passes: int = 10) -> float:
    """GB/s at which ``threads`` threads read ``total_bytes`` of fp32 (disjoint parts, summed with numpy, which
    releases the GIL); twice the tower's size, so nothing is served from the last-level cache."""
    from concurrent.futures import ThreadPoolExecutor

    parts = [np.ones(total_bytes // 4 // threads, dtype=np.float32) for _ in range(threads)]
    seconds = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(passes):
            started = time.perf_counter()
            list(pool.map(np.sum, parts))
            seconds.append(time.perf_counter() - started)
    return sum(part.nbytes for part in parts) / statistics.median(seconds) / 1e9


def fp16_weights_copy(source: Path, target: Path) -> Path:
    """The graph with every large constant matmul weight stored in fp16 and cast back to fp32 in the graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph_model = onnx.load(str(source))
    graph = graph_model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    nodes = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 else None
        if weight is not None and weight.data_type == TensorProto.FLOAT and np.prod(weight.dims) > 10_000:
            values = numpy_helper.to_array(weight)
            graph.initializer.remove(weight)
            graph.initializer.append(numpy_helper.from_array(values.astype(np.float16), weight.name + "_fp16"))
            nodes.append(helper.make_node("Cast", [weight.name + "_fp16"], [weight.name], to=TensorProto.FLOAT))
            del initializers[weight.name]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(graph_model, str(target))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="passes over DL19's 43 queries")
    parser.add_argument("--output", default="eval/results/query_encoder_floor.md")
    args = parser.parse_args()
    import logging

    import onnxruntime as ort

    from dipair_rerank.model import load_model
    from dipair_rerank.rerank import QUERY_GROUP_RATIO, length_groups
    from dipair_rerank.model.onnx_query import (cache_dir, export_query_branch, fused_query_branch, inference_session,
                                                quantize_query_branch, write_int8_graph)

    logging.disable(logging.INFO)  # the quantisers log every node
    model = load_model().eval()
    tower_bytes = sum(m.nbytes for m in tower_matrices(model))
    bandwidth = {threads: read_gb_per_s(2 * tower_bytes, threads) for threads in (1, args.threads)}

    served = fused_query_branch(model)
    work = cache_dir() / "onnx" / "floor"
    work.mkdir(parents=True, exist_ok=True)
    traced = export_query_branch(model, work / "traced.onnx", fuse=False)
    fp32_name, int8_name = "fp32, fused (onnx)", "int8, blocks of 128, fused (onnx-int8, the default)"
    sessions = {fp32_name: inference_session(served, args.threads),
                "fp32, as traced": inference_session(traced, args.threads),
                int8_name: inference_session(quantize_query_branch(model), args.threads),
                "int8, blocks of 32, fused": inference_session(write_int8_graph(served, work / "int8-32.onnx", 32),
                                                               args.threads)}
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions["fp16 weights, cast per call"] = ort.InferenceSession(
        str(fp16_weights_copy(traced, work / "fp16-weights.onnx")), options, providers=["CPUExecutionProvider"])

    queries = list(read_topics(shared_data_dir() / "msmarco-dl19" / "queries.tsv").values())
    tokenizer = model.tokenizer
    inputs = []
    for query in queries:
        ids = np.array(tokenizer([query], truncation=True, max_length=model.config.query_max_length)["input_ids"])
        ids = np.pad(ids, ((0, 0), (0, max(0, model.config.query_prefix - ids.shape[1]))))
        inputs.append({"input_ids": ids.astype(np.int64), "attention_mask": (ids != 0).astype(np.int64)})
    names = list(sessions)
    for feed in inputs[:3]:  # untimed warm-up
        for name in names:
            sessions[name].run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(args.rounds):
        for position, feed in enumerate(inputs):
            shift = (turn * len(inputs) + position) % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                sessions[name].run(None, feed)
                times[name].append(time.perf_counter() - started)

    lengths = [int(feed["attention_mask"].sum()) for feed in inputs]
    batched: dict[str, list[float]] = {fp32_name: [], int8_name: []}
    for _ in range(args.rounds):
        for name in batched:
            started = time.perf_counter()
            for group in length_groups(lengths, QUERY_GROUP_RATIO):
                width = max(inputs[i]["input_ids"].shape[1] for i in group)
                rows = [inputs[i]["input_ids"] for i in group]
                ids = np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]))) for row in rows])
                sessions[name].run(None, {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)})
            batched[name].append((time.perf_counter() - started) / len(inputs))

    lines = [
        f"# query_encoder_floor  {time.strftime('%Y-%m-%d %H:%M')}  default model, {args.threads} threads, "
        f"{len(queries)} DL19 queries x {args.rounds}",
        "",
        f"query tower weights (encoder layers, fp32): {tower_bytes / 1e6:.1f} MB; memory read at "
        f"{bandwidth[1]:.1f} GB/s (1 thread), {bandwidth[args.threads]:.1f} GB/s ({args.threads} threads) -> "
        f"{tower_bytes / 1e6 / bandwidth[args.threads]:.2f} ms per query to read the weights once",
        "",
        "| query branch | p50 ms per query |",
        "|---|---:|",
        *(f"| {name} | {statistics.median(values) * 1000:.2f} |" for name, values in times.items()),
        *(f"| {name}, all {len(queries)} queries in one batch (length groups), per query | "
          f"{statistics.median(values) * 1000:.2f} |" for name, values in batched.items()),
    ]
    text = "\n".join(lines) + "\n"
    publish_report(text, args.output)


if __name__ == "__main__":
    main()
