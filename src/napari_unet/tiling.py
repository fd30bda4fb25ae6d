"""Overlap-tile inference with mirrored borders (the paper's Fig. 2), in two halves: cut, then stitch.

Output tiles of side `stride` cover the image exactly once; each is predicted from a larger input window
(`stride` plus the model's context on each side). Outside the image the input is the image mirrored at its
border ("reflect": the edge pixel is not repeated).

Why the result is seam-free: a valid-padding U-Net with P poolings is equivariant to shifts by multiples of
2**P (`model.step`). Every tile's input window starts at `origin - lead` with `origin` a multiple of the stride,
itself a multiple of `model.step`, so every tile sees the same pooling grid as one forward pass over the whole
mirror-padded image (:func:`predict_whole`): stitched tiles equal it up to float rounding, for any tile size.

A valid net's output side is 4 (mod 16) for the paper's depth, so with a stride that is a multiple of 16 each
tile predicts a few more pixels than it keeps (384 of 388 for a 572 tile): the price of exactness.

For 'same'-padding models the window adds a margin of the receptive radius (rounded up to `model.step`) and
the tile output is cropped by it; zero padding inside the network still differs slightly from the whole-image
pass at tile edges (nonzero but below 1e-2 for an untrained net, asserted by the tests).

>>> import numpy as np
>>> from napari_unet.model import UNet
>>> model = UNet(depth=3, base_channels=4)
>>> probs = predict_tiled(model, np.random.rand(100, 130).astype("float32"), tile_size=48)
>>> probs.shape
(2, 100, 130)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .device import select_device
from .io import exact_in_float32
from .model import UNet
from .precision import autocast, cudnn_autotuning, memory_format
from .validation import check_finite

DEFAULT_CPU_MEMORY = 1 << 30  # bytes of activations a CPU tile may use
DEFAULT_MAX_STRIDE = 512  # larger tiles run slower per pixel on a CPU (activations leave the cache): bench_tiling


@dataclass(frozen=True)
class Tile:
    """One output tile: it writes `region` of the output, read from the input window at `window_origin`.

    region: (slice_y, slice_x) in image coordinates, clipped to the image.
    window_origin: (y, x) of the top-left input pixel, possibly negative (mirrored).
    crop: (y, x) of the first kept pixel inside the tile's network output.
    """

    index: int
    region: tuple[slice, slice]
    window_origin: tuple[int, int]
    crop: tuple[int, int]


@dataclass(frozen=True)
class TileGrid:
    """Tiles of `stride` (sy, sx) covering an image of `shape` (H, W), each read as a `window` (h, w) input.

    lead: pixels between the window's top-left and the first kept output pixel (the context in front).
    offset: pixels between the window's top-left and the first pixel of the network output (the valid halo).
    """

    shape: tuple[int, int]
    stride: tuple[int, int]
    window: tuple[int, int]
    lead: int
    offset: int

    @property
    def counts(self) -> tuple[int, int]:
        return tuple(math.ceil(n / s) for n, s in zip(self.shape, self.stride))  # type: ignore[return-value]

    def __len__(self) -> int:
        return math.prod(self.counts)

    def __iter__(self) -> Iterator[Tile]:
        (h, w), (sy, sx) = self.shape, self.stride
        crop = self.lead - self.offset
        index = 0
        for y in range(0, h, sy):
            for x in range(0, w, sx):
                yield Tile(
                    index,
                    (slice(y, min(y + sy, h)), slice(x, min(x + sx, w))),
                    (y - self.lead, x - self.lead),
                    (crop, crop),
                )
                index += 1


def tile_grid(model: UNet, shape: tuple[int, int], stride: int | tuple[int, int]) -> TileGrid:
    """The grid for `model` over an image of `shape` (H, W) with output tiles of `stride` pixels.

    `stride` is the largest tile wanted: the image is split into as few tiles as that allows, of equal size
    rounded up to a multiple of `model.step` (a 100x100 image is one tile, not a 1024x1024 one; 2048 pixels
    with at most 516 per tile are 4 tiles of 512).
    """
    strides = (stride, stride) if np.isscalar(stride) else tuple(stride)
    if any(int(s) < 1 for s in strides):
        raise ValueError(f"tile stride must be >= 1 pixel, got {strides}")
    step = model.step
    fitted = tuple(_round_up(math.ceil(n / math.ceil(n / int(s))), step) for s, n in zip(strides, shape))
    if model.config.padding == "valid":
        lead = offset = model.halo
        window = tuple(model.valid_input_size(s + 2 * lead) for s in fitted)
    else:
        lead, offset = _round_up(model.receptive_radius, step), 0
        window = tuple(s + 2 * lead for s in fitted)
    return TileGrid(tuple(int(n) for n in shape), fitted, window, lead, offset)  # type: ignore[arg-type]


def auto_stride(model: UNet, device: torch.device, memory_budget: int | None = None, batch_size: int = 1) -> int:
    """The largest output stride whose tile fits `memory_budget` bytes of activations (estimated).

    The estimate: ~6 feature maps of `base_channels` float32 values per input pixel are alive at the peak of the
    forward pass (the skip connections plus the concatenation at the top level), checked by the benchmark.
    Without a budget: 1 GiB on a CPU, half the free memory on a GPU.
    """
    if memory_budget is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            memory_budget = free // 2
        else:
            memory_budget = DEFAULT_CPU_MEMORY
    bytes_per_pixel = 4 * 6 * model.config.base_channels * batch_size
    side = int(math.sqrt(memory_budget / bytes_per_pixel)) - 2 * model.receptive_radius
    limit = DEFAULT_MAX_STRIDE if device.type == "cpu" else 4 * DEFAULT_MAX_STRIDE
    return max(model.step, min(_round_down(side, model.step), limit))


def mirror_indices(start: int, length: int, size: int) -> np.ndarray:
    """Indices of `length` pixels from `start` into an axis of `size`, mirrored ('reflect') outside [0, size)."""
    index = np.arange(start, start + length)
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


def read_window(image, origin: tuple[int, int], size: tuple[int, int], dtype: Any = np.float32) -> np.ndarray:
    """The (C, h, w) window at `origin` of a (C, H, W) array (numpy, memmap, dask, zarr), mirrored, as `dtype`.

    Only the in-image block the window needs is read, so lazy and memory-mapped images are never loaded whole.
    """
    rows = mirror_indices(origin[0], size[0], image.shape[-2])
    cols = mirror_indices(origin[1], size[1], image.shape[-1])
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    block = np.asarray(image[..., r0:r1, c0:c1], dtype=dtype)
    if r0 == origin[0] and c0 == origin[1] and block.shape[-2:] == tuple(size):
        return block
    return block[..., rows - r0, :][..., cols - c0]


@dataclass(frozen=True)
class TileResult:
    """A finished tile: `probs` (classes, h, w) to be written at `tile.region`."""

    tile: Tile
    probs: np.ndarray


def iter_predict_tiles(
    model: UNet,
    image,
    grid: TileGrid,
    device: torch.device,
    batch_size: int = 1,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    tiles: Iterable[Tile] | None = None,
    precision: str | None = None,
    pipelined: bool | None = None,
) -> Iterator[TileResult]:
    """Yield each finished output tile of `image` (C, H, W) as softmax probabilities, in grid order.

    tiles: a part of the grid to predict (e.g. one block of a distributed run); the whole grid by default.
    precision: "auto", "fp32" or "bf16" (`precision.autocast`); None: as the caller's autocast state.
    pipelined: read the next batch's windows on a CPU thread, and copy each finished batch back while the device
        computes the next one (pinned memory, asynchronous copies on CUDA); None: on GPUs, not on the CPU.
    Stopping is not asking for the next tile. The model must already be on `device`, in eval mode.
    """
    tiles = iter(grid if tiles is None else tiles)
    batches = iter(lambda: [tile for _, tile in zip(range(batch_size), tiles)], [])
    # float64 until `preprocess` for values float32 rounds (int64 offset by 2**31: steps of 256 before the offset
    # is subtracted); the network gets float32 either way. Inputs that do not say their dtype are read as float32.
    dtype = getattr(image, "dtype", None)
    exact = preprocess is None or dtype is None or exact_in_float32(dtype)
    read_as = np.float32 if exact else np.float64

    def read(batch: list[Tile]) -> np.ndarray:
        windows = [read_window(image, tile.window_origin, grid.window, read_as) for tile in batch]
        if preprocess is not None:
            windows = [np.asarray(preprocess(w), dtype=np.float32) for w in windows]
        return np.stack(windows)

    def kept(batch: list[Tile], probs: np.ndarray) -> Iterator[TileResult]:
        if not np.isfinite(probs).all():  # else NaN would pass silently as "no object" to every later step
            y, x = batch[0].region[0].start, batch[0].region[1].start
            raise ValueError(
                f"the network's output is not a number (NaN) near pixel (y={y}, x={x}): the model's weights or "
                "the normalised image hold values beyond what 32-bit floats can compute with (an image of "
                "extreme values: convert it to a usual range first)"
            )
        for tile, tile_probs in zip(batch, probs):
            (ry, rx) = tile.region
            yield TileResult(tile, tile_probs[:, : ry.stop - ry.start, : rx.stop - rx.start])

    crop = grid.lead - grid.offset
    stride_y, stride_x = grid.stride
    if not (device.type != "cpu" if pipelined is None else pipelined):
        for batch in batches:
            x = torch.from_numpy(read(batch)).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), _autocast(device, precision):
                probs = torch.softmax(model(x).float(), dim=1)
            yield from kept(batch, probs[:, :, crop : crop + stride_y, crop : crop + stride_x].numpy())
        return
    layout = memory_format(device)
    with ThreadPoolExecutor(1) as reader, cudnn_autotuning(device):

        def submit(batch: list[Tile]):
            return (batch, reader.submit(read, batch)) if batch else None

        pending = None  # the previous batch: (tiles, probabilities on their way to the CPU, copy finished event)
        upcoming = submit(next(batches, []))
        while upcoming is not None:
            batch, windows = upcoming
            upcoming = submit(next(batches, []))  # read while this batch computes
            x = torch.from_numpy(windows.result())
            x = (x.pin_memory() if device.type == "cuda" else x).to(device, non_blocking=True)
            with torch.inference_mode(), _autocast(device, precision):
                probs = torch.softmax(model(x.contiguous(memory_format=layout)).float(), dim=1)
                probs = probs[:, :, crop : crop + stride_y, crop : crop + stride_x]
            if device.type == "cuda":
                host = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
                host.copy_(probs, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
            else:
                host, done = probs.cpu(), None
            if pending is not None:
                yield from kept(pending[0], _wait(pending[1], pending[2]))
            pending = (batch, host, done)
        if pending is not None:
            yield from kept(pending[0], _wait(pending[1], pending[2]))


def _autocast(device: torch.device, precision: str | None) -> contextlib.AbstractContextManager:
    """`precision.autocast`, or nothing for None (the caller's autocast state holds)."""
    return contextlib.nullcontext() if precision is None else autocast(device, precision)


def _wait(host: torch.Tensor, done: torch.cuda.Event | None) -> np.ndarray:
    """The numpy view of `host` once its asynchronous copy from the GPU has finished."""
    if done is not None:
        done.synchronize()
    return host.numpy()


def as_array(image):
    """`image` as an array the prediction reads: numpy arrays and lazy ones (anything with ``shape``, ``dtype`` and
    indexing: dask, zarr, memmap) as they are, so lazy ones stay lazy; a torch tensor as a numpy array (detached,
    on the CPU); anything else (nested lists, tuples) through `np.asarray`.

    >>> as_array([[0, 1], [2, 3]]).shape, as_array(torch.zeros(2, 3)).dtype
    ((2, 2), dtype('float32'))
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        return (image.float() if image.dtype == torch.bfloat16 else image).numpy()  # numpy has no bfloat16
    if all(hasattr(image, name) for name in ("shape", "dtype", "__getitem__")):
        return image
    return np.asarray(image)


def as_dask(image):
    """A lazy array that numpy's indexing and methods cannot all be used on (zarr: no ``transpose``, ``astype``
    or indexing with None) as a dask array of its chunks: still lazy, read window by window."""
    import dask.array as da

    return da.from_array(image, chunks=getattr(image, "chunks", "auto"))


def with_channel_axis(image):
    """A (H, W) array as (1, H, W): a view of numpy arrays, memmaps and dask arrays; arrays that cannot be
    indexed with None (zarr) go through dask (`as_dask`), so they stay lazy and are read window by window.

    >>> with_channel_axis(np.zeros((4, 5))).shape
    (1, 4, 5)
    """
    try:
        return image[None]
    except (IndexError, TypeError, ValueError, KeyError):  # zarr: "unsupported selection item"
        return as_dask(image)[None]


def check_not_empty(image) -> None:
    """Raise ValueError when `image` has an axis of length 0: there is nothing to predict.

    >>> check_not_empty(np.zeros((0, 10)))
    Traceback (most recent call last):
    ValueError: the image is empty: shape (0, 10); there is nothing to predict
    """
    shape = tuple(np.shape(image))
    if 0 in shape:
        raise ValueError(f"the image is empty: shape {shape}; there is nothing to predict")


def as_channels_first(image, in_channels: int):
    """View a (H, W) or (C, H, W) image as (C, H, W), checking C against the model."""
    if image.ndim == 2:
        image = with_channel_axis(image)
    if image.ndim != 3:
        raise ValueError(
            f"expected an image (H, W) or (C, H, W) with C = {in_channels}, got shape {tuple(image.shape)}; "
            "predict stacks and time series plane by plane"
        )
    if image.shape[0] != in_channels:
        raise ValueError(
            f"the model expects {in_channels} channel(s), the image has shape {tuple(image.shape)} "
            f"(read as (C, H, W) with C = {image.shape[0]})"
        )
    return image


def prepare_model(model: UNet, device: torch.device) -> UNet:
    """Move the model to `device` for inference: eval mode, channels_last on the CPU and CUDA (faster there:
    docs/design.md, docs/gpu.md)."""
    return model.eval().to(device, memory_format=memory_format(device))


def predict_tiled(
    model: UNet,
    image,
    tile_size: int | tuple[int, int] | None = None,
    *,
    device: str | torch.device = "auto",
    memory_budget: int | None = None,
    batch_size: int = 1,
    out=None,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    precision: str | None = None,
) -> np.ndarray:
    """Softmax probabilities (classes, H, W) of `image` (H, W) or (C, H, W), predicted tile by tile.

    tile_size: output side of a tile (rounded to the model's step); by default the largest that fits
        `memory_budget` bytes of activations.
    out: where to write, e.g. a zarr array of shape (classes, H, W) for images larger than memory; a new float32
        array by default.
    preprocess: applied to each input window (C, h, w), e.g. normalisation with global percentiles; the windows
        are float32, or float64 for images whose values float32 does not hold exactly (int32/64, float64).
    batch_size: tiles per forward pass (on a GPU, 4-8 tiles of 572 or more keep it busy: docs/gpu.md).
    precision: "auto" (bf16 autocast on CUDA), "fp32" or "bf16" (`precision.py`); None: the caller's autocast
        state (fp32 unless the call is inside `precision.autocast`). Seam-free: tiled equals `predict_whole` to
        float rounding in fp32; in bf16 within 0.05 of a probability (tests/test_tiling_precision.py).
    The image may be numpy, a memory-mapped TIFF, dask or zarr; it is read window by window (a list or a torch
    tensor is converted first: `as_array`).
    The model is moved to `device` and put in eval mode. An image with NaN or infinite values (or complex
    numbers) raises ValueError (`validation.check_finite`).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of tiles >= 1, got {batch_size!r}")
    image = as_array(image)
    check_not_empty(image)
    image = as_channels_first(image, model.config.in_channels)
    check_finite(image)  # NaN or inf would silently turn every probability into NaN
    device = select_device(device)
    prepare_model(model, device)
    if tile_size is None:
        tile_size = auto_stride(model, device, memory_budget, batch_size)
    grid = tile_grid(model, tuple(image.shape[-2:]), tile_size)
    if out is None:
        out = np.empty((model.config.num_classes, *grid.shape), dtype=np.float32)
    elif tuple(out.shape) != (model.config.num_classes, *grid.shape):
        raise ValueError(f"out must have shape {(model.config.num_classes, *grid.shape)}, got {tuple(out.shape)}")
    for result in iter_predict_tiles(model, image, grid, device, batch_size, preprocess, precision=precision):
        out[(slice(None), *result.tile.region)] = result.probs
    return out


def predict_whole(model: UNet, image, device: str | torch.device = "cpu", precision: str | None = None) -> np.ndarray:
    """Reference: one forward pass over the whole mirror-padded image (what tiling must equal).

    image: (H, W) or (C, H, W) -> probs (classes, H, W). Memory grows with the image: for tests and benchmarks.
    """
    image = as_channels_first(np.asarray(image, dtype=np.float32), model.config.in_channels)
    device = select_device(device)
    prepare_model(model, device)
    h, w = image.shape[-2:]
    grid = tile_grid(model, (h, w), (h, w))
    window = read_window(image, (-grid.lead, -grid.lead), grid.window)
    x = torch.from_numpy(window[None]).to(device).contiguous(memory_format=memory_format(device))
    with torch.inference_mode(), _autocast(device, precision):
        probs = torch.softmax(model(x).float(), dim=1)[0].cpu().numpy()
    crop = grid.lead - grid.offset
    return probs[:, crop : crop + h, crop : crop + w]


def dihedral_transforms() -> list[tuple[int, bool]]:
    """The 8 symmetries of the square as (quarter turns k, flip): x -> flip(rot90(x, k)) on the last two axes."""
    return [(k, flip) for k in range(4) for flip in (False, True)]


def transform(array, k: int, flip: bool):
    """rot90 by `k` quarter turns on the last two axes, then a left-right flip if `flip` (a view for numpy)."""
    array = np.rot90(array, k, axes=(-2, -1)) if k else array
    return np.flip(array, axis=-1) if flip else array


def untransform(array, k: int, flip: bool):
    """The inverse of `transform(., k, flip)`.

    >>> x = np.arange(6).reshape(2, 3)
    >>> all((untransform(transform(x, k, flip), k, flip) == x).all() for k, flip in dihedral_transforms())
    True
    """
    array = np.flip(array, axis=-1) if flip else array
    return np.rot90(array, -k, axes=(-2, -1)) if k else array


def predict_tta(model: UNet, image, tile_size: int | tuple[int, int] | None = None, **options: Any) -> np.ndarray:
    """Test-time augmentation: probabilities (classes, H, W) averaged over the 8 flips and 90-degree rotations.

    probs = 1/8 sum_g g^-1(f(g(x))) for g in the dihedral group of the square, f = `predict_tiled` (with
    `preprocess`, which must not depend on the orientation, e.g. normalisation with the image's percentiles).
    image: (H, W) or (C, H, W); a lazy one (dask, zarr) is read whole, as the 8 orientations need it. options:
    `iter_predict_tta`'s (device, batch_size, preprocess, precision). Costs 8 predictions; for a model that is
    exactly equivariant to these symmetries it equals the plain one.
    """
    *_, (count, total) = iter_predict_tta(model, image, tile_size, **options)  # the last sum: every orientation
    total /= np.float32(count)
    return total


def iter_predict_tta(
    model: UNet,
    image,
    tile_size: int | tuple[int, int] | None = None,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 1,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    precision: str | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """`predict_tta` one orientation at a time: yields (n, the sum (classes, H, W) float32 of the first n
    orientations' probabilities, brought back to the image's), n = 1..8; the same array, updated in place.
    Stopping is not asking for the next one (the Segment dock's progress and Cancel). A lazy image (dask, zarr:
    zarr cannot be flipped) is read whole first."""
    image = as_array(image)
    check_not_empty(image)
    channels_first = as_channels_first(image, model.config.in_channels)
    if not isinstance(channels_first, np.ndarray):
        channels_first = np.asarray(channels_first)
    device = select_device(device)
    total = None
    for n, (k, flip) in enumerate(dihedral_transforms(), start=1):
        probs = predict_tiled(
            model,
            transform(channels_first, k, flip),
            tile_size,
            device=device,
            batch_size=batch_size,
            preprocess=preprocess,
            precision=precision,
        )
        probs = untransform(probs, k, flip)
        if total is None:
            total = np.array(probs, dtype=np.float32)
        else:
            total += probs
        yield n, total


def _round_up(n: int, step: int) -> int:
    return -(-int(n) // step) * step


def _round_down(n: int, step: int) -> int:
    return (int(n) // step) * step
