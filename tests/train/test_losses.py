"""Distillation losses: pointwise MSE, listwise KL, the label loss, masking of padded candidates."""

import math

import pytest
import torch

from dipair_rerank.train.losses import combined_loss, label_loss, listwise_kl, pointwise_mse


def test_mse_hand_computed():
    assert pointwise_mse(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])).item() == pytest.approx(2.5)


def test_mse_ignores_masked_entries():
    student = torch.tensor([[1.0, 100.0], [3.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    mask = torch.tensor([[True, False], [True, True]])
    assert pointwise_mse(student, teacher, mask).item() == pytest.approx((1 + 4 + 0) / 3)


def test_kl_hand_computed():
    # teacher softmax of [0, ln 3] = [1/4, 3/4]; student uniform [1/2, 1/2]
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert listwise_kl(student, teacher).item() == pytest.approx(expected, abs=1e-6)


def test_kl_temperature_softens():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0 * math.log(3.0)]])  # at T=2 this is the case above
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert listwise_kl(student, teacher, temperature=2.0).item() == pytest.approx(expected, abs=1e-6)


def test_kl_zero_when_equal_or_shifted_and_padding_ignored():
    scores = torch.tensor([[1.0, 2.0, -5.0], [0.5, 0.1, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert listwise_kl(scores, scores, mask).item() == pytest.approx(0.0, abs=1e-7)
    assert listwise_kl(scores + 3.0, scores, mask).item() == pytest.approx(0.0, abs=1e-6)
    padded_differently = scores.clone()
    padded_differently[0, 2] = 50.0  # a padded slot must not matter
    assert listwise_kl(padded_differently, scores, mask).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_averages_over_queries_and_skips_empty_rows():
    student = torch.tensor([[0.0, 0.0], [9.0, 9.0]])
    teacher = torch.tensor([[0.0, math.log(3.0)], [1.0, 2.0]])
    mask = torch.tensor([[True, True], [False, False]])
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert listwise_kl(student, teacher, mask).item() == pytest.approx(expected, abs=1e-6)


def test_label_loss_hand_computed():
    # grades [2, 0, 1] -> target [2/3, 0, 1/3]; uniform student log p = -ln 3
    student = torch.zeros(1, 3)
    relevance = torch.tensor([[2.0, 0.0, 1.0]])
    assert label_loss(student, relevance).item() == pytest.approx(math.log(3.0), abs=1e-6)


def test_label_loss_skips_queries_without_relevant_candidates():
    student = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    relevance = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert label_loss(student, relevance).item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert label_loss(student, torch.zeros(2, 2)).item() == 0.0


@pytest.mark.parametrize("name", ["mse", "kl", "mse+kl"])
def test_gradients_flow(name):
    student = torch.randn(3, 4, requires_grad=True, generator=torch.Generator().manual_seed(0))
    teacher = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 3] = False
    loss = combined_loss(name, student, teacher, mask, relevance=torch.ones(3, 4), label_weight=0.5)
    loss.backward()
    assert torch.isfinite(loss) and student.grad is not None and torch.isfinite(student.grad).all()
    assert student.grad[:, :3].abs().sum() > 0
    assert student.grad[2, 3] == 0  # padded: no gradient


def test_combined_sums_terms_and_rejects_unknown():
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    both = combined_loss("mse+kl", student, teacher, mask)
    assert both.item() == pytest.approx((pointwise_mse(student, teacher) + listwise_kl(student, teacher)).item())
    with pytest.raises(ValueError):
        combined_loss("hinge", student, teacher, mask)
