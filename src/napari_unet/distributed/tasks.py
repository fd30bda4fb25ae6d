"""The tasks that run on the workers: one block's probabilities, one block's labels, one whole file.

Each task finds the model already built on its worker (`cluster.worker_model`), reads only what it needs
(its tiles' input windows, its block's probabilities plus the margin), and writes its own part of the output
before its marker file, so a rerun skips it and a retried task overwrites only its own chunk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..channels import ChannelChoice
from ..io import MAX_PERCENTILE_SAMPLES, TIFF_SUFFIXES, read_image
from ..metadata import PixelSize, read_pixel_size, read_spacing
from ..modelfile import ModelBundle
from ..pipeline import Outputs, network_axes, output_paths, read_input, segment_file
from ..postprocess import PostprocessConfig
from ..tiling import TileGrid, as_channels_first, iter_predict_tiles
from ..validation import check_image, count_nonfinite
from .blocks import label_window, tiles_in
from .cluster import ModelSpec, worker_model


def read_lazily(path: str | Path, axes: str | None = None) -> tuple[Any, str]:
    """`pipeline.read_input`, except that a TIFF that cannot be memory-mapped (compressed, or stored in pieces)
    is opened as a dask array through tifffile's zarr store: a block then reads only the strips or tiles its
    windows need, where `read_input` would decompress the whole image in every block's task."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        return read_image(path, axes, lazy=True)
    return read_input(path, axes)


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Errors of reading `path` name it: a corrupt chunk's RuntimeError (or any error that is not already a
    ValueError or OSError) becomes a ValueError "<path>: cannot be read (...)"; ValueError and OSError pass."""
    try:
        yield
    except (ValueError, OSError):
        raise
    except Exception as error:  # noqa: BLE001 - codecs raise what they like (RuntimeError, zlib.error, ...)
        raise ValueError(f"{path}: cannot be read ({type(error).__name__}: {error})") from error


@dataclass(frozen=True)
class Source:
    """Where a worker reads a single-plane image: `read_lazily(path, axes)` at `index` (leading T/Z of size 1)."""

    path: Path
    axes: str | None
    index: tuple[int, ...] = ()

    def open(self, bundle: ModelBundle) -> NamedReads:
        """The image as the network of `bundle` takes it, (C, H, W), read window by window (`NamedReads`)."""
        with reading(self.path):
            image, axes = read_lazily(self.path, self.axes)
        return plane_reads(bundle, self.path, image, axes, self.index)


def plane_reads(bundle: ModelBundle, path: Path, image: Any, axes: str, index: tuple[int, ...] = ()) -> NamedReads:
    """The plane at `index` (leading T/Z) of the lazily read `image` (canonical `axes`) as `NamedReads` for the
    network of `bundle`; its channels, after the model's channel choice, are checked without reading any value."""
    if index:
        image, axes = image[index], axes[len(index) :]
    check_channels(bundle, path, image, axes)
    return NamedReads(image, axes, bundle.channels, bundle.net.config.in_channels, path)


