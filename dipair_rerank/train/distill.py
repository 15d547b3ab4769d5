"""Two-stage distillation of a DiPair student from teacher scores, with per-epoch checkpoints and resume.

Stage 1 freezes the encoders and trains projections + head with a large learning rate; stage 2 fine-tunes
everything with a small one. Why two stages: a randomly initialised head trained end to end from the start
sends large, noisy gradients into the pretrained encoders and damages them (DESIGN.md section 1).

Each step takes ``queries_per_step`` queries with their top ``depth`` candidates, encodes each query once and
each distinct document once, and scores all pairs in a single head call.

On disk, under ``TrainConfig.output``::

    checkpoints/stage{S}-epoch{E}/   model (save_pretrained) + optimizer.pt + trainer_state.json
    train_state.json                 the last completed (stage, epoch), its checkpoint, the loss history
    model/                           the final model (save_pretrained)

Calling ``train_dipair`` again with the same output resumes after the last completed epoch.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dipair_rerank.data.runs import Run
from dipair_rerank.errors import DiPairError
from dipair_rerank.model.modeling import CONFIG_NAME, WEIGHTS_NAME, DiPairModel
from dipair_rerank.train.loop import LoopState, replace_dir, run_epochs, save_model_dir, write_json
from dipair_rerank.train.losses import LOSSES, combined_loss

logger = logging.getLogger(__name__)

STATE_NAME = "train_state.json"
OPTIMIZER_NAME = "optimizer.pt"
CHECKPOINT_STATE_NAME = "trainer_state.json"
STAGE2_DEFAULT_MICRO_BATCH = 2


@dataclass
class TrainConfig:
    """How to distil (Chen et al. 2020 train in two stages; we keep theirs and add listwise/label terms).

    Attributes:
        output: folder for checkpoints, ``train_state.json`` and the final ``model/``.
        depth: candidates per query taken from the top of the candidate run.
        stage1_epochs / stage1_lr: epochs and AdamW learning rate with the encoders frozen.
        stage2_epochs / stage2_lr: epochs and learning rate end to end (0 epochs skips the stage).
        queries_per_step: queries per optimiser step.
        micro_batch_queries: queries per forward/backward pass inside a step (gradients accumulate), bounding
            memory: stage 2 back-propagates through the encoder for every candidate of those queries. ``None``:
            the whole step in stage 1 (no encoder graph is kept there) and 2 queries in stage 2.
        loss: "mse" (pointwise, the paper's), "kl" (listwise over each query's candidates) or "mse+kl".
        temperature: softmax temperature of the listwise KL.
        label_weight: weight of the qrels label loss (needs ``qrels`` in ``train_dipair``); 0 turns it off.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        max_grad_norm: gradient clipping norm; ``None`` turns clipping off.
        device: torch device to train on.
        seed: seeds the query order and dropout of every epoch (so a resumed run matches an uninterrupted one).
        bf16: run the forward pass under bf16 autocast (losses are computed in fp32).
        progress: show progress bars.
    """

    output: Path
    depth: int = 30
    stage1_epochs: int = 1
    stage1_lr: float = 1e-3
    stage2_epochs: int = 1
    stage2_lr: float = 2e-5
    queries_per_step: int = 8
    micro_batch_queries: int | None = None
    loss: str = "mse"
    temperature: float = 1.0
    label_weight: float = 0.0
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    device: str = "cpu"
    seed: int = 0
    bf16: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.loss not in LOSSES:
            raise DiPairError(f"unknown loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        for name in ("depth", "queries_per_step"):
            if getattr(self, name) < 1:
                raise DiPairError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.stage1_epochs < 0 or self.stage2_epochs < 0:
            raise DiPairError("epoch counts cannot be negative")
        if self.micro_batch_queries is not None and self.micro_batch_queries < 1:
            raise DiPairError(f"micro_batch_queries must be at least 1, got {self.micro_batch_queries}")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["output"] = str(self.output)
        return values


@dataclass(frozen=True)
class Example:
    """One query's training list: its top candidates with teacher scores and (optional) qrels grades."""

    qid: str
    query: str
    docids: tuple[str, ...]
    teacher: tuple[float, ...]
    relevance: tuple[float, ...] = field(default=())


