"""The epoch loop the trainers share: resume after the last completed epoch, a checkpoint after every epoch,
validation with early stopping and the best epoch's weights kept; plus the atomic file writes checkpoints use.

A trainer supplies what is its own: how one epoch trains (``run_epoch``, which builds the batches, computes the
loss and steps the optimiser), what is validated, and what a checkpoint holds (``save``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dipair_rerank.data.runs import atomic_write

if TYPE_CHECKING:
    from dipair_rerank.model.modeling import DiPairModel

logger = logging.getLogger(__name__)


@dataclass
class LoopState:
    """Where a run stands; what a checkpoint restores.

    Attributes:
        epoch: the last completed epoch (0 before the first).
        step: optimiser steps so far (advanced by the trainer's epoch).
        history: one record per completed epoch (``{"epoch": E, ...}``), after an ``epoch`` 0 record of the
            untrained model's validation figures when there is validation.
        best / best_epoch / best_state: the best validation figure, its epoch and the weights kept for it
            (without validation: the last epoch's, ``best`` NaN).
    """

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    @property
    def stale(self) -> int:
        """Completed epochs since the best one."""
        return sum(1 for record in self.history if record["epoch"] > self.best_epoch)

    def to_dict(self) -> dict[str, Any]:
        """The state as a checkpoint stores it (history as JSON text: plain tensors and scalars otherwise)."""
        return {"epoch": self.epoch, "step": self.step, "best": self.best, "best_epoch": self.best_epoch,
                "best_state": self.best_state, "history": json.dumps(self.history)}

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> LoopState:
        return cls(epoch=int(saved["epoch"]), step=int(saved["step"]), history=json.loads(saved["history"]),
                   best=float(saved["best"]), best_epoch=int(saved["best_epoch"]), best_state=saved["best_state"])


@dataclass
class Validation:
    """Validation after every epoch: ``evaluate`` returns figures, ``metric`` names the one that picks the best
    epoch (higher is better, by more than ``min_delta``); training stops after ``patience`` epochs without one."""

    evaluate: Callable[[], dict[str, float]]
    metric: str
    patience: int
    min_delta: float = 1e-6


def run_epochs(
    state: LoopState,
    last_epoch: int,
    run_epoch: Callable[[int], dict[str, Any]],
    *,
    validation: Validation | None = None,
    snapshot: Callable[[], dict[str, torch.Tensor]] | None = None,
    save: Callable[[LoopState], None] | None = None,
    label: str | None = None,
) -> LoopState:
    """Train epochs ``state.epoch + 1`` .. ``last_epoch``; ``state`` is updated in place and returned.

    Args:
        state: a fresh ``LoopState()``, or the one a checkpoint restored (training continues after its epoch).
        last_epoch: the last epoch to train.
        run_epoch: trains one epoch (its number given) and returns its record (``epoch`` included).
        validation: validates the untrained model (an ``epoch`` 0 record, on a fresh state) and every epoch,
            added to the epoch's record; stops early once ``validation.patience`` epochs bring no better figure.
        snapshot: the weights to keep for the best epoch (``state.best_state``); without ``validation`` the last
            epoch's are kept.
        save: writes a checkpoint after every epoch.
        label: logs every epoch's record as ``"{label} epoch E: ..."``.
    """
    if snapshot is not None and state.best_state is None:
        state.best_state = snapshot()
    if validation is not None and not state.history:
        figures = validation.evaluate()
        state.best = figures[validation.metric]
        state.history.append({"epoch": 0, **figures})
        if label is not None:
            logger.info("%s before training: %s", label, figures)
    for epoch in range(state.epoch + 1, last_epoch + 1):
        if validation is not None and state.stale >= validation.patience:
            logger.info("no better %s for %d epochs: stopping", validation.metric, state.stale)
            break
        record = run_epoch(epoch)
        if validation is not None:
            record.update(validation.evaluate())
            if record[validation.metric] > state.best + validation.min_delta:
                state.best, state.best_epoch = record[validation.metric], epoch
                if snapshot is not None:
                    state.best_state = snapshot()
        elif snapshot is not None:
            state.best, state.best_epoch, state.best_state = float("nan"), epoch, snapshot()
        state.history.append(record)
        state.epoch = epoch
        if label is not None:
            logger.info("%s epoch %d: %s", label, epoch, record)
        if save is not None:
            save(state)
    return state


# ----- atomic writes ----------------------------------------------------------------------------------------
def write_json(path: Path, values: Mapping[str, Any]) -> None:
    """``values`` as indented JSON with sorted keys, written atomically."""
    with atomic_write(path) as handle:
        json.dump(values, handle, indent=2, sort_keys=True)
        handle.write("\n")


def save_torch(values: Mapping[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file renamed into place: an interrupted save keeps the previous file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(values), tmp)
    tmp.replace(path)


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename folder ``tmp`` to ``final``, replacing what was there."""
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def save_model_dir(model: DiPairModel, final: Path) -> Path:
    """``model.save_pretrained`` into ``final``'s temporary sibling, returned for ``replace_dir``: never a
    half-written model folder."""
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.train(model.training)  # drop a fingerprint cached before the optimiser changed the weights
    model.save_pretrained(tmp)
    return tmp


__all__ = ["LoopState", "Validation", "replace_dir", "run_epochs", "save_model_dir", "save_torch", "write_json"]
