"""A shallower query tower distilled from a model's own: the same model with some frozen query layers
left out, whose tuned top layers learn to give the blocks the full tower gives.

Why: at query time most of DiPair's cost is the query tower (docs/design-decisions.md), and every query layer
costs the same. Only query texts are needed, no labels or documents: the target is the teacher's own query blocks.
The document tower, projections and head are the teacher's and stay frozen, so the student scores cached
documents as the teacher would score them from the same blocks. The layers below the tuned ones are frozen too,
so their outputs are computed once and each step runs only the tuned layers, forward and backward.

On disk, under ``output``: ``state.pt`` (the student's trained state, optimiser and losses after each epoch:
rerunning resumes) and, when done, ``model/`` (a model folder, as ``save_pretrained`` writes it).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dipair_rerank.errors import DiPairError
from dipair_rerank.model import DiPairModel
from dipair_rerank.model.config import DiPairConfig
from dipair_rerank.model.modeling import ENCODER_PREFIX, Prefix, _masked_mean
from dipair_rerank.train.cached import run_top_layers
from dipair_rerank.train.features import project_features
from dipair_rerank.train.loop import LoopState, run_epochs, save_torch

logger = logging.getLogger(__name__)

STATE_NAME = "state.pt"
POOLED_WEIGHT = 10.0  # the full-width cosine carries the bi-encoder's share of the score: weigh its error up


def shallow_student(teacher: DiPairModel, skipped: Sequence[int]) -> DiPairModel:
    """``teacher`` with its frozen query layers ``skipped`` left out; everything else, tuned layers included,
    starts as the teacher's (a skipped layer's successors take its place in the numbering)."""
    if teacher.config.query_skipped_layers:
        raise DiPairError(f"the teacher's query tower already leaves out layers {teacher.config.query_skipped_layers}: "
                          "distil from the full-tower model it was made from")
    config = DiPairConfig.from_dict({**teacher.config.to_dict(), "query_skipped_layers": sorted(set(skipped))})
    student = DiPairModel(config, pretrained_encoder=config.encoder_config is None)
    layer = f"{ENCODER_PREFIX}0.encoder.layer."
    renumber = {old: new for new, old in enumerate(i for i in range(len(teacher.query_encoder.encoder.layer))
                                                   if i not in config.query_skipped_layers)}
    state = {}
    for name, tensor in teacher.state_dict().items():
        if name.startswith(layer):
            index, rest = name[len(layer):].split(".", 1)
            if int(index) not in renumber:
                continue
            name = f"{layer}{renumber[int(index)]}.{rest}"
        state[name] = tensor
    student.load_state_dict(state)
    return student.eval()


def query_loss(student: Prefix, teacher: Prefix, slots: int) -> torch.Tensor:
    """Mean squared error of the projected rows the head reads (real ones only, per d_p), plus the full-width
    pooled vector's cosine distance."""
    real = teacher.mask[:, :slots].unsqueeze(-1).float()
    error = ((student.vectors[:, :slots] - teacher.vectors[:, :slots]) ** 2 * real).sum() / real.sum()
    pooled = 1.0 - F.cosine_similarity(student.pooled, teacher.pooled, dim=-1).mean()
    return error / student.vectors.shape[-1] + POOLED_WEIGHT * pooled


def distill_query_tower(teacher: DiPairModel, student: DiPairModel, queries: Sequence[str], output: str | Path, *,
                        epochs: int = 8, lr: float = 2e-4, batch_size: int = 64, seed: int = 0,
                        progress: bool = True) -> list[float]:
    """Train ``student``'s tuned query layers on ``queries`` to give ``teacher``'s query blocks; returns the mean
    loss of each epoch. Batches hold queries of similar length (shuffled in batch order each epoch)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    config = student.config
    tower = student.query_encoder
    first = len(tower.encoder.layer) - config.query_tuned_layers
    trained = [p for layer in tower.encoder.layer[first:] for p in layer.parameters()]
    ids = {id(p) for p in trained}
    for parameter in student.parameters():
        parameter.requires_grad_(id(parameter) in ids)
    batches = _layer_inputs(teacher, student, sorted(queries, key=len), first, batch_size, progress)
    optimiser = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=epochs * len(batches), pct_start=0.1)
    state = LoopState()
    path = output / STATE_NAME
    if path.is_file():  # resume after the last finished epoch
        saved = torch.load(path, weights_only=True)
        student.load_state_dict(saved["student"], strict=False)
        optimiser.load_state_dict(saved["optimiser"])
        schedule.load_state_dict(saved["schedule"])
        state.history = [{"epoch": epoch, "loss": loss} for epoch, loss in enumerate(saved["losses"], start=1)]
        state.epoch = len(state.history)
        logger.info("resuming after epoch %d", state.epoch)
    order = random.Random(seed)
    for _ in range(state.epoch):
        order.shuffle(batches)  # replay the finished epochs' shuffles

    def run_epoch(epoch: int) -> dict[str, float]:
        order.shuffle(batches)
        total = 0.0
        for hidden, attention, target in tqdm(batches, desc=f"epoch {epoch}/{epochs}", disable=not progress):
            outputs = run_top_layers(tower, hidden, attention, first)
            vectors, mask = project_features(student, "query", outputs, attention, _masked_mean(outputs, attention),
                                             config.query_prefix)
            pooled = F.normalize(_masked_mean(outputs, attention), dim=-1)
            loss = query_loss(Prefix(vectors, mask, pooled), target, config.query_slots)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
        logger.info("epoch %d: loss %.4f", epoch, total / len(batches))
        return {"epoch": epoch, "loss": total / len(batches)}

    def save(state: LoopState) -> None:
        save_torch({"student": student.trainable_state(), "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(), "losses": [r["loss"] for r in state.history]}, path)

    run_epochs(state, epochs, run_epoch, save=save)
    student.eval()
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    return [record["loss"] for record in state.history]


def _layer_inputs(teacher: DiPairModel, student: DiPairModel, queries: Sequence[str], first: int, batch_size: int,
                  progress: bool) -> list[tuple[torch.Tensor, torch.Tensor, Prefix]]:
    """(input of the student's first tuned layer, attention mask, teacher's blocks) per batch, computed once.
    Batches are padded to at least the kept prefix, so every query's blocks have the teacher's shape."""
    keep, length = student.config.query_prefix, student.config.query_max_length
    batches = []
    with torch.no_grad():  # not inference mode: these tensors feed the trained layers
        for start in tqdm(range(0, len(queries), batch_size), desc="frozen layers", disable=not progress):
            batch = student.tokenize(queries[start : start + batch_size], max_length=length)
            short = keep - batch["input_ids"].shape[1]
            if short > 0:
                batch = {name: F.pad(values, (0, short)) for name, values in batch.items()}
            outputs = student.query_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                            output_hidden_states=True)
            target = teacher.encode_queries(batch)
            batches.append((outputs.hidden_states[first], batch["attention_mask"], target))
    return batches
