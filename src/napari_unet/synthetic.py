"""Synthetic fluorescence nuclei with touching neighbours, for tests, demos and sanity checks.

>>> image, labels = make_cells((256, 256), seed=1)
>>> image.dtype, labels.dtype, bool(labels.max() > 10)
(dtype('float32'), dtype('int32'), True)
>>> sorted(touching_pairs(np.array([[1, 2, 0, 3]])))
[(1, 2)]
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage
from skimage import measure

COVERAGE = 0.45
MIN_CELL_AREA = 20


def touching_pairs(labels: np.ndarray, connectivity: int | None = None) -> set[tuple[int, int]]:
    """Pairs ``(a, b)``, ``0 < a < b``, of instance ids whose pixels are adjacent.

    labels: (..., Y, X) integer instance ids, 0 = background. ``connectivity`` as in
    ``scipy.ndimage.generate_binary_structure``: 1 = faces only (4-adjacency in 2-D), ``labels.ndim``
    (the default) = full (8-adjacency in 2-D).
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (instance ids), got dtype {labels.dtype}")
    connectivity = labels.ndim if connectivity is None else connectivity
    if not 1 <= connectivity <= labels.ndim:
        raise ValueError(f"connectivity must be in 1..{labels.ndim} for {labels.ndim}-D labels, got {connectivity}")
    pairs: set[tuple[int, int]] = set()
    for offset in itertools.product((-1, 0, 1), repeat=labels.ndim):
        nonzero = [o for o in offset if o]
        if not nonzero or nonzero[0] < 0 or len(nonzero) > connectivity:
            continue  # each neighbour direction once: the first non-zero step is positive
        here = tuple(slice(max(0, -o), labels.shape[d] - max(0, o)) for d, o in enumerate(offset))
        there = tuple(slice(max(0, o), labels.shape[d] - max(0, -o)) for d, o in enumerate(offset))
        a, b = labels[here].ravel(), labels[there].ravel()
        touch = (a != b) & (a > 0) & (b > 0)
        if touch.any():
            ab = np.unique(np.stack([np.minimum(a[touch], b[touch]), np.maximum(a[touch], b[touch])]), axis=1)
            pairs.update(zip(ab[0].tolist(), ab[1].tolist()))
    return pairs


