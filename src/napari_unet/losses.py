"""The training loss of the U-Net paper: pixel-wise softmax cross-entropy weighted by the weight map (eq. 1).

    E = sum_x w(x) * -log softmax(logits(x))[target(x)]  /  #{x : w(x) > 0}

Pixels with w(x) = 0 are ignored (not annotated); their target may hold any value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted softmax cross-entropy, a scalar tensor.

    logits: (N, C, H, W); target: (N, H, W) integer class ids in [0, C) where weights > 0;
    weights: (N, H, W) >= 0. Normalisation: the weighted sum over all pixels of the batch divided by the
    number of pixels with weight > 0 (not by the sum of the weights), so a weight map with mean 1 over the
    annotated pixels gives the mean cross-entropy and larger weights at the borders count more.
    When every weight is 0 the loss is 0 (no NaN) and its gradient is zero.

    >>> logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2): both classes equally likely
    >>> weighted_cross_entropy(logits, torch.tensor([[[1, 0]]]), torch.tensor([[[2.0, 0.0]]]))  # 2 ln 2 / 1
    tensor(1.3863)
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must be (N, C, H, W); got shape {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected or tuple(weights.shape) != expected:
        raise ValueError(
            f"target and weights must be (N, H, W) = {expected} for logits {tuple(logits.shape)}; "
            f"got target {tuple(target.shape)}, weights {tuple(weights.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class ids (int64); got {target.dtype}")
    counted = weights > 0
    safe_target = torch.where(counted, target.long(), torch.zeros((), dtype=torch.long, device=target.device))
    pixel_losses = F.cross_entropy(logits, safe_target, reduction="none")
    weighted = torch.where(counted, weights.to(pixel_losses.dtype) * pixel_losses, 0.0)
    return weighted.sum() / counted.sum().clamp(min=1)