def build_examples(
    topics: Mapping[str, str],
    candidates: Run,
    teacher_scores: Run,
    doc_text: Mapping[str, str],
    *,
    depth: int,
    qrels: Mapping[str, Mapping[str, int]] | None = None,
) -> list[Example]:
    """Training lists for the queries that have both text and candidates.

    Raises:
        DiPairError: a candidate document has no text or no teacher score, or no query is usable.
    """
    examples: list[Example] = []
    skipped = 0
    for qid, hits in candidates.items():
        if qid not in topics:
            skipped += 1
            continue
        teacher_row = dict(teacher_scores.get(qid, ()))
        docids = tuple(dict.fromkeys(docid for docid, _ in hits))[:depth]
        if not docids:
            continue
        for docid in docids:
            if docid not in doc_text:
                raise DiPairError(f"candidate document {docid!r} (query {qid!r}) has no text")
            if docid not in teacher_row:
                raise DiPairError(f"no teacher score for query {qid!r}, document {docid!r}")
        grades = (qrels or {}).get(qid, {})
        examples.append(
            Example(
                qid=qid,
                query=topics[qid],
                docids=docids,
                teacher=tuple(float(teacher_row[d]) for d in docids),
                relevance=tuple(float(grades.get(d, 0)) for d in docids),
            )
        )
    if skipped:
        logger.warning("%d candidate queries have no topic text and are skipped", skipped)
    if not examples:
        raise DiPairError("no training queries: the candidates and the topics share no query ids")
    return examples


# ----- one step ---------------------------------------------------------------------------------------------
def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _padded(values: Sequence[Sequence[float]], width: int, device: torch.device) -> torch.Tensor:
    out = torch.zeros(len(values), width)
    for row, row_values in enumerate(values):
        out[row, : len(row_values)] = torch.tensor(row_values, dtype=torch.float)
    return out.to(device)


