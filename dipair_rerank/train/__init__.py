"""Training: teachers (``teachers/``), losses, and two-stage distillation (stage 1 optionally over cached
frozen-encoder features), the trainers sharing one epoch loop (``loop.py``)."""

from dipair_rerank.train import losses
from dipair_rerank.train.cached import CachedStage1Config, split_validation, train_stage1_cached
from dipair_rerank.train.distill import TrainConfig, read_train_state, train_dipair
from dipair_rerank.train.features import FeatureStore, extract_features
from dipair_rerank.train.losses import label_loss, listwise_kl, pointwise_mse
from dipair_rerank.train.pseudo_queries import cropped_queries
from dipair_rerank.train.teachers import (
    TeacherTrainConfig,
    build_pairs,
    fit_weights,
    fuse,
    fusion_teacher,
    parse_scorers,
    score_candidates,
    train_cross_encoder,
    zscore,
)

__all__ = [
    "CachedStage1Config",
    "FeatureStore",
    "TeacherTrainConfig",
    "TrainConfig",
    "build_pairs",
    "cropped_queries",
    "extract_features",
    "fit_weights",
    "fuse",
    "fusion_teacher",
    "label_loss",
    "listwise_kl",
    "losses",
    "parse_scorers",
    "pointwise_mse",
    "read_train_state",
    "score_candidates",
    "split_validation",
    "train_cross_encoder",
    "train_dipair",
    "train_stage1_cached",
    "zscore",
]