def check_channels(bundle: ModelBundle, path: Path, image: Any, axes: str, choice: ChannelChoice | None = None) -> None:
    """Raise ValueError (naming `path`) unless `image` (canonical `axes`) gives the network's channel count with
    the channel `choice` (default the model's; `ModelBundle.prepare`), as a single-process run checks it; nothing
    is read (`pipeline.network_axes`)."""
    try:
        network_axes(bundle, image, axes, path.name, choice)  # from the shape alone: nothing is read
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def check_values(path: Path, image: Any) -> None:
    """Raise ValueError (naming `path`) when the lazily read `image` (a dask array, zarr, or memory-mapped TIFF)
    holds NaN or infinite values, or is constant: `validation.check_image`'s refusals and messages, for an input
    that goes by blocks, when planning (before any output is created or any task submitted).

    Cost: a full read of the image on the driver, once (a compressed input decompressed once), as one dask
    reduction chunk by chunk on local threads (a memory-mapped TIFF band by band): memory of a few chunks per
    thread, never the whole image. (The percentiles' sample of `NamedReads.sample` sees every n-th pixel only, so
    it cannot stand in for this.)
    """
    import dask
    import dask.array as da

    from ..validation import BLOCK_ELEMENTS

    if isinstance(image, da.Array):
        parts = [image.min(), image.max()]
        if image.dtype.kind == "f":
            parts.append((~da.isfinite(image)).sum())
        with reading(path):
            # the three reductions share one read of each chunk; "threads": the driver's threads, even when a
            # distributed Client is the default scheduler (the workers do not read the image for a check)
            lo, hi, *bad = dask.compute(*parts, scheduler="threads")
    else:  # a memory-mapped TIFF, read in bands of whole rows, ~BLOCK_ELEMENTS values each (not through
        # `dask.array.from_array`, which copies a memory-mapped array whole before any chunk is read)
        *lead, height, width = image.shape
        rows = max(1, BLOCK_ELEMENTS // max(1, int(np.prod(lead, dtype=np.int64)) * width))
        lo, hi, bad = None, None, [0]
        with reading(path):
            for start in range(0, height, rows):
                band = np.asarray(image[..., start : start + rows, :])
                if band.dtype.kind == "f":
                    finite = np.isfinite(band)
                    bad[0] += int(band.size - np.count_nonzero(finite))
                    band = band[finite]
                if band.size:
                    lo = band.min() if lo is None else min(lo, band.min())
                    hi = band.max() if hi is None else max(hi, band.max())
    if bad and int(bad[0]):
        raise ValueError(
            f"{path}: the image has {int(bad[0])} NaN or infinite values out of {int(np.prod(image.shape))}; "
            "replace them (e.g. with np.nan_to_num) before segmenting"
        )
    if lo == hi:
        raise ValueError(f"{path}: the image is constant (every value is {float(lo)}): nothing to segment")


@dataclass(frozen=True)
class NamedReads:
    """A lazy single plane `image` ("YX" or "CYX": `axes`) as the network takes it, (C, H, W) with C =
    `in_channels`: each window `self[..., rows, cols]` is read inside `reading(path)`, given the channel `choice`
    (pixel by pixel, so the values are those of choosing on the whole image, as a single-process run does) and
    refused with a ValueError naming `path` when it holds NaN or infinite values."""

    image: Any
    axes: str
    choice: ChannelChoice
    in_channels: int
    path: Path

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.in_channels, *self.image.shape[-2:])

    def __getitem__(self, key) -> np.ndarray:
        with reading(self.path):
            raw = np.asarray(self.image[key])
        window = as_channels_first(self.choice.apply(raw, self.axes)[0], self.in_channels)
        bad = count_nonfinite(window)
        if bad:
            rows, cols = (
                f"{k.start or 0}:{n if k.stop is None else k.stop}" for k, n in zip(key[-2:], self.shape[-2:])
            )
            raise ValueError(
                f"{self.path}: the image has {bad} NaN or infinite values in rows {rows}, columns {cols}; replace "
                "them (e.g. with np.nan_to_num) before segmenting"
            )
        return window

    def sample(self) -> np.ndarray:
        """The (C, h, w) regular sample of at most `io.MAX_PERCENTILE_SAMPLES` pixels that `io.percentiles` takes
        of the whole image (every `step`-th row and column), for the normalisation; its percentiles are the whole
        image's. Refused (ValueError naming `path`) when it holds NaN or infinite values, or only one value."""
        height, width = self.shape[-2:]
        step = 1
        while -(-height // step) * -(-width // step) > MAX_PERCENTILE_SAMPLES:
            step += 1
        sample = self[..., ::step, ::step]
        if sample.min() == sample.max():
            every = "every value" if step == 1 else f"every value sampled (each {step}th row and column)"
            raise ValueError(f"{self.path}: the image is constant ({every} is {sample.flat[0]}): nothing to segment")
        return sample


def predict_block(
    spec: ModelSpec,
    device: str,
    source: Source,
    preprocess: Callable,
    grid: TileGrid,
    region: tuple[slice, slice],
    probs_path: str,
    marker: str,
) -> None:
    """Foreground probabilities of one block, from whole tiles of the image's grid, written to the OME-Zarr."""
    import dask
    import zarr

    bundle, where = worker_model(spec, device)
    ry, rx = region
    block = np.empty((ry.stop - ry.start, rx.stop - rx.start), np.float32)
    with dask.config.set(scheduler="synchronous"):  # a lazy input is read here, not as tasks of the cluster
        image = source.open(bundle)
        tiles = tiles_in(grid, region)
        for result in iter_predict_tiles(bundle.net, image, grid, where, preprocess=preprocess, tiles=tiles):
            ty, tx = result.tile.region
            block[ty.start - ry.start : ty.stop - ry.start, tx.start - rx.start : tx.stop - rx.start] = result.probs[1]
    if not Path(marker).parent.is_dir():
        return  # the output was restarted with other settings since this task was submitted
    zarr.open_array(probs_path, mode="r+")[region] = block
    Path(marker).write_text("done")


def label_block(
    probs_path: str,
    region: tuple[slice, slice],
    margin: int,
    config: PostprocessConfig,
    labels_path: str,
    marker: str,
    after: Sequence[Any] = (),
) -> int:
    """Labels of one block from its probabilities plus `margin` pixels around; returns the cut objects."""
    import zarr

    probs = zarr.open_array(probs_path, mode="r")
    height, width = probs.shape
    window = (
        slice(max(0, region[0].start - margin), min(height, region[0].stop + margin)),
        slice(max(0, region[1].start - margin), min(width, region[1].stop + margin)),
    )
    labels, cut = label_window(
        np.asarray(probs[window]), (window[0].start, window[1].start), (height, width), region, config
    )
    if not Path(marker).parent.is_dir():
        return 0  # the output was restarted with other settings since this task was submitted
    zarr.open_array(labels_path, mode="r+")[region] = labels
    Path(marker).write_text(json.dumps({"cut_objects": cut}))
    return cut


def segment_whole_file(
    spec: ModelSpec,
    device: str,
    path: Path,
    axes: str | None,
    out_dir: Path,
    probabilities: bool,
    config: PostprocessConfig,
    tile_size: int | None,
    tta: bool = False,
    pixel_size: PixelSize | None = None,
    settings: dict[str, Any] | None = None,
) -> int:
    """One file segmented as in a single-process run (`tta`: test-time augmentation), written under temporary
    names, then renamed; the outputs carry `pixel_size`, else the input's own (`metadata.read_pixel_size`), the
    input's Z step (in that pixel size's unit) and frame interval (`metadata.read_spacing`), and the run's
    `settings` (`pipeline.output_settings`; None: none), so that a rerun of `predict` knows them as its own."""
    import dask

    bundle, where = worker_model(spec, device)
    final = output_paths(path, out_dir, probabilities)
    partial = Outputs(
        final.labels.with_name(".partial-" + final.labels.name),
        final.probs.with_name(".partial-" + final.probs.name) if final.probs else None,
    )
    pixel_size = pixel_size or read_pixel_size(path)
    objects = 0
    with dask.config.set(scheduler="synchronous"):  # a lazy input is read here, not as tasks of the cluster
        image, axes = read_input(path, axes)
        check_image(image, axes)  # refused as in a single-process run: NaN or infinite values, a constant image
        # at the image's own scale (diameter=None): the command line refuses a model that would rescale
        planes = segment_file(
            bundle,
            image,
            axes,
            partial,
            postprocess=config,
            tile_size=tile_size,
            device=where,
            diameter=None,
            tta=tta,
            pixel_size=pixel_size,
            spacing=read_spacing(path, pixel_size),
            settings=settings,
            channels=bundle.channels,  # the model's channel choice, as `predict` does: plane by plane
        )
        for done in planes:
            objects += done.objects
    if final.probs is not None:
        os.replace(partial.probs, final.probs)
    os.replace(partial.labels, final.labels)
    return objects


def identity(value: Any) -> Any:
    return value