def student_scores(
    model: DiPairModel, examples: Sequence[Example], doc_text: Mapping[str, str], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student scores ``[Q, K]`` and mask for ``examples``: queries encoded once, each distinct document once,
    every pair scored in one head call."""
    config = model.config
    queries = model.encode_queries(
        _to(model.tokenize([e.query for e in examples], max_length=config.query_max_length), device)
    )
    unique = list(dict.fromkeys(docid for e in examples for docid in e.docids))
    row_of = {docid: row for row, docid in enumerate(unique)}
    docs = model.encode_documents(
        _to(model.tokenize([doc_text[d] for d in unique], max_length=config.doc_max_length), device)
    )
    counts = [len(e.docids) for e in examples]
    owner = torch.repeat_interleave(torch.arange(len(examples)), torch.tensor(counts)).to(device)
    slot = torch.cat([torch.arange(count) for count in counts]).to(device)
    rows = torch.tensor([row_of[d] for e in examples for d in e.docids], device=device)
    flat = model.score_prefixes(queries.vectors, queries.mask, docs.vectors[rows], docs.mask[rows], owner)
    width = max(counts)
    scores = torch.zeros(len(examples), width, device=device).index_put((owner, slot), flat.float())
    mask = torch.zeros(len(examples), width, dtype=torch.bool, device=device).index_put(
        (owner, slot), torch.ones_like(slot, dtype=torch.bool)
    )
    return scores, mask


def _examples_loss(
    model: DiPairModel,
    examples: Sequence[Example],
    doc_text: Mapping[str, str],
    config: TrainConfig,
    device: torch.device,
) -> torch.Tensor:
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16):
        scores, mask = student_scores(model, examples, doc_text, device)
    width = scores.shape[1]
    teacher = _padded([e.teacher for e in examples], width, device)
    relevance = _padded([e.relevance for e in examples], width, device) if config.label_weight else None
    return combined_loss(
        config.loss,
        scores.float(),
        teacher,
        mask,
        temperature=config.temperature,
        relevance=relevance,
        label_weight=config.label_weight,
    )


# ----- stages -----------------------------------------------------------------------------------------------
def _set_stage(model: DiPairModel, stage: int) -> list[torch.nn.Parameter]:
    """Freeze (stage 1) or unfreeze (stage 2) the encoders; returns the parameters to optimise."""
    for param in model.parameters():
        param.requires_grad_(stage == 2)
    for param in model.head_parameters():
        param.requires_grad_(True)
    return list(model.parameters()) if stage == 2 else model.head_parameters()


def _train_mode(model: DiPairModel, stage: int) -> None:
    model.train()
    if stage == 1:
        model.encoders.eval()  # frozen encoders: no dropout, outputs as at inference
        if model.doc_top_layer is not None:
            model.doc_top_layer.eval()


def _optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def _epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return seed * 1_000_003 + stage * 1_009 + epoch


def _run_epoch(
    model: DiPairModel,
    examples: Sequence[Example],
    doc_text: Mapping[str, str],
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    config: TrainConfig,
    *,
    stage: int,
    epoch: int,
    device: torch.device,
) -> tuple[float, int]:
    """One pass over the queries in a seeded order; returns (mean step loss, steps)."""
    seed = _epoch_seed(config.seed, stage, epoch)
    order = list(examples)
    random.Random(seed).shuffle(order)
    torch.manual_seed(seed)
    _train_mode(model, stage)
    micro = config.micro_batch_queries or (config.queries_per_step if stage == 1 else STAGE2_DEFAULT_MICRO_BATCH)
    steps = math.ceil(len(order) / config.queries_per_step)
    losses: list[float] = []
    bar = tqdm(total=steps, desc=f"stage {stage} epoch {epoch}", unit="step", disable=not config.progress)
    with bar:
        for start in range(0, len(order), config.queries_per_step):
            batch = order[start : start + config.queries_per_step]
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for part_start in range(0, len(batch), micro):
                part = batch[part_start : part_start + micro]
                loss = _examples_loss(model, part, doc_text, config, device) * (len(part) / len(batch))
                loss.backward()
                step_loss += float(loss.detach())
            if not math.isfinite(step_loss):
                raise DiPairError(f"stage {stage} epoch {epoch}: loss became {step_loss} (lower the learning rate?)")
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            losses.append(step_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
    return sum(losses) / len(losses), len(losses)


# ----- checkpoints ------------------------------------------------------------------------------------------
def checkpoint_name(stage: int, epoch: int) -> str:
    return f"stage{stage}-epoch{epoch}"


def _save_checkpoint(
    model: DiPairModel, optimizer: torch.optim.Optimizer, output: Path, record: Mapping[str, Any]
) -> Path:
    final = output / "checkpoints" / checkpoint_name(record["stage"], record["epoch"])
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = save_model_dir(model, final)
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_NAME)  # tensors + plain containers: weights_only loads it
    write_json(tmp / CHECKPOINT_STATE_NAME, record)
    replace_dir(tmp, final)
    return final


def read_train_state(output: Path) -> dict[str, Any] | None:
    """The ``train_state.json`` of ``output``, or None before the first completed epoch."""
    path = Path(output) / STATE_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DiPairError(f"{path}: not valid JSON ({exc.msg}); delete it to start training afresh") from exc


def _load_weights(model: DiPairModel, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    if not (checkpoint / WEIGHTS_NAME).is_file():
        raise DiPairError(f"checkpoint {checkpoint} has no {WEIGHTS_NAME}; delete {STATE_NAME} to start afresh")
    stored = json.loads((checkpoint / CONFIG_NAME).read_text(encoding="utf-8"))
    given = json.loads(json.dumps(model.config.to_dict()))
    stored.pop("seed", None), given.pop("seed", None)  # only seeds the initial weights, which are replaced
    if stored != given:
        raise DiPairError(f"checkpoint {checkpoint} was trained with a different model config than the one given")
    model.load_state_dict(load_file(str(checkpoint / WEIGHTS_NAME)), strict=True)


def _load_optimizer(optimizer: torch.optim.Optimizer, checkpoint: Path, device: torch.device) -> None:
    path = checkpoint / OPTIMIZER_NAME
    if not path.is_file():
        raise DiPairError(f"checkpoint {checkpoint} has no {OPTIMIZER_NAME}; cannot resume its stage")
    optimizer.load_state_dict(torch.load(path, map_location=device, weights_only=True))


def _train_stage(
    model: DiPairModel,
    examples: Sequence[Example],
    doc_text: Mapping[str, str],
    config: TrainConfig,
    state: LoopState,
    *,
    stage: int,
    epochs: int,
    lr: float,
    resume: bool,
    device: torch.device,
) -> None:
    """Epochs ``state.epoch + 1`` .. ``epochs`` of one stage, a checkpoint and ``train_state.json`` after each."""
    output = config.output
    params = _set_stage(model, stage)
    optimizer = _optimizer(params, lr, config.weight_decay)
    if resume:
        _load_optimizer(optimizer, output / "checkpoints" / checkpoint_name(stage, state.epoch), device)

    def run_epoch(epoch: int) -> dict[str, Any]:
        started = time.perf_counter()
        mean_loss, steps = _run_epoch(
            model, examples, doc_text, optimizer, params, config, stage=stage, epoch=epoch, device=device
        )
        state.step += steps
        seconds = time.perf_counter() - started
        logger.info("stage %d epoch %d: mean loss %.5f over %d steps (%.1fs)", stage, epoch, mean_loss, steps, seconds)
        return {"stage": stage, "epoch": epoch, "mean_loss": mean_loss, "steps": steps, "seconds": seconds}

    def save(state: LoopState) -> None:
        record = state.history[-1]
        checkpoint = _save_checkpoint(model, optimizer, output, {**record, "global_step": state.step})
        write_json(
            output / STATE_NAME,
            {
                "stage": stage,
                "epoch": record["epoch"],
                "checkpoint": str(checkpoint.relative_to(output)),
                "global_step": state.step,
                "history": state.history,
                "config": config.to_dict(),
            },
        )

    run_epochs(state, epochs, run_epoch, save=save)


# ----- entry point ------------------------------------------------------------------------------------------
def train_dipair(
    model: DiPairModel,
    topics: Mapping[str, str],
    candidates: Run,
    doc_text: Mapping[str, str],
    teacher_scores: Run,
    config: TrainConfig,
    *,
    qrels: Mapping[str, Mapping[str, int]] | None = None,
) -> DiPairModel:
    """Distil ``model`` from ``teacher_scores`` in two stages; resumes from ``config.output`` when it holds a
    previous run's state.

    Args:
        model: the student (trained in place and returned); must match the config of any checkpoint resumed.
        topics: qid -> query text.
        candidates: qid -> candidates best first; the top ``config.depth`` of each query are trained on.
        doc_text: docid -> text the student reads.
        teacher_scores: qid -> [(docid, score)] covering every trained candidate (see ``score_candidates``).
        config: see TrainConfig.
        qrels: qid -> docid -> grade, for the label loss (``config.label_weight`` > 0).

    Returns:
        ``model``, in eval mode with every parameter trainable again; also saved to ``output/model``.
    """
    if config.label_weight and not qrels:
        raise DiPairError("label_weight > 0 needs qrels")
    device = torch.device(config.device)
    output = config.output
    output.mkdir(parents=True, exist_ok=True)
    examples = build_examples(topics, candidates, teacher_scores, doc_text, depth=config.depth, qrels=qrels)
    logger.info("training on %d queries, %d pairs", len(examples), sum(len(e.docids) for e in examples))
    model.to(device)

    saved = read_train_state(output)
    state = LoopState()  # epoch: the last completed epoch of the stage in progress
    done_stage = 0
    if saved is not None:
        done_stage, state.epoch = int(saved["stage"]), int(saved["epoch"])
        state.history = list(saved.get("history", []))
        state.step = int(saved.get("global_step", 0))
        _load_weights(model, output / saved["checkpoint"])
        logger.info("resuming after stage %d epoch %d (%s)", done_stage, state.epoch, saved["checkpoint"])

    stages = ((1, config.stage1_epochs, config.stage1_lr), (2, config.stage2_epochs, config.stage2_lr))
    try:
        for stage, epochs, lr in stages:
            if stage < done_stage:
                continue
            resume = stage == done_stage  # inside this stage: continue its optimiser too
            if not resume:
                state.epoch = 0
            if state.epoch < epochs:
                _train_stage(model, examples, doc_text, config, state, stage=stage, epochs=epochs, lr=lr,
                             resume=resume, device=device)
    finally:
        for param in model.parameters():
            param.requires_grad_(True)
        model.eval()

    final = output / "model"
    replace_dir(save_model_dir(model, final), final)
    logger.info("final model saved to %s", final)
    return model


__all__ = ["Example", "TrainConfig", "build_examples", "read_train_state", "student_scores", "train_dipair"]
