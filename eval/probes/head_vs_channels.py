"""Probe: how much does the head add over its own channels, per domain, and what would channel weights chosen per
domain give? Validation queries only: all DL21 queries (BM25 top-100) and the held-out 20% of SciFact train
(BM25 top-30), the inputs ``eval/recipe/fit_channel_weights.py`` saved (head scores and channel z-scores of the
model it fitted).

Rows per domain: the head alone; the channels alone (no head; weights on a grid, best per domain: the model's
own no-head hybrid); the model as shipped (one set of weights for both domains); head + channels with weights
chosen per domain (what a model told its domain could reach).

    python eval/probes/head_vs_channels.py --model dipair_rerank/model/shipped
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipe"))

from fit_channel_weights import ndcg10  # noqa: E402


def best_weights(head: np.ndarray, z: np.ndarray, gains: np.ndarray, ideal: np.ndarray, grids: list[np.ndarray]
                 ) -> tuple[float, np.ndarray]:
    best = (-1.0, grids[0][:1])
    for weights in itertools.product(*grids):
        w = np.asarray(weights)
        value = float(ndcg10(head + z @ w, gains, ideal).mean())
        if value > best[0] + 1e-9:
            best = (value, w)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dipair_rerank/model/shipped", help="its channel-fit.json names the sets")
    parser.add_argument("--inputs", default="eval/work/train/channels-fit-inputs.npz")
    args = parser.parse_args()
    fit = json.loads((Path(args.model) / "channel-fit.json").read_text())
    shipped = np.asarray(fit["fitted_weights"])
    saved = np.load(args.inputs)
    # the shipped fit's grid, coarser on the lexical weight (the same optimum on the shipped model)
    grids = [np.arange(0, 3.01, 0.1), np.arange(0, 6.01, 0.2), np.arange(-3, 3.01, 0.2)]
    print(f"channels: {', '.join(fit['channels'])}\n")
    print("| domain | head alone | channels alone, no head (weights) | shipped (" + " / ".join(map(str, shipped))
          + ") | head + channels, weights per domain (weights) |")
    print("|---|---:|---:|---:|---:|")
    for number, name in enumerate(fit["fitted_per_set"]):
        head, z, gains, ideal = (saved[f"{key}{number}"] for key in ("head", "z", "gains", "ideal"))
        alone = float(ndcg10(head, gains, ideal).mean())
        # channels alone: the head only breaks ties
        no_head, w_no_head = best_weights(head * 1e-9, z, gains, ideal, grids)
        per_domain, w_domain = best_weights(head, z, gains, ideal, grids)
        shipped_value = float(ndcg10(head + z @ shipped, gains, ideal).mean())
        print(f"| {name} | {alone:.4f} | {no_head:.4f} ({' / '.join(f'{w:.1f}' for w in w_no_head)}) | "
              f"{shipped_value:.4f} | {per_domain:.4f} ({' / '.join(f'{w:.1f}' for w in w_domain)}) |")


if __name__ == "__main__":
    main()