def _place_cells(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_cells: int,
    radius: tuple[float, float],
    clustering: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(n, 2)`` and radii ``(n,)``; a fraction ``clustering`` is placed against a neighbour.

    A candidate is rejected when it overlaps an earlier cell by more than ~25 % of the radii sum, so
    clustered cells press against each other (they share a border after the partition) without one
    swallowing the other.
    """
    centres = np.empty((n_cells, 2))
    radii = np.empty(n_cells)
    n = 0
    for _ in range(40 * n_cells):
        if n == n_cells:
            break
        r = rng.uniform(*radius)
        if n and rng.random() < clustering:
            j = rng.integers(n)
            angle = rng.uniform(0, 2 * np.pi)
            distance = (r + radii[j]) * rng.uniform(0.8, 0.95)
            c = centres[j] + distance * np.array([np.sin(angle), np.cos(angle)])
        else:
            c = rng.uniform((0, 0), shape)
        if not (-0.5 * r <= c[0] < shape[0] + 0.5 * r and -0.5 * r <= c[1] < shape[1] + 0.5 * r):
            continue
        if n and (np.hypot(*(centres[:n] - c).T) < 0.75 * (r + radii[:n])).any():
            continue
        centres[n], radii[n] = c, r
        n += 1
    return centres[:n], radii[:n]


def _partition(
    rng: np.random.Generator, shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(Y, X)`` int32 and ``d``, the normalised radius in [0, 1) of each cell pixel (1 outside).

    Each cell is an irregular ellipse ``d(p) < 1``: with ``(u, v)`` the position in the ellipse's
    frame scaled by its radius, ``rho = |(u, v)|`` and ``theta`` its angle,
    ``d = rho / (1 + a2 cos(2 theta + p2) + a3 cos(3 theta + p3))``. A pixel covered by several cells
    goes to the one with the smallest ``d``, so pressed-together cells share a straight-ish border (a
    multiplicatively weighted Voronoi partition inside the union of the shapes).
    """
    labels = np.zeros(shape, np.int32)
    best = np.ones(shape, np.float32)
    for i, (c, r) in enumerate(zip(centres, radii), start=1):
        aspect = np.sqrt(rng.uniform(1.0, 1.5))
        phi = rng.uniform(0, np.pi)
        a2, a3 = rng.normal(0, 0.05, 2) * np.exp(1j * rng.uniform(0, 2 * np.pi, 2))
        reach = r * aspect * (1 + abs(a2) + abs(a3)) + 1
        y0, y1 = max(0, int(c[0] - reach)), min(shape[0], int(c[0] + reach) + 2)
        x0, x1 = max(0, int(c[1] - reach)), min(shape[1], int(c[1] + reach) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(c[0]))[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(c[1]))[None, :]
        cos_phi, sin_phi = np.float32(np.cos(phi) / r), np.float32(np.sin(phi) / r)
        u = (dy * cos_phi + dx * sin_phi) / np.float32(aspect)
        v = (dx * cos_phi - dy * sin_phi) * np.float32(aspect)
        rho = np.sqrt(u * u + v * v) + np.float32(1e-6)
        cos_t, sin_t = u / rho, v / rho
        cos_2t, sin_2t = cos_t * cos_t - sin_t * sin_t, 2 * cos_t * sin_t
        cos_3t, sin_3t = cos_2t * cos_t - sin_2t * sin_t, sin_2t * cos_t + cos_2t * sin_t
        # Re(a e^{ik theta}) = Re(a) cos(k theta) - Im(a) sin(k theta)
        wobble = 1 + a2.real * cos_2t - a2.imag * sin_2t + a3.real * cos_3t - a3.imag * sin_3t
        d = rho / wobble
        box = (slice(y0, y1), slice(x0, x1))
        win = d < best[box]
        labels[box][win] = i
        best[box][win] = d[win]
    return labels, best


def _keep_main_pieces(labels: np.ndarray) -> np.ndarray:
    """Keep the largest 4-connected piece of every id, drop cells under ``MIN_CELL_AREA``, renumber 1..n."""
    pieces = measure.label(labels, background=0, connectivity=1)
    owner = np.zeros(pieces.max() + 1, np.int64)
    owner[pieces.ravel()] = labels.ravel()
    size = np.bincount(pieces.ravel(), minlength=owner.size)
    order = np.lexsort((-size[1:], owner[1:])) + 1  # pieces grouped by id, largest first
    first = np.ones(order.size, bool)
    first[1:] = owner[order[1:]] != owner[order[:-1]]
    keep = order[first & (size[order] >= MIN_CELL_AREA)]
    new_id = np.zeros(owner.size, np.int32)
    new_id[keep[np.argsort(owner[keep])]] = np.arange(1, keep.size + 1, dtype=np.int32)
    return new_id[pieces]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], order: int = 3) -> np.ndarray:
    """A smooth random field ``(Y, X)``: ``sum_kl a_kl cos(pi k y / H) cos(pi l x / W)``, k, l < order."""
    cy = np.cos(np.pi * np.outer(np.linspace(0, 1, shape[0]), np.arange(order)))
    cx = np.cos(np.pi * np.outer(np.linspace(0, 1, shape[1]), np.arange(order)))
    coefficients = rng.normal(0, 1, (order, order)) / (1 + np.add.outer(np.arange(order), np.arange(order)))
    rows = (cy @ coefficients).astype(np.float32)  # (Y, order); the (Y, X) sum avoids a threaded BLAS call
    return sum(np.multiply.outer(rows[:, k], cx[:, k].astype(np.float32)) for k in range(order))


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Chromatin-like multiplicative texture ``(Y, X)`` around 1: noise blurred at half resolution."""
    half = (-(-shape[0] // 2), -(-shape[1] // 2))
    noise = ndimage.gaussian_filter(rng.standard_normal(half, dtype=np.float32), 0.8)
    noise *= np.float32(0.15) / (noise.std() + np.float32(1e-6))
    texture = np.repeat(np.repeat(noise, 2, axis=0), 2, axis=1)[: shape[0], : shape[1]]
    return np.maximum(texture + np.float32(1), np.float32(0.3))


def make_cells(
    shape: tuple[int, int] = (512, 512),
    n_cells: int | None = None,
    seed: int = 0,
    radius: tuple[float, float] = (8.0, 20.0),
    clustering: float = 0.65,
    blur: float = 1.3,
    photons: float = 120.0,
    read_noise: float = 0.015,
) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like image of nuclei, many touching, and its instance labels.

    Returns ``image: (Y, X) float32`` roughly in [0, 1] and ``labels: (Y, X) int32`` with ids 1..n
    (0 = background). Cells: irregular ellipses of radius ``radius`` px, a fraction ``clustering``
    pressed against a neighbour so they share a border; per-cell brightness, a domed profile (darker
    at shared borders), chromatin texture; Gaussian PSF of sigma ``blur``; smooth uneven background;
    Poisson shot noise of ``photons`` counts at intensity 1 plus Gaussian read noise ``read_noise``.
    ``n_cells`` defaults to cells covering ~45 % of the area before they overlap; fewer may fit.
    Deterministic in ``seed``.
    """
    if len(shape) != 2 or min(shape) < 8:
        raise ValueError(f"shape must be (Y, X) with both sides >= 8, got {shape}")
    if not 0 < radius[0] <= radius[1]:
        raise ValueError(f"radius must be (min, max) with 0 < min <= max, got {radius}")
    shape = (int(shape[0]), int(shape[1]))
    rng = np.random.default_rng(seed)
    if n_cells is None:
        mean_area = np.pi * (radius[0] ** 2 + radius[0] * radius[1] + radius[1] ** 2) / 3 * 1.2
        n_cells = max(1, round(COVERAGE * shape[0] * shape[1] / mean_area))
    centres, radii = _place_cells(rng, shape, n_cells, radius, clustering)
    labels, d = _partition(rng, shape, centres, radii)
    labels = _keep_main_pieces(labels)

    n = int(labels.max())
    brightness = np.concatenate([[0.0], rng.lognormal(np.log(0.45), 0.3, n)]).astype(np.float32)
    texture = _texture(rng, shape)
    signal = brightness[labels] * (1 - np.float32(0.35) * d * d) * texture
    signal = ndimage.gaussian_filter(signal, blur)
    background = np.float32(0.06) + np.float32(0.03 * rng.uniform(0.5, 1.5)) * _smooth_field(rng, shape)
    clean = signal + np.maximum(background, np.float32(0.01))
    image = rng.poisson(clean * np.float32(photons)).astype(np.float32) / np.float32(photons)
    image += np.float32(read_noise) * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(image, 0, 1, out=image), labels


def make_dataset(
    n_images: int, shape: tuple[int, int] = (512, 512), seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_images`` independent ``(image, labels)`` pairs from :func:`make_cells`, reproducible in ``seed``."""
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    seeds = np.random.SeedSequence(seed).generate_state(n_images) if n_images else []
    return [make_cells(shape, seed=int(s)) for s in seeds]
