"""Weighted cross-entropy against hand-computed values; ignored pixels; gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet.losses import weighted_cross_entropy


def cross_entropy_by_hand(logits: list[float], label: int) -> float:
    """-log(exp(l_label) / sum_c exp(l_c))."""
    return -math.log(math.exp(logits[label]) / sum(math.exp(value) for value in logits))


def test_hand_computed_1x2x1x2() -> None:
    # pixel 0: logits (1.0, -0.5), class 1, weight 3; pixel 1: logits (0.2, 2.0), class 0, weight 0.5
    logits = torch.tensor([[[[1.0, 0.2]], [[-0.5, 2.0]]]], dtype=torch.float64)
    target = torch.tensor([[[1, 0]]])
    weights = torch.tensor([[[3.0, 0.5]]], dtype=torch.float64)
    expected = (3.0 * cross_entropy_by_hand([1.0, -0.5], 1) + 0.5 * cross_entropy_by_hand([0.2, 2.0], 0)) / 2
    loss = weighted_cross_entropy(logits, target, weights)
    assert loss.shape == ()
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    # by hand: CE = log(1 + exp(l_other - l_label)) for two classes
    assert math.isclose(
        loss.item(), (3.0 * math.log(1 + math.exp(1.5)) + 0.5 * math.log(1 + math.exp(1.8))) / 2, rel_tol=1e-12
    )


def test_weight_zero_is_ignored_and_not_counted() -> None:
    logits = torch.tensor([[[[1.0, 0.2]], [[-0.5, 2.0]]]], dtype=torch.float64)
    weights = torch.tensor([[[3.0, 0.0]]], dtype=torch.float64)
    # the ignored pixel's target may be anything, even an id outside [0, C)
    loss = weighted_cross_entropy(logits, torch.tensor([[[1, 255]]]), weights)
    assert math.isclose(loss.item(), 3.0 * cross_entropy_by_hand([1.0, -0.5], 1) / 1, rel_tol=1e-12)


def test_three_classes_two_images() -> None:
    values = [[0.1, 0.7, -1.2], [2.0, 0.0, 0.5], [-0.3, -0.3, 0.9], [1.1, 1.0, 0.2]]
    labels, weight = [2, 0, 1, 1], [1.0, 2.0, 0.0, 4.0]
    logits = torch.tensor(values, dtype=torch.float64).T.reshape(3, 2, 1, 2).permute(1, 0, 2, 3)  # (2, 3, 1, 2)
    target = torch.tensor(labels).reshape(2, 1, 2)
    weights = torch.tensor(weight, dtype=torch.float64).reshape(2, 1, 2)
    expected = sum(w * cross_entropy_by_hand(v, c) for v, c, w in zip(values, labels, weight) if w > 0) / 3
    assert math.isclose(weighted_cross_entropy(logits, target, weights).item(), expected, rel_tol=1e-12)


def test_all_ignored_gives_zero_without_nan() -> None:
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    loss = weighted_cross_entropy(logits, torch.full((2, 4, 4), 7), torch.zeros(2, 4, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradient_flows_only_where_weighted() -> None:
    logits = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 2, (1, 3, 3))
    weights = torch.ones(1, 3, 3, dtype=torch.float64)
    weights[0, 1, 1] = 0.0
    weighted_cross_entropy(logits, target, weights).backward()
    assert torch.all(logits.grad[0, :, 1, 1] == 0)
    others = torch.ones(3, 3, dtype=torch.bool)
    others[1, 1] = False
    assert torch.all(logits.grad[0][:, others].abs() > 0)
    # d/dlogits of w * CE / n = w (softmax - onehot) / n
    probs = torch.softmax(logits.detach(), dim=1)
    onehot = F.one_hot(target, 2).permute(0, 3, 1, 2).to(torch.float64)
    torch.testing.assert_close(logits.grad, weights[:, None] * (probs - onehot) / 8)
    assert torch.autograd.gradcheck(
        lambda x: weighted_cross_entropy(x, target, weights), (logits.detach().requires_grad_(),)
    )


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), classes=st.integers(2, 4))
def test_unit_weights_give_the_mean_cross_entropy(seed: int, classes: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 5, 6, generator=generator, dtype=torch.float64)
    target = torch.randint(0, classes, (2, 5, 6), generator=generator)
    loss = weighted_cross_entropy(logits, target, torch.ones(2, 5, 6, dtype=torch.float64))
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))
    scaled = weighted_cross_entropy(logits, target, torch.full((2, 5, 6), 2.5, dtype=torch.float64))
    torch.testing.assert_close(scaled, 2.5 * loss)


def test_float32_weights_with_float64_logits_and_uint8_target() -> None:
    logits = torch.tensor([[[[1.0, 0.2]], [[-0.5, 2.0]]]], dtype=torch.float64)
    loss = weighted_cross_entropy(logits, torch.tensor([[[1, 0]]], dtype=torch.uint8), torch.tensor([[[1.0, 1.0]]]))
    expected = (cross_entropy_by_hand([1.0, -0.5], 1) + cross_entropy_by_hand([0.2, 2.0], 0)) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        weighted_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(ValueError, match="target and weights"):
        weighted_cross_entropy(torch.zeros(1, 2, 3, 4), torch.zeros(1, 3, 5, dtype=torch.long), torch.ones(1, 3, 4))
    with pytest.raises(TypeError, match="integer"):
        weighted_cross_entropy(torch.zeros(1, 2, 3, 4), torch.zeros(1, 3, 4), torch.ones(1, 3, 4))
