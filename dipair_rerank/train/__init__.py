"""Training: teacher scoring (cached), distillation losses, and two-stage DiPair distillation."""

from dipair_rerank.train import losses
from dipair_rerank.train.distill import TrainConfig, read_train_state, train_dipair
from dipair_rerank.train.losses import label_loss, listwise_kl, pointwise_mse
from dipair_rerank.train.teacher import score_candidates

__all__ = [
    "TrainConfig",
    "label_loss",
    "listwise_kl",
    "losses",
    "pointwise_mse",
    "read_train_state",
    "score_candidates",
    "train_dipair",
]
