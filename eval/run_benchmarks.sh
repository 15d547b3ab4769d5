#!/usr/bin/env bash
# Regenerate every recorded speed/scale number in one go, on a quiet machine, after
# `python eval/effectiveness.py` has built indexes/eff-scifact and indexes/eff-dl19 with the default model.
# Each script's output lands in eval/results/*.txt (and .json); eval/README.md and eval/SCALE.md quote them.
set -euo pipefail
export HF_HUB_OFFLINE=1
mkdir -p eval/results
python eval/bench_latency.py | tee eval/results/bench_latency.txt
python eval/bench_index.py | tee eval/results/bench_index.txt
python eval/bench_codecs.py | tee eval/results/bench_codecs.txt
python eval/plot_tradeoff.py | tee eval/results/plot_tradeoff.txt
python eval/capacity.py | tee eval/results/capacity.txt
python eval/bench_serve.py  # writes eval/results/bench_serve.md (needs the [serve] extra)
