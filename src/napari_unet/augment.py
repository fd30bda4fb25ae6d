"""Data augmentation of the U-Net paper: elastic deformation, rotation, shift, flips and gray-value changes.

All geometric transforms are composed into ONE sampling map (the source coordinate of every output pixel),
and image, target and weights are sampled from it once: the image bicubically, target and weights by
nearest neighbour (each output pixel takes its class and its weight from the same source pixel, so a pixel
that is not annotated stays with weight 0), mirroring the input at its borders. Gray-value changes apply to
the image only. Everything random comes from the `numpy.random.Generator` passed in: a seed reproduces a
sample exactly.

    >>> rng = np.random.default_rng(0)
    >>> image, target, weights = np.zeros((64, 64)), np.zeros((64, 64), np.uint8), np.ones((64, 64))
    >>> [a.shape for a in augment(image, target, weights, rng, AugmentConfig())]
    [(64, 64), (64, 64), (64, 64)]
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
from scipy import ndimage

from ._config import Config, check_range


@dataclass(frozen=True)
class AugmentConfig(Config):
    """What `augment` does, each transform applied with its probability `*_p`.

    elastic_grid, elastic_sigma: random displacement vectors on a coarse elastic_grid x elastic_grid grid
        spanning the image, each component drawn from N(0, elastic_sigma^2) (pixels), interpolated to every
        pixel by cubic splines (paper: 3 x 3 grid, 10 px).
    rotation: angle drawn uniformly in [-rotation, rotation] degrees, about the image centre.
    shift: translation drawn uniformly in [-shift, shift] pixels along each axis.
    scale: zoom factor z drawn log-uniformly in the range (z > 1 magnifies: objects come out z times larger),
        about the image centre; teaches a network a range of object sizes (off by default: (1, 1)).
    flip_p: probability of flipping each axis (vertical and horizontal independently).
    contrast: factor c drawn uniformly in the range: image -> mean + c * (image - mean).
    brightness: offset b drawn uniformly in the range, in units of the image's standard deviation:
        image -> image + b * std.
    gamma: exponent g drawn uniformly in the range, applied to the image rescaled to [0, 1] by its minimum
        and maximum: image -> lo + (hi - lo) * ((image - lo) / (hi - lo))^g.
    """

    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    elastic_p: float = 1.0
    rotation: float = 180.0
    rotation_p: float = 0.5
    shift: float = 10.0
    shift_p: float = 0.5
    scale: tuple[float, float] = (1.0, 1.0)
    scale_p: float = 0.0
    flip_p: float = 0.5
    contrast: tuple[float, float] = (0.75, 1.33)
    contrast_p: float = 0.5
    brightness: tuple[float, float] = (-0.2, 0.2)
    brightness_p: float = 0.5
    gamma: tuple[float, float] = (0.75, 1.33)
    gamma_p: float = 0.5

    def __post_init__(self) -> None:
        for name in (
            "elastic_p",
            "rotation_p",
            "shift_p",
            "scale_p",
            "flip_p",
            "contrast_p",
            "brightness_p",
            "gamma_p",
        ):
            check_range(self, name, 0.0, 1.0, meaning="a probability")
        check_range(self, "elastic_grid", 2, integer=True, meaning="nodes per axis")
        for name in ("elastic_sigma", "rotation", "shift"):
            check_range(self, name, 0.0)
        for name, low_bound in (("contrast", 0.0), ("brightness", -math.inf), ("gamma", 0.0), ("scale", 0.0)):
            low, high = getattr(self, name)
            if not low_bound < low <= high:
                raise ValueError(
                    f"{name} must be a range (low, high) with {low_bound} < low <= high; got {(low, high)}"
                )

    @classmethod
    def identity(cls) -> AugmentConfig:
        """Every transform off: `augment` returns its inputs unchanged (the image as float32)."""
        return cls(
            elastic_p=0.0,
            rotation_p=0.0,
            shift_p=0.0,
            scale_p=0.0,
            flip_p=0.0,
            contrast_p=0.0,
            brightness_p=0.0,
            gamma_p=0.0,
        )


def _spline_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) matrix: values on `grid` evenly spaced nodes (the first on pixel 0, the last on pixel
    size - 1) -> their cubic spline interpolation at every pixel (scipy's order 3, mirrored ends)."""
    positions = np.arange(size) * ((grid - 1) / max(size - 1, 1))
    columns = [ndimage.map_coordinates(np.eye(grid)[k], positions[None], order=3, mode="mirror") for k in range(grid)]
    return np.stack(columns, axis=1)


