"""Distillation losses: what the student is pulled towards.

Scores come as one row per query, ``[Q, K]`` over its K candidates, with a boolean ``mask`` (True = a real
candidate) because queries can have fewer than K candidates. Pointwise MSE is the paper's loss; the listwise
KL only cares about each query's ranking (so it ignores a teacher's per-query offset and scale); the label
loss lets qrels, where there are any, correct a teacher's mistakes.
"""

from __future__ import annotations

import torch


def _all_valid(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()


def pointwise_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between student and teacher scores over the real entries (Chen et al. 2020).

    Args:
        student: student scores, any shape (``[B]`` or ``[Q, K]``).
        teacher: teacher scores, same shape.
        mask: optional boolean mask of the same shape; padded entries do not count.

    Returns:
        A scalar; 0 when there are no real entries.
    """
    valid = _all_valid(student, mask)
    if not bool(valid.any()):
        return student.sum() * 0.0
    diff = (student.float() - teacher.float())[valid]
    return diff.pow(2).mean()


def _masked_log_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def listwise_kl(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(teacher || student) between the softmax distributions of each query's candidate scores.

    Why: re-ranking only needs each query's order; matching the softmax over candidates transfers the teacher's
    ranking (with more weight on its top) without asking the student to reproduce the teacher's scale.

    Args:
        student_scores: ``[Q, K]`` student scores.
        teacher_scores: ``[Q, K]`` teacher scores.
        mask: ``[Q, K]`` booleans, True for real candidates (default: all real).
        temperature: both score rows are divided by it before the softmax; > 1 softens the teacher.

    Returns:
        The mean over queries with at least one real candidate (a scalar; 0 when equal up to a per-query
        constant, and 0 when there is nothing to compare).
    """
    valid = _all_valid(student_scores, mask)
    rows = valid.any(dim=-1)
    if not bool(rows.any()):
        return student_scores.sum() * 0.0
    valid, student, teacher = valid[rows], student_scores[rows].float(), teacher_scores[rows].float()
    log_p_teacher = _masked_log_softmax(teacher / temperature, valid)
    log_p_student = _masked_log_softmax(student / temperature, valid)
    p_teacher = log_p_teacher.exp()
    terms = torch.where(valid, p_teacher * (log_p_teacher - log_p_student), torch.zeros_like(p_teacher))
    return terms.sum(dim=-1).mean()


def label_loss(student_scores: torch.Tensor, relevance: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Listwise softmax cross-entropy against graded qrels (ListNet with a relevance-proportional target).

    Why: qrels, where they exist, are ground truth; a teacher (especially a weak or fused one) is not. The target
    for each query puts probability ``rel / sum(rel)`` on its candidates (negative grades count as 0; unjudged
    candidates are treated as non-relevant).

    Args:
        student_scores: ``[Q, K]`` student scores.
        relevance: ``[Q, K]`` graded relevance (0 = not relevant).
        mask: ``[Q, K]`` booleans, True for real candidates.

    Returns:
        The mean over queries with at least one relevant real candidate; 0 when no query has one.
    """
    valid = _all_valid(student_scores, mask)
    gains = torch.where(valid, relevance.float().clamp(min=0.0), torch.zeros_like(student_scores, dtype=torch.float))
    totals = gains.sum(dim=-1)
    rows = totals > 0
    if not bool(rows.any()):
        return student_scores.sum() * 0.0
    target = gains[rows] / totals[rows].unsqueeze(-1)
    log_p = _masked_log_softmax(student_scores[rows].float(), valid[rows])
    terms = torch.where(target > 0, target * log_p, torch.zeros_like(target))
    return -terms.sum(dim=-1).mean()


def combined_loss(
    name: str,
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    relevance: torch.Tensor | None = None,
    label_weight: float = 0.0,
) -> torch.Tensor:
    """The training objective named by ``name`` ("mse", "kl" or "mse+kl"), plus ``label_weight`` x label loss.

    Raises:
        ValueError: unknown ``name``.
    """
    parts = name.split("+")
    unknown = set(parts) - {"mse", "kl"}
    if unknown or not parts:
        raise ValueError(f"unknown loss {name!r} (choose from mse, kl, mse+kl)")
    total = student_scores.sum() * 0.0
    if "mse" in parts:
        total = total + pointwise_mse(student_scores, teacher_scores, mask)
    if "kl" in parts:
        total = total + listwise_kl(student_scores, teacher_scores, mask, temperature=temperature)
    if label_weight and relevance is not None:
        total = total + label_weight * label_loss(student_scores, relevance, mask)
    return total


LOSSES = ("mse", "kl", "mse+kl")

__all__ = ["LOSSES", "combined_loss", "label_loss", "listwise_kl", "pointwise_mse"]
