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

from ..io import TIFF_SUFFIXES, _axes_from_series, to_canonical, validate_axes
from ..metadata import PixelSize, read_pixel_size
from ..pipeline import Outputs, output_paths, read_input, segment_file
from ..postprocess import PostprocessConfig
from ..tiling import TileGrid, as_channels_first, iter_predict_tiles
from .blocks import label_window, tiles_in
from .cluster import ModelSpec, worker_model


def read_lazily(path: str | Path, axes: str | None = None) -> tuple[Any, str]:
    """`pipeline.read_input`, except that a TIFF that cannot be memory-mapped (compressed, or stored in pieces)
    is opened as a dask array through tifffile's zarr store: a block then reads only the strips or tiles its
    windows need, where `read_input` would decompress the whole image in every block's task."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                mappable, shape, series_axes = bool(series.dataoffset), tuple(series.shape), series.axes
        except Exception:  # noqa: BLE001 - read_input below raises the error that names the formats
            mappable = True
        if not mappable:
            import dask.array as da
            import zarr

            image = da.from_zarr(zarr.open(tifffile.imread(path, aszarr=True), mode="r"))
            if tuple(image.shape) == shape:
                found = validate_axes(axes, image.ndim) if axes is not None else _axes_from_series(series_axes, shape)
                return to_canonical(image, found)
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

    def open(self, in_channels: int) -> NamedReads:
        """The (C, H, W) image, read window by window; a window that cannot be read names the file."""
        with reading(self.path):
            image, axes = read_lazily(self.path, self.axes)
        if self.index:
            image = image[self.index]
        return NamedReads(as_channels_first(image, in_channels), self.path)


@dataclass(frozen=True)
class NamedReads:
    """A lazy `image` whose windows (`image[key]`, as numpy) are read inside `reading(path)`."""

    image: Any
    path: Path

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)

    def __getitem__(self, key) -> np.ndarray:
        with reading(self.path):
            return np.asarray(self.image[key])


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
        image = source.open(bundle.net.config.in_channels)
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
) -> int:
    """One file segmented as in a single-process run (`tta`: test-time augmentation), written under temporary
    names, then renamed; the outputs carry `pixel_size`, else the input's own (`metadata.read_pixel_size`)."""
    import dask

    bundle, where = worker_model(spec, device)
    final = output_paths(path, out_dir, probabilities)
    partial = Outputs(
        final.labels.with_name(".partial-" + final.labels.name),
        final.probs.with_name(".partial-" + final.probs.name) if final.probs else None,
    )
    objects = 0
    with dask.config.set(scheduler="synchronous"):  # a lazy input is read here, not as tasks of the cluster
        image, axes = read_input(path, axes)
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
            pixel_size=pixel_size or read_pixel_size(path),
        )
        for done in planes:
            objects += done.objects
    if final.probs is not None:
        os.replace(partial.probs, final.probs)
    os.replace(partial.labels, final.labels)
    return objects


def identity(value: Any) -> Any:
    return value