def elastic_displacement(shape: tuple[int, int], grid: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement field: (2, H, W) float64, (dy, dx) in pixels.

    Displacements on a grid x grid coarse grid (node k at row k (H - 1) / (grid - 1), the first and last
    on the edge pixels; columns alike) are drawn from N(0, sigma^2) per component and interpolated to every
    pixel by bicubic (cubic spline) interpolation, done as a separable product M_H @ coarse @ M_W.T — the
    same field as `scipy.ndimage.zoom(coarse, (H / grid, W / grid), order=3, mode="mirror",
    grid_mode=False)`, many times faster.
    """
    height, width = shape
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    rows, columns = _spline_matrix(height, grid), _spline_matrix(width, grid)
    return np.einsum("cyj,xj->cyx", np.einsum("yi,cij->cyj", rows, coarse), columns)  # no BLAS: see sampling_map


@dataclass(frozen=True)
class GeometryDraw:
    """The random part of one sample's geometric transform (see `sampling_map`).

    flip: (flip rows, flip columns); coarse: (2, grid, grid) elastic displacements (dy, dx) in pixels, or None;
    angle: radians; offset: (ty, tx) pixels; factor: zoom z.
    """

    flip: tuple[bool, bool] = (False, False)
    coarse: np.ndarray | None = None
    angle: float = 0.0
    offset: tuple[float, float] = (0.0, 0.0)
    factor: float = 1.0


def draw_geometry(rng: np.random.Generator, config: AugmentConfig) -> GeometryDraw | None:
    """The random numbers of one sample's geometric transform, or None for the identity.

    Drawn in this order, each only when its transform is applied: flips, elastic, rotation, shift, zoom.
    """
    flip = tuple(bool(config.flip_p > 0 and rng.random() < config.flip_p) for _ in range(2))
    elastic = config.elastic_sigma > 0 and config.elastic_p > 0 and rng.random() < config.elastic_p
    coarse = (
        rng.normal(0.0, config.elastic_sigma, size=(2, config.elastic_grid, config.elastic_grid)) if elastic else None
    )
    rotate = config.rotation > 0 and config.rotation_p > 0 and rng.random() < config.rotation_p
    angle = math.radians(rng.uniform(-config.rotation, config.rotation)) if rotate else 0.0
    shift = config.shift > 0 and config.shift_p > 0 and rng.random() < config.shift_p
    offset = tuple(float(v) for v in rng.uniform(-config.shift, config.shift, size=2)) if shift else (0.0, 0.0)
    zoom = config.scale != (1.0, 1.0) and config.scale_p > 0 and rng.random() < config.scale_p
    factor = math.exp(rng.uniform(*np.log(config.scale))) if zoom else 1.0
    if not (any(flip) or elastic or rotate or shift or zoom):
        return None
    return GeometryDraw(flip, coarse, angle, offset, factor)  # type: ignore[arg-type]


def rotation_matrix(draw: GeometryDraw) -> np.ndarray:
    """R / z of `sampling_map`: (2, 2) acting on (y, x)."""
    angle = draw.angle
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) / draw.factor


def sampling_map(shape: tuple[int, int], rng: np.random.Generator, config: AugmentConfig) -> np.ndarray | None:
    """Source coordinates of every output pixel: (2, H, W) float32 (y, x), or None for the identity.

    For an output pixel p: flip its axes, add the elastic displacement u(p), rotate by R and zoom by z about
    the centre c = ((H - 1) / 2, (W - 1) / 2) and shift by t: source = R (flip(p) + u(p) - c) / z + c + t.
    Random numbers are drawn in this order, each only when its transform is applied (`draw_geometry`).
    """
    draw = draw_geometry(rng, config)
    return None if draw is None else geometry_map(shape, draw)


def geometry_map(shape: tuple[int, int], draw: GeometryDraw) -> np.ndarray:
    """The sampling map (2, H, W) float32 of `draw` (see `sampling_map`).

    Computed separably: R u(p) = M_H (R coarse) M_W^T is the field of the rotated coarse vectors, and the
    affine part is a sum of a column and a row.
    """
    height, width = shape
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    y = np.arange(height) - centre[0]
    x = np.arange(width) - centre[1]
    if draw.flip[0]:
        y = -y
    if draw.flip[1]:
        x = -x
    rotation = rotation_matrix(draw)
    coordinates = np.empty((2, height, width), np.float32)
    for axis in range(2):
        # source[axis] = sum_k column_k(y) row_k(x): the affine part, then R u = M_H (R coarse) M_W^T
        columns = [rotation[axis, 0] * y + centre[axis] + draw.offset[axis], np.ones(height)]
        rows = [np.ones(width), rotation[axis, 1] * x]
        if draw.coarse is not None:
            grid = draw.coarse.shape[-1]
            rotated = np.tensordot(rotation[axis], draw.coarse, axes=1)
            columns += list((_spline_matrix(height, grid) @ rotated).T)
            rows += list(_spline_matrix(width, grid).T)
        # einsum, not a matrix product: BLAS threads stall on busy machines for this thin product
        np.einsum("ky,kx->yx", np.array(columns, np.float32), np.array(rows, np.float32), out=coordinates[axis])
    return coordinates


def warp(
    image: np.ndarray, target: np.ndarray, weights: np.ndarray, coordinates: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample image (bicubic), target and weights (nearest) at `coordinates`, mirroring at the borders.

    image: (H, W) or (C, H, W); target, weights: (H, W); coordinates: (2, H', W') source (y, x) per output
    pixel. Returns image (C, H', W') or (H', W') float32, target (H', W') of target's dtype, weights
    (H', W') float32. Uses torch.nn.functional.grid_sample (align_corners=True, reflection padding: pixel
    -1 reads pixel 1). Integer targets are moved exactly, whatever their ids (see `exact_planes`).
    """
    height, width = target.shape
    channels = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).reshape(1, -1, height, width)
    planes, ids = exact_planes(target)
    labels = torch.from_numpy(np.concatenate([planes, weights.astype(np.float32)[None]]))[None]
    grid = np.empty((1, *coordinates.shape[1:], 2), np.float32)
    grid[0, ..., 0] = coordinates[1] * (2.0 / max(width - 1, 1)) - 1.0
    grid[0, ..., 1] = coordinates[0] * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.from_numpy(grid)
    options = {"padding_mode": "reflection", "align_corners": True}
    with torch.no_grad():
        warped_image = torch.nn.functional.grid_sample(channels, grid, mode="bicubic", **options)[0]
        warped_labels = torch.nn.functional.grid_sample(labels, grid, mode="nearest", **options)[0]
    warped_image = warped_image.numpy()
    out_shape = coordinates.shape[1:]
    sampled = warped_labels.numpy()  # (k + 1, H', W'): the target's planes, then the weights
    return (
        warped_image.reshape(out_shape) if image.ndim == 2 else warped_image,
        from_exact_planes(sampled[:-1], ids, target.dtype),
        sampled[-1],
    )


