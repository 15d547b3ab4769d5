"""Stage 1 over cached frozen-encoder features: many epochs of projections + head in minutes, with a held-out
validation split and early stopping on nDCG@10.

Why: stage 1 never changes the encoders, so their outputs are computed once (``features.py``) and each step only
projects the stored prefixes and runs the head. Validation queries (a seeded fraction of every training set)
are never trained on; the epoch with the best validation nDCG@10 (against qrels where a set has them) is kept.

On disk, under ``output``::

    stage1-cached.pt      last epoch's head/projection weights, optimiser, history, best weights (resume)
    stage1-history.json   per-epoch loss, validation nDCG@10 and time (readable)
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dipair_rerank.errors import DiPairError
from dipair_rerank.model.channels import FIRST_STAGE
from dipair_rerank.model.modeling import DiPairModel, _masked_mean, top_layer_at_prefix
from dipair_rerank.train.distill import Example
from dipair_rerank.train.features import FeatureStore, encoder_identity, project_features
from dipair_rerank.train.loop import LoopState, Validation, run_epochs, save_torch
from dipair_rerank.train.losses import LOSSES, combined_loss

logger = logging.getLogger(__name__)

STATE_NAME = "stage1-cached.pt"
HISTORY_NAME = "stage1-history.json"


@dataclass
class CachedStage1Config:
    """Stage 1 over cached features.

    Attributes:
        epochs: maximum epochs (early stopping usually ends sooner).
        lr: AdamW learning rate (stage 1 can take a large one: the encoders are frozen).
        encoder_lr: learning rate of the query tower's tuned top layers (``query_tuned_layers``): small, as in
            stage 2, so the pretrained layers move without being damaged by a random head's early gradients.
        queries_per_step: queries per optimiser step (all their candidates in one head call).
        sample_candidates: candidates per query per step (a random subset of its list, the teacher's best
            always included); ``None`` keeps them all. Cuts the cost per epoch when lists are long.
        loss / temperature / label_weight: see ``losses.combined_loss``.
        val_fraction: share of each set's queries held out for validation (seeded); one value, or one per set
            (1.0 holds a whole set out, e.g. the only MS MARCO set with qrels).
        patience: epochs without a better validation nDCG@10 before stopping.
        warmup_steps: linear learning-rate warm-up.
        weight_decay / max_grad_norm: AdamW decay, gradient clipping.
        bf16: bf16 autocast for the head's forward pass.
        calibrate_scale: before training an untrained head (zero output layer), set ``similarity_scale`` to the
            value whose softmax over candidates best matches the teacher's (a 1-D search). Why: the residual
            cosine spans ~0.3 between candidates while the teacher's z-scores span ~4; left at 1, the fastest
            way to sharpen the student's distribution is to grow the head's output, i.e. noise, and
            validation quality falls in the first epoch (measured: SciFact-train val 0.77 -> 0.61).
        drop_first_stage: share of training queries per step whose first-stage channel is left out (set to 0),
            so that candidates without a first-stage score (plain texts, a service's docids) are a trained input.
        channel_lr_factor: the channel weights' learning rate as a multiple of ``lr``.
        seed: query order, sampling, validation split.
        device / progress: torch device; progress bars.
    """

    epochs: int = 20
    lr: float = 1e-3
    encoder_lr: float = 5e-5
    queries_per_step: int = 32
    sample_candidates: int | None = None
    loss: str = "kl"
    temperature: float = 1.0
    label_weight: float = 0.0
    val_fraction: float | list[float] = 0.1
    patience: int = 3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    bf16: bool = False
    calibrate_scale: bool = True
    drop_first_stage: float = 0.25
    channel_lr_factor: float = 10.0
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise DiPairError(f"unknown loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        fractions = self.val_fraction if isinstance(self.val_fraction, list) else [self.val_fraction]
        if not all(0.0 <= f <= 1.0 for f in fractions):
            raise DiPairError(f"val_fraction must be in [0, 1], got {self.val_fraction}")
        if self.epochs < 0 or self.queries_per_step < 1 or self.patience < 1:
            raise DiPairError("epochs >= 0, queries_per_step >= 1 and patience >= 1 are required")


def split_validation(examples: Sequence[Example], fraction: float | Mapping[str, float], seed: int,
                     group: Mapping[str, str] | None = None) -> tuple[list[Example], list[Example]]:
    """(train, validation): ``fraction`` of the queries of every group (set) held out, seeded; a mapping gives
    each group its own fraction."""
    by_group: dict[str, list[Example]] = {}
    for example in examples:
        by_group.setdefault((group or {}).get(example.qid, ""), []).append(example)
    train: list[Example] = []
    val: list[Example] = []
    for name in sorted(by_group):
        items = sorted(by_group[name], key=lambda e: e.qid)
        random.Random(f"{seed}:{name}").shuffle(items)
        share = fraction.get(name, 0.0) if isinstance(fraction, Mapping) else fraction
        cut = int(round(len(items) * share))
        val.extend(items[:cut])
        train.extend(items[cut:])
    return train, val


class _Packed:
    """Examples as padded arrays: feature rows of query and candidates, teacher scores, grades, mask."""

    def __init__(self, examples: Sequence[Example], q_rows: np.ndarray, d_rows: Sequence[np.ndarray],
                 groups: Sequence[str] | None = None, channels: Sequence[np.ndarray] | None = None):
        self.groups = np.asarray(groups if groups is not None else [""] * len(examples))
        width = max(len(e.docids) for e in examples)
        count = len(examples)
        self.q_rows = np.asarray(q_rows, dtype=np.int64)
        self.d_rows = np.zeros((count, width), np.int64)
        self.teacher = np.zeros((count, width), np.float32)
        self.relevance = np.zeros((count, width), np.float32)
        self.mask = np.zeros((count, width), bool)
        self.channels = np.zeros((count, width, channels[0].shape[1] if channels else 0), np.float32)
        for i, (example, rows) in enumerate(zip(examples, d_rows, strict=True)):
            if channels:
                self.channels[i, : len(example.docids)] = channels[i]
            k = len(example.docids)
            self.d_rows[i, :k] = rows
            self.teacher[i, :k] = example.teacher
            if example.relevance:
                self.relevance[i, :k] = example.relevance
            self.mask[i, :k] = True
        self.has_qrels = self.relevance.max(axis=1) > 0

    def __len__(self) -> int:
        return len(self.q_rows)


def pack(examples: Sequence[Example], queries: FeatureStore, docs: FeatureStore,
         doc_text: Mapping[str, str], group: Mapping[str, str] | None = None,
         channels: Mapping[str, np.ndarray] | None = None) -> _Packed:
    """Feature rows for every query and candidate of ``examples`` (``group``: qid -> training set; ``channels``:
    qid -> the candidates' channel z-scores [k, channels], in the example's order)."""
    q_rows = queries.rows([e.query for e in examples])
    d_rows = [docs.rows([doc_text[d] for d in e.docids]) for e in examples]
    return _Packed(examples, q_rows, d_rows, [(group or {}).get(e.qid, "") for e in examples],
                   [channels[e.qid] for e in examples] if channels else None)


def _macro(values: np.ndarray, packed: _Packed, rows: np.ndarray) -> float:
    """Mean over training sets of each set's mean: a large pseudo-query set does not drown a small real one."""
    groups = packed.groups[rows]
    return float(np.mean([values[groups == g].mean() for g in np.unique(groups)]))


def _sample(packed: _Packed, index: np.ndarray, size: int | None, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(doc rows, teacher, relevance, mask, channels) of the chosen queries, ``size`` candidates each (teacher's
    best kept)."""
    rows, teacher, rel, mask, channels = (packed.d_rows[index], packed.teacher[index], packed.relevance[index],
                                          packed.mask[index], packed.channels[index])
    if size is None or size >= rows.shape[1]:
        return rows, teacher, rel, mask, channels
    keys = rng.random(rows.shape) + np.where(mask, 0.0, 10.0)  # padding last
    best = np.argmax(np.where(mask, teacher, -np.inf), axis=1)
    keys[np.arange(len(index)), best] = -1.0  # the teacher's top candidate always in
    pick = np.argsort(keys, axis=1)[:, :size]
    take = lambda a: np.take_along_axis(a, pick, axis=1)  # noqa: E731
    return take(rows), take(teacher), take(rel), take(mask), np.take_along_axis(channels, pick[..., None], axis=1)


def run_top_layers(encoder: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
    """Encoder layers ``start`` .. last over stored hidden states (the rest of a BERT-style forward pass)."""
    additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
    for layer in encoder.encoder.layer[start:]:
        out = layer(hidden, attention_mask=additive)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def query_vectors(model: DiPairModel, queries: FeatureStore, q_rows: np.ndarray, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected query blocks from stored features: outputs (frozen towers), or the input of the tuned top
    layers, which then run here with gradients (``query_tuned_layers``)."""
    prefix = torch.from_numpy(queries.prefix[q_rows]).to(device)
    mask = torch.from_numpy(queries.mask[q_rows]).to(device)
    layer = queries.meta.get("layer")
    if layer is None:  # outputs of the (frozen) query tower
        pooled = torch.from_numpy(queries.pooled[q_rows]).to(device)
        return project_features(model, "query", prefix, mask, pooled, model.config.query_prefix)
    width = max(int(mask.sum(1).max()), model.config.query_prefix)  # stored padded to max_length: trim
    prefix, mask = prefix[:, :width], mask[:, :width]
    hidden = run_top_layers(model.query_encoder, prefix.float(), mask, int(layer))
    return project_features(model, "query", hidden, mask, _masked_mean(hidden, mask), model.config.query_prefix)


def doc_vectors(model: DiPairModel, docs: FeatureStore, d_rows: np.ndarray, device: torch.device,
                slice_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected document blocks from stored features: outputs (frozen tower), or the input of the top layer,
    whose trained copy then runs here at the kept positions with gradients (``doc_tuned_layer``), ``slice_size``
    documents at a time (each trimmed to its longest: a float copy of 256 tokens x 15k candidates is 6 GB)."""
    mask = torch.from_numpy(docs.mask[d_rows]).to(device)
    pooled = torch.from_numpy(docs.pooled[d_rows]).to(device)
    keep = model.config.doc_prefix
    if docs.meta.get("layer") is None:
        prefix = torch.from_numpy(docs.prefix[d_rows]).to(device)
    else:
        parts = []
        for start in range(0, len(d_rows), slice_size):
            part_mask = mask[start : start + slice_size]
            width = max(int(part_mask.sum(1).max()), keep)  # stored padded to max_length: trim
            hidden = torch.from_numpy(docs.prefix[d_rows[start : start + slice_size], :width]).to(device)
            parts.append(top_layer_at_prefix(model.doc_top_layer, hidden.float(), part_mask[:, :width], keep))
        prefix, mask = torch.cat(parts), mask[:, :keep]
    return project_features(model, "doc", prefix, mask, pooled, keep)


def query_feature_layer(model: DiPairModel, *, tune_query_layers: bool = True) -> int | None:
    """Which hidden states the query features must hold: None (outputs of the query tower as it is) or the first
    tuned layer's input (when those layers train)."""
    tuned = model.config.query_tuned_layers
    return len(model.query_encoder.encoder.layer) - tuned if tuned > 0 and tune_query_layers else None


def doc_feature_layer(model: DiPairModel) -> int | None:
    """Which hidden states the document features must hold: None (outputs) or the top layer's input."""
    return len(model.doc_encoder.encoder.layer) - 1 if model.config.doc_tuned_layer else None


def cached_scores(model: DiPairModel, queries: FeatureStore, docs: FeatureStore, q_rows: np.ndarray,
                  d_rows: np.ndarray, device: torch.device, channels: np.ndarray | None = None) -> torch.Tensor:
    """Student scores [Q, K] for queries ``q_rows`` [Q] against candidates ``d_rows`` [Q, K] (feature rows), plus
    the model's channels from their z-scores ``channels`` [Q, K, C]."""
    count, width = d_rows.shape
    q_vec, q_mask = query_vectors(model, queries, q_rows, device)
    d_vec, d_mask = doc_vectors(model, docs, d_rows.reshape(-1), device)
    owner = torch.arange(count, device=device).repeat_interleave(width)
    scores = model.score_prefixes(q_vec, q_mask, d_vec, d_mask, owner).float().view(count, width)
    if channels is not None and channels.shape[-1]:
        scores = scores + model.channel_scores(torch.from_numpy(channels).to(device))
    return scores


def _ndcg10_rows(scores: np.ndarray, relevance: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """nDCG@10 per row over its real candidates (ideal from the judged candidates in the list)."""
    scores = np.where(mask, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    discounts = 1.0 / np.log2(np.arange(2, 12))
    gains = (2.0 ** np.take_along_axis(np.where(mask, relevance, 0), order, axis=1) - 1)
    dcg = (gains * discounts[: gains.shape[1]]).sum(axis=1)
    ideal = -np.sort(-(2.0 ** np.where(mask, relevance, 0) - 1), axis=1)[:, :10]
    idcg = (ideal * discounts[: ideal.shape[1]]).sum(axis=1)
    return np.where(idcg > 0, dcg / np.maximum(idcg, 1e-12), 0.0)


@torch.no_grad()
def validate(model: DiPairModel, packed: _Packed, queries: FeatureStore, docs: FeatureStore,
             device: torch.device, *, batch: int = 64, bf16: bool = False) -> dict[str, float]:
    """nDCG@10 against qrels (queries with any; macro-averaged over sets, and per set) and agreement with the
    teacher (its top 3 as grades)."""
    was_training = model.training
    model.eval()
    scores = np.zeros(packed.mask.shape, np.float32)
    for start in range(0, len(packed), batch):
        idx = np.arange(start, min(start + batch, len(packed)))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = cached_scores(model, queries, docs, packed.q_rows[idx], packed.d_rows[idx], device,
                                packed.channels[idx])
        scores[idx] = out.float().cpu().numpy()
    model.train(was_training)
    teacher_rank = np.argsort(np.argsort(-np.where(packed.mask, packed.teacher, -np.inf), axis=1), axis=1)
    teacher_grades = np.where(teacher_rank < 3, 1.0, 0.0)
    everything = np.arange(len(packed))
    result = {"val_teacher_ndcg10": _macro(_ndcg10_rows(scores, teacher_grades, packed.mask), packed, everything)}
    if packed.has_qrels.any():
        rows = np.flatnonzero(packed.has_qrels)
        per_query = _ndcg10_rows(scores[rows], packed.relevance[rows], packed.mask[rows])
        result["val_ndcg10"] = _macro(per_query, packed, rows)
        for name in np.unique(packed.groups[rows]):
            result[f"val_ndcg10[{name}]"] = float(per_query[packed.groups[rows] == name].mean())
    else:
        result["val_ndcg10"] = result["val_teacher_ndcg10"]
    return result


def teacher_validation(packed: _Packed) -> float:
    """The teacher's own nDCG@10 on the validation queries with qrels: the ceiling distillation aims at."""
    rows = np.flatnonzero(packed.has_qrels)
    if not len(rows):
        return float("nan")
    return _macro(_ndcg10_rows(packed.teacher[rows], packed.relevance[rows], packed.mask[rows]), packed, rows)


@torch.no_grad()
def calibrate_similarity_scale(model: DiPairModel, packed: _Packed, queries: FeatureStore, docs: FeatureStore,
                               device: torch.device, *, temperature: float = 1.0, sample: int = 512) -> float | None:
    """Set ``similarity_scale`` to minimise the listwise KL to the teacher while the head outputs zero; returns
    the new scale (None when the head is already trained or the model has no similarity residual)."""
    from dipair_rerank.train.losses import listwise_kl

    if not model.config.similarity_residual or bool(model.score_out.weight.abs().sum() > 0):
        return None
    was_training = model.training
    model.eval()
    idx = np.arange(min(sample, len(packed)))
    current = float(model.similarity_scale.detach())
    cosines = cached_scores(model, queries, docs, packed.q_rows[idx], packed.d_rows[idx], device) / current
    mask = torch.from_numpy(packed.mask[idx]).to(device)
    teacher = torch.from_numpy(packed.teacher[idx]).to(device)
    grid = np.geomspace(0.5, 200.0, 60)
    losses = [float(listwise_kl(cosines * scale, teacher, mask, temperature=temperature)) for scale in grid]
    best = float(grid[int(np.argmin(losses))])
    model.similarity_scale.fill_(best)
    model.train(was_training)
    logger.info("similarity_scale calibrated to %.2f (listwise KL %.4f, was %.4f at %.2f)", best, min(losses),
                float(listwise_kl(cosines * current, teacher, mask, temperature=temperature)), current)
    return best


def train_stage1_cached(
    model: DiPairModel,
    train: Sequence[Example],
    val: Sequence[Example],
    queries: FeatureStore,
    docs: FeatureStore,
    doc_text: Mapping[str, str],
    config: CachedStage1Config,
    output: str | Path | None = None,
    group: Mapping[str, str] | None = None,
    channels: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Train projections + head of ``model`` on cached features; leaves the best epoch's weights in ``model``.

    Returns:
        A summary: history, best epoch, best validation nDCG@10, the teacher's validation nDCG@10.
    """
    if queries.keep < model.config.query_prefix or docs.keep < model.config.doc_prefix:
        raise DiPairError(f"features keep {queries.keep}/{docs.keep} vectors; the model needs "
                          f"{model.config.query_prefix}/{model.config.doc_prefix}")
    tune_query = config.encoder_lr > 0
    needed = query_feature_layer(model, tune_query_layers=tune_query)
    if queries.meta.get("layer") != needed:
        raise DiPairError(f"query features hold layer {queries.meta.get('layer')} states; this model needs "
                          f"{needed} (query_tuned_layers={model.config.query_tuned_layers})")
    if queries.meta.get("encoder") != encoder_identity(model, "query", needed):
        raise DiPairError(f"{queries.folder} holds another query tower's states; extract this model's")
    if docs.meta.get("layer") != doc_feature_layer(model):
        raise DiPairError(f"document features hold layer {docs.meta.get('layer')} states; this model needs "
                          f"{doc_feature_layer(model)} (doc_tuned_layer={model.config.doc_tuned_layer})")
    device = torch.device(config.device)
    model.to(device)
    for param in model.parameters():
        param.requires_grad_(False)
    tuned = model.tuned_encoder_parameters() if tune_query else []  # encoder_lr 0: the query tower stays
    for param in tuned:
        param.requires_grad_(True)
    head = model.head_parameters()
    for param in head:
        param.requires_grad_(True)
    params = head + tuned
    channel = [p for p in head if p is model.channel_weights]
    head = [p for p in head if p is not model.channel_weights]
    groups = [{"params": [p for p in head if p.ndim >= 2], "weight_decay": config.weight_decay, "base": config.lr},
              {"params": [p for p in head if p.ndim < 2], "weight_decay": 0.0, "base": config.lr}]
    if channel:  # a few scalars on unit-scale inputs: at the head's rate they would take epochs to reach their size
        groups.append({"params": channel, "weight_decay": 0.0, "base": config.lr * config.channel_lr_factor})
    if tuned:
        groups.append({"params": tuned, "weight_decay": config.weight_decay, "base": config.encoder_lr})
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    if model.config.channels and not channels:
        raise DiPairError(f"the model has channels {model.config.channels}: give their values per query")
    train_packed = pack(train, queries, docs, doc_text, group, channels)
    val_packed = pack(val, queries, docs, doc_text, group, channels) if val else None
    first_stage = model.config.channels.index(FIRST_STAGE) if FIRST_STAGE in model.config.channels else None
    steps_per_epoch = math.ceil(len(train_packed) / config.queries_per_step)
    total_steps = max(1, steps_per_epoch * config.epochs)

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    output = Path(output) if output is not None else None
    state = LoopState()
    if output is not None and (output / STATE_NAME).is_file():
        saved = torch.load(output / STATE_NAME, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        state = LoopState.from_dict(saved)
        logger.info("resuming stage 1 after epoch %d (best %.4f at epoch %d)", state.epoch, state.best,
                    state.best_epoch)
    teacher_val = teacher_validation(val_packed) if val_packed is not None else float("nan")
    if not state.history and config.calibrate_scale:
        calibrate_similarity_scale(model, train_packed, queries, docs, device, temperature=config.temperature)
    if val_packed is not None:
        logger.info("teacher's validation nDCG@10: %.4f", teacher_val)

    def run_epoch(epoch: int) -> dict[str, Any]:
        started = time.perf_counter()
        model.train()
        model.encoders.eval()  # frozen and tuned encoder layers run without dropout, as at inference
        if model.doc_top_layer is not None:
            model.doc_top_layer.eval()
        rng = np.random.default_rng(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)
        order = rng.permutation(len(train_packed))
        losses: list[float] = []
        bar = tqdm(total=steps_per_epoch, desc=f"stage 1 (cached) epoch {epoch}", unit="step",
                   disable=not config.progress)
        with bar:
            for begin in range(0, len(order), config.queries_per_step):
                idx = order[begin : begin + config.queries_per_step]
                rows, teacher, rel, mask, z = _sample(train_packed, idx, config.sample_candidates, rng)
                if first_stage is not None and config.drop_first_stage > 0:
                    z = z.copy()
                    z[rng.random(len(idx)) < config.drop_first_stage, :, first_stage] = 0.0
                for param_group in optimizer.param_groups:
                    param_group["lr"] = param_group["base"] * lr_factor(state.step)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16):
                    scores = cached_scores(model, queries, docs, train_packed.q_rows[idx], rows, device, z)
                mask_t = torch.from_numpy(mask).to(device)
                loss = combined_loss(config.loss, scores.float().masked_fill(~mask_t, 0.0),
                                     torch.from_numpy(teacher).to(device), mask_t, temperature=config.temperature,
                                     relevance=torch.from_numpy(rel).to(device), label_weight=config.label_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise DiPairError(f"stage 1 epoch {epoch}: loss became {value} (lower the learning rate?)")
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                state.step += 1
                losses.append(value)
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        return {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": round(time.perf_counter() - started, 1)}

    def save(state: LoopState) -> None:
        output.mkdir(parents=True, exist_ok=True)
        save_torch({"model": model.trainable_state(), "optimizer": optimizer.state_dict(), **state.to_dict()},
                   output / STATE_NAME)
        (output / HISTORY_NAME).write_text(json.dumps({"history": state.history, "best_epoch": state.best_epoch,
                                                       "teacher_val_ndcg10": teacher_val,
                                                       "config": asdict(config)}, indent=2) + "\n")

    validation = None
    if val_packed is not None:
        validation = Validation(lambda: validate(model, val_packed, queries, docs, device, bf16=config.bf16),
                                metric="val_ndcg10", patience=config.patience)
    run_epochs(state, config.epochs, run_epoch, validation=validation, snapshot=model.trainable_state,
               save=save if output is not None else None, label="stage 1")
    model.load_state_dict(state.best_state, strict=False)
    for param in model.parameters():
        param.requires_grad_(True)
    model.eval()
    return {"history": state.history, "best_epoch": state.best_epoch, "best_val_ndcg10": state.best,
            "teacher_val_ndcg10": teacher_val}


__all__ = ["CachedStage1Config", "cached_scores", "doc_feature_layer", "pack", "split_validation", "train_stage1_cached", "validate"]
