"""The augmentation of `augment.py` for a whole batch of torch tensors, on the device they are on.

The random numbers are drawn on the CPU, per sample and in the same order as `augment.augment`
(`draw_gray_values`, then `draw_geometry`), so the same generator state gives the same samples as the
per-sample path, up to float rounding (tests/test_augment_batch.py states the tolerance). The work on the
pixels is a few batched tensor operations: the gray-value changes, the sampling maps of all samples (affine
part plus the elastic field M_H (R coarse) M_W^T of each, two batched products), then one bicubic
`grid_sample` of the images and one nearest-neighbour `grid_sample` of target and weights together (each
output pixel takes its class and its weight from the same source pixel, as on the CPU).

    >>> rng = np.random.default_rng(0)
    >>> draws = [draw_sample(rng, AugmentConfig()) for _ in range(4)]
    >>> image, labels = torch.zeros(4, 1, 64, 64), torch.zeros(4, 2, 64, 64)
    >>> [tuple(t.shape) for t in augment_batch(image, labels, draws)]
    [(4, 1, 64, 64), (4, 2, 64, 64)]
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .augment import (
    AugmentConfig,
    GeometryDraw,
    GrayDraw,
    _spline_matrix,
    draw_geometry,
    draw_gray_values,
    rotation_matrix,
)

SampleDraw = tuple[GrayDraw, GeometryDraw | None]


def draw_sample(rng: np.random.Generator, config: AugmentConfig) -> SampleDraw:
    """The random numbers `augment.augment` draws for one sample, in its order (gray values, then geometry)."""
    return draw_gray_values(rng, config), draw_geometry(rng, config)


def augment_batch(
    image: torch.Tensor, labels: torch.Tensor, draws: Sequence[SampleDraw]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: gray values of the images, then one geometric warp of images and labels.

    image: (N, C, H, W) float; labels: (N, 2, H, W) float, target class ids and weights. draws: N per-sample
    draws (`draw_sample`). Returns image (N, C, H, W) float32 and labels (N, 2, H, W) float32 on the inputs'
    device. Mirrored at the borders (reflection, align_corners=True: pixel -1 reads pixel 1), as `augment.warp`.
    """
    if image.ndim != 4 or labels.ndim != 4 or labels.shape[1] != 2 or labels.shape[0] != image.shape[0]:
        raise ValueError(
            f"expected image (N, C, H, W) and labels (N, 2, H, W); got {tuple(image.shape)}, {tuple(labels.shape)}"
        )
    if image.shape[-2:] != labels.shape[-2:] or len(draws) != image.shape[0]:
        raise ValueError(
            f"image {tuple(image.shape)}, labels {tuple(labels.shape)} and {len(draws)} draws must agree in N, H, W"
        )
    with torch.no_grad():
        image = change_gray_values_batch(image.float(), [gray for gray, _ in draws])
        if all(geometry is None for _, geometry in draws):
            return image, labels.float()
        grid = sampling_grid(tuple(image.shape[-2:]), [geometry for _, geometry in draws], image.device)
        options = {"padding_mode": "reflection", "align_corners": True}
        image = F.grid_sample(image, grid, mode="bicubic", **options)
        labels = F.grid_sample(labels.float(), grid, mode="nearest", **options)
    return image, labels


