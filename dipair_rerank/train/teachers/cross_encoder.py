"""Fine-tune a cross-encoder teacher with sentence-transformers' ``CrossEncoderTrainer`` (accelerate-backed,
checkpoints, resume), on topics + graded qrels with hard negatives from a first-stage run.

Why a trainer and not a loop: checkpointing, resume, bf16, schedulers and devices come with it. Why hard
negatives: random negatives are trivially separable; the first stage's top unjudged documents are the ones a
re-ranker must push down. Graded qrels become soft labels ``grade / max grade`` for binary cross-entropy.

On disk, under ``output``: ``checkpoints/checkpoint-<step>/`` (the trainer's) and ``model/`` (the final
CrossEncoder, usable as ``--teacher`` or ``ce:PATH`` in a fusion teacher).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dipair_rerank.data.runs import Run
from dipair_rerank.errors import DiPairError

logger = logging.getLogger(__name__)


@dataclass
class TeacherTrainConfig:
    """How to fine-tune the teacher.

    Attributes:
        output: folder for ``checkpoints/`` and the final ``model/``.
        negatives: hard negatives per query (unjudged or grade-0 documents of the first-stage run).
        negative_depth: how deep in the run negatives are drawn from.
        epochs / lr / batch_size / warmup_ratio: trainer settings.
        max_length: tokens per (query, document) pair.
        save_steps / save_total_limit: checkpoint cadence and how many are kept.
        bf16: bf16 mixed precision (CPUs with AMX, GPUs).
        device: "cpu" forces CPU; anything else lets the trainer pick (cuda when available).
        seed: negative sampling and the trainer's seed.
    """

    output: Path
    negatives: int = 8
    negative_depth: int = 50
    epochs: float = 1.0
    lr: float = 3e-5
    batch_size: int = 16
    warmup_ratio: float = 0.1
    max_length: int = 256
    save_steps: int = 200
    save_total_limit: int = 2
    bf16: bool = False
    device: str = "cpu"
    seed: int = 0


def build_pairs(
    topics: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    run: Run,
    doc_text: Mapping[str, str],
    *,
    negatives: int,
    negative_depth: int,
    seed: int = 0,
) -> dict[str, list]:
    """Columns ``query``, ``passage``, ``label`` (float in [0, 1]): every judged-relevant document with its
    scaled grade, and up to ``negatives`` hard negatives per query from the top ``negative_depth`` of ``run``."""
    rng = random.Random(seed)
    columns: dict[str, list] = {"query": [], "passage": [], "label": []}
    top = max((g for docs in qrels.values() for g in docs.values()), default=1) or 1
    for qid in sorted(q for q in qrels if q in topics):
        grades = qrels[qid]
        positives = [d for d, g in grades.items() if g > 0 and d in doc_text]
        if not positives:
            continue
        pool = [d for d, _ in run.get(qid, [])[:negative_depth] if grades.get(d, 0) <= 0 and d in doc_text]
        chosen = rng.sample(pool, min(negatives, len(pool)))
        for docid in positives:
            columns["query"].append(topics[qid])
            columns["passage"].append(doc_text[docid])
            columns["label"].append(grades[docid] / top)
        for docid in chosen:
            columns["query"].append(topics[qid])
            columns["passage"].append(doc_text[docid])
            columns["label"].append(0.0)
    if not columns["query"]:
        raise DiPairError("no training pairs: no query has both topic text and a relevant document with text")
    return columns


def _last_checkpoint(folder: Path) -> str | None:
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(found[-1]) if found else None


def train_cross_encoder(model_name: str, pairs: Mapping[str, list], config: TeacherTrainConfig) -> Path:
    """Fine-tune ``model_name`` (HF id/path, or ``packaged:all-MiniLM-L6-v2``) on ``pairs``; resumes from the
    newest checkpoint in ``output/checkpoints``. Returns the final model folder."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from dipair_rerank.model.config import resolve_encoder_path

    output = Path(config.output)
    checkpoints = output / "checkpoints"
    try:
        model = CrossEncoder(resolve_encoder_path(model_name), num_labels=1, max_length=config.max_length,
                             device="cpu" if config.device == "cpu" else None)
    except Exception as exc:  # a bad id or path: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DiPairError(f"cannot load cross-encoder {model_name!r}: {first}") from exc
    dataset = Dataset.from_dict(dict(pairs)).shuffle(seed=config.seed)
    args = CrossEncoderTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        per_device_train_batch_size=config.batch_size,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1): a share of the steps (transformers 5)
        bf16=config.bf16,
        use_cpu=config.device == "cpu",
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=max(1, config.save_steps // 4),
        seed=config.seed,
        report_to="none",
        dataloader_drop_last=False,
    )
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=BinaryCrossEntropyLoss(model))
    resume = _last_checkpoint(checkpoints)
    if resume:
        logger.info("resuming teacher training from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    final = output / "model"
    model.save_pretrained(str(final))
    return final


__all__ = ["TeacherTrainConfig", "build_pairs", "train_cross_encoder"]
