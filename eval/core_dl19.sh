#!/usr/bin/env bash
# The core path on TREC DL19: index (with --dense), then re-rank the shared BM25 top-100,
# BM25 from the index, and FAISS from the index; evaluate each with the official qrels.
set -euo pipefail
DATA="${DIPAIR_DATA:-../shared/data}/msmarco-dl19"
MEASURES="nDCG@10 RR(rel=2)@10 R(rel=2)@100"
[ -f indexes/dl19/manifest.json ] || dipair-rerank index --corpus "$DATA/corpus.jsonl" --index indexes/dl19 --dense
dipair-rerank search --index indexes/dl19 --topics "$DATA/queries.tsv" --candidates "$DATA/runs/bm25.top100.trec" --run runs/dl19.trec
dipair-rerank search --index indexes/dl19 --topics "$DATA/queries.tsv" --first-stage bm25 --run runs/dl19.bm25.trec
dipair-rerank search --index indexes/dl19 --topics "$DATA/queries.tsv" --first-stage dense --run runs/dl19.dense.trec
dipair-rerank eval --qrels "$DATA/qrels.official.txt" --measures "$MEASURES" --run runs/dl19.trec runs/dl19.bm25.trec runs/dl19.dense.trec