def change_gray_values_batch(image: torch.Tensor, draws: Sequence[GrayDraw]) -> torch.Tensor:
    """`augment.apply_gray_values` of each sample of image (N, C, H, W) float32 (statistics per sample)."""
    n = image.shape[0]
    device = image.device

    def factors(name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        values = [getattr(draw, name) for draw in draws]
        if all(value is None for value in values):
            return None
        applied = to_device(np.array([value is not None for value in values]), device).view(n, 1, 1, 1)
        factor = to_device(np.array([1.0 if v is None else v for v in values], np.float32), device)
        return applied, factor.view(n, 1, 1, 1)

    flat = image.reshape(n, -1)
    if (gamma := factors("gamma")) is not None:
        applied, factor = gamma
        low, high = flat.amin(1).view(n, 1, 1, 1), flat.amax(1).view(n, 1, 1, 1)
        span = high - low
        changed = low + span * ((image - low) / torch.where(span > 0, span, 1.0)).pow(factor)
        image = torch.where(applied & (span > 0), changed, image)
        flat = image.reshape(n, -1)
    if (contrast := factors("contrast")) is not None:
        applied, factor = contrast
        mean = flat.mean(1).view(n, 1, 1, 1)
        image = torch.where(applied, mean + factor * (image - mean), image)
        flat = image.reshape(n, -1)
    if (brightness := factors("brightness")) is not None:
        applied, factor = brightness
        std = flat.std(1, correction=0).view(n, 1, 1, 1)
        image = torch.where(applied, image + factor * std, image)
    return image


def sampling_grid(shape: tuple[int, int], draws: Sequence[GeometryDraw | None], device: torch.device) -> torch.Tensor:
    """The `grid_sample` grid (N, H, W, 2) (x, y in [-1, 1]) of `augment.geometry_map` for each draw (None: identity).

    source[n, a] = R_n[a, 0] y'_n + R_n[a, 1] x'_n + c_a + t_n[a] + (M_H (R_n coarse_n)[a] M_W^T), with y', x'
    the centred output coordinates, flipped where the draw flips.
    """
    height, width = shape
    identity = GeometryDraw()
    draws = [identity if draw is None else draw for draw in draws]
    grids = {draw.coarse.shape[-1] for draw in draws if draw.coarse is not None}
    if len(grids) > 1:
        raise ValueError(f"the elastic grids of a batch must agree; got sizes {sorted(grids)}")
    rotation = np.stack([rotation_matrix(draw) for draw in draws])  # (N, 2, 2)
    flips = np.array([[-1.0 if f else 1.0 for f in draw.flip] for draw in draws])  # (N, 2)
    offset = np.array([draw.offset for draw in draws]) + np.array([(height - 1) / 2, (width - 1) / 2])
    rotation_t, flips_t, offset_t = (to_device(a.astype(np.float32), device) for a in (rotation, flips, offset))
    y = torch.arange(height, dtype=torch.float32, device=device) - (height - 1) / 2
    x = torch.arange(width, dtype=torch.float32, device=device) - (width - 1) / 2
    ys = flips_t[:, 0, None] * y  # (N, H)
    xs = flips_t[:, 1, None] * x  # (N, W)
    source = (
        rotation_t[:, :, 0, None, None] * ys[:, None, :, None]
        + rotation_t[:, :, 1, None, None] * xs[:, None, None, :]
        + offset_t[:, :, None, None]
    )  # (N, 2, H, W), (y, x)
    if grids:
        (grid,) = grids
        coarse = np.stack([np.zeros((2, grid, grid)) if d.coarse is None else d.coarse for d in draws])
        rotated = to_device(np.einsum("nab,nbij->naij", rotation, coarse).astype(np.float32), device)  # (N, 2, g, g)
        rows, columns = _spline_matrices(height, width, grid, device)
        source = source + torch.matmul(torch.matmul(rows, rotated), columns.T)  # (H, g) @ (N, 2, g, g) @ (g, W)
    grid_xy = torch.stack(
        [source[:, 1] * (2.0 / max(width - 1, 1)) - 1.0, source[:, 0] * (2.0 / max(height - 1, 1)) - 1.0], dim=-1
    )
    return grid_xy


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small numpy array on `device`; on CUDA through pinned memory, without waiting for the GPU (a plain copy
    from pageable memory would wait for the work queued before it, and the next batch is prepared while the
    GPU computes the current one)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@functools.lru_cache(maxsize=16)
def _spline_matrices(height: int, width: int, grid: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """M_H (H, grid) and M_W (W, grid) of `augment._spline_matrix`, float32 on `device` (cached: fixed shapes)."""
    return (
        torch.as_tensor(_spline_matrix(height, grid), dtype=torch.float32, device=device),
        torch.as_tensor(_spline_matrix(width, grid), dtype=torch.float32, device=device),
    )