FLOAT32_EXACT = 2**24  # float32 holds every integer of magnitude up to 2**24; 2**24 + 1 reads 2**24
PLANE_BITS = 16  # bits of an id index carried by one float32 plane


def exact_planes(target: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """target (H, W) as float32 planes (k, H, W) that nearest-neighbour sampling moves without rounding, and
    the ids they index (None: the single plane is the target itself).

    Class ids and instance ids up to 2**24 are one plane. Larger integer ids are replaced by their rank among
    the target's ids, split into 16-bit digits, one plane each (every plane picks the same source pixel).

    >>> planes, ids = exact_planes(np.array([[0, 2**24 + 1]], np.int64))
    >>> planes, ids
    (array([[[0., 1.]]], dtype=float32), array([       0, 16777217]))
    >>> from_exact_planes(planes, ids, np.int64)
    array([[       0, 16777217]])
    """
    if target.dtype.kind not in "iu" or target.size == 0:
        return target.astype(np.float32)[None], None
    if int(target.min()) >= -FLOAT32_EXACT and int(target.max()) <= FLOAT32_EXACT:
        return target.astype(np.float32)[None], None
    ids, rank = np.unique(target, return_inverse=True)
    rank = rank.reshape(target.shape).astype(np.int64)
    digits = max(1, -(-(len(ids) - 1).bit_length() // PLANE_BITS))
    mask = (1 << PLANE_BITS) - 1
    return np.stack([(rank >> (PLANE_BITS * k)) & mask for k in range(digits)]).astype(np.float32), ids


def from_exact_planes(planes: np.ndarray, ids: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """The target (H, W) of `dtype` that `exact_planes` made planes (k, H, W) and ids of."""
    if ids is None:
        return planes[0].astype(dtype)
    rank = sum(plane.astype(np.int64) << (PLANE_BITS * k) for k, plane in enumerate(planes))
    return ids[rank].astype(dtype)


@dataclass(frozen=True)
class GrayDraw:
    """The random part of one sample's gray-value change: each factor, or None when not applied."""

    gamma: float | None = None
    contrast: float | None = None
    brightness: float | None = None


def draw_gray_values(rng: np.random.Generator, config: AugmentConfig) -> GrayDraw:
    """The random numbers of `change_gray_values`: gamma, then contrast, then brightness."""
    values = []
    for name in ("gamma", "contrast", "brightness"):
        applied = getattr(config, f"{name}_p") > 0 and rng.random() < getattr(config, f"{name}_p")
        values.append(float(rng.uniform(*getattr(config, name))) if applied else None)
    return GrayDraw(*values)


def change_gray_values(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Gamma, then contrast, then brightness (see `AugmentConfig`), each with its probability: float32."""
    return apply_gray_values(image, draw_gray_values(rng, config))


def apply_gray_values(image: np.ndarray, draw: GrayDraw) -> np.ndarray:
    """The gray-value change `draw` of `image` (any shape; statistics over the whole array): float32."""
    image = np.asarray(image, dtype=np.float32)
    if draw.gamma is not None:
        low, high = float(image.min()), float(image.max())
        if high > low:
            image = low + (high - low) * ((image - low) / (high - low)) ** np.float32(draw.gamma)
    if draw.contrast is not None:
        mean = image.mean()
        image = mean + np.float32(draw.contrast) * (image - mean)
    if draw.brightness is not None:
        image = image + np.float32(draw.brightness) * image.std()
    return image


def augment(
    image: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented training sample.

    image: (H, W) or (C, H, W); target: (H, W) class ids; weights: (H, W). Returns image (float32, same
    shape), target (same dtype), weights (float32): gray-value changes on the image, then all geometric
    transforms as one sampling map (see `sampling_map` and `warp`). The same rng state gives the same sample.
    """
    image = np.asarray(image)
    target = np.asarray(target)
    weights = np.asarray(weights)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (C, H, W); got shape {image.shape}")
    if target.ndim != 2 or target.shape != image.shape[-2:] or weights.shape != target.shape:
        raise ValueError(
            f"target and weights must be (H, W) with the image's H, W {image.shape[-2:]}; "
            f"got target {target.shape}, weights {weights.shape}"
        )
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)); got {type(rng)}")
    image = change_gray_values(image, rng, config)
    coordinates = sampling_map(target.shape, rng, config)
    if coordinates is None:
        return image.copy(), target.copy(), weights.astype(np.float32)
    return warp(image, target, weights, coordinates)


class _CallableModule(ModuleType):
    """This module, callable as its function `augment`: the package exports the function `augment`, and
    importing this submodule binds the module under the same name on the package, so `napari_unet.augment`
    is this module (AugmentConfig, warp, ... reachable) and calling it calls `augment`, in any import order."""

    __call__ = staticmethod(augment)  # called on the module: the function's arguments, no `self`


sys.modules[__name__].__class__ = _CallableModule
