"""Segmentation scaled out on dask.distributed: many files as tasks, one large image as blocks.

A folder of images fans out as one task per file (the same `pipeline.segment_file` as a single-process run,
written to a temporary name and renamed when finished). An image larger than a block (any `.zarr` store, a
large TIFF read memory-mapped) is cut into blocks, in two passes that write OME-Zarr arrays block by block:

1. probabilities: each block is a rectangle of whole tiles of the image's single `TileGrid` (the block side
   is a multiple of the tile stride), and each tile reads its input window from the whole image with
   `tiling.read_window`. So every tile sees exactly the input, mirrored border included, and the pooling
   grid of the single-process `predict_tiled`: the foreground probabilities are equal in fp32, bit for bit.
2. labels: each block runs `probs_to_labels` on its probabilities plus a `margin` of real neighbouring
   pixels (from the pass above) and writes only its own pixels. Every object gets a global id from its
   position, the first pixel of the object in raster order (y * W + x + 1), so the blocks on either side of
   a border that both see an object whole give it the same id: objects crossing block borders are joined,
   never split or duplicated, with no merge step. Guarantee: the labels equal the single-process
   `probs_to_labels` up to renumbering whenever every object, with the context its post-processing looks
   at (`border_width`, `grow_distance` when growing), fits within the margin. An object that reaches the
   edge of a block's window is counted in `BlockDone.cut_objects` (reported by the CLI), never silently.
   Ids are the anchors, not 1..n: unique and stable, not consecutive.

The model goes to each worker once: its weights travel as one task result that blocks depend on (fetched
once per worker, recomputed from its task if the worker holding it dies), and each worker process builds the
torch model once and keeps it (`_worker_model`). Workers take the GPU `cuda:<worker index>` when CUDA is
available (one worker per GPU) and set their torch threads (`TorchThreads`).

Resumable: a block writes a marker file after its data; a rerun skips marked blocks and finished files. A
worker killed mid-run loses only unmarked work, which the scheduler reruns on another worker.

>>> from napari_unet.distributed import block_regions
>>> [tuple((s.start, s.stop) for s in region) for region in block_regions((100, 150), (64, 64))][:3]
[((0, 64), (0, 64)), ((0, 64), (64, 128)), ((0, 64), (128, 150))]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    from distributed import Client, LocalCluster, as_completed, get_worker
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        "napari_unet.distributed needs dask.distributed: pip install 'napari-unet-2015[distributed]'"
    ) from error

from .device import select_device
from .model import UNet, UNetConfig
from .modelfile import ModelBundle, Normalization
from .pipeline import ZARR_SUFFIX, Outputs, base_name, output_paths, read_input, segment_file
from .postprocess import PostprocessConfig, probs_to_labels
from .tiling import Tile, TileGrid, as_channels_first, auto_stride, iter_predict_tiles, prepare_model, tile_grid

DEFAULT_BLOCK = 1024  # block side (pixels), rounded up to a multiple of the tile stride
DEFAULT_MARGIN = 128  # pixels of context around a block for the post-processing: larger than the objects
NGFF_VERSION = "0.4"
COMPLETE = "napari_unet_complete"  # attribute set on an OME-Zarr output once every block is written


# ------------------------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class ModelSpec:
    """A model as plain data (configs and numpy weights) with a digest: what travels to the workers."""

    unet: dict[str, Any]
    normalization: tuple[float, float]
    postprocess: dict[str, Any]
    weights: dict[str, np.ndarray] = field(repr=False)
    digest: str = ""

    @classmethod
    def from_bundle(cls, bundle: ModelBundle) -> ModelSpec:
        weights = {k: v.detach().cpu().numpy().copy() for k, v in bundle.net.state_dict().items()}
        unet = bundle.net.config.to_dict()
        norm = (bundle.normalization.low, bundle.normalization.high)
        post = bundle.postprocess.to_dict()
        digest = hashlib.sha1(json.dumps([unet, norm, post], sort_keys=True).encode())
        for key in sorted(weights):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(weights[key]).tobytes())
        return cls(unet, norm, post, weights, digest.hexdigest()[:16])

    def build(self) -> ModelBundle:
        net = UNet(UNetConfig.from_dict(self.unet))
        net.load_state_dict({k: torch.from_numpy(v) for k, v in self.weights.items()})
        return ModelBundle(net, Normalization(*self.normalization), PostprocessConfig.from_dict(self.postprocess))


_WORKER_MODELS: dict[tuple[str, str], tuple[ModelBundle, torch.device]] = {}  # per worker process
_WORKER_LOCK = threading.Lock()
_WORKER_BUILDS: list[str] = []  # digests built in this process, for tests and benchmarks


def _worker_model(spec: ModelSpec, device: str) -> tuple[ModelBundle, torch.device]:
    """The model of `spec` on this worker's device, built on first use and kept for the process's life."""
    with _WORKER_LOCK:
        key = (spec.digest, device)
        if key not in _WORKER_MODELS:
            where = worker_device(device)
            bundle = spec.build()
            prepare_model(bundle.net, where)
            _WORKER_MODELS[key] = bundle, where
            _WORKER_BUILDS.append(spec.digest)
        return _WORKER_MODELS[key]


def worker_model_builds() -> list[str]:
    """The digests of the models this process has built (one entry per build)."""
    return list(_WORKER_BUILDS)


def worker_device(name: str = "auto") -> torch.device:
    """The device for this worker: with "auto" or "cuda" and CUDA present, `cuda:<i mod #GPUs>` where i is the
    worker's index (LocalCluster names workers 0, 1, ...), so N workers on N GPUs take one GPU each."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        try:
            index = int(get_worker().name)
        except (ValueError, TypeError):
            index = 0
        return torch.device(f"cuda:{index % torch.cuda.device_count()}")
    return select_device(name)


class TorchThreads(WorkerPlugin):
    """Sets torch's threads on every worker, including workers that join or restart later.

    threads: per worker; None: the cores this process may use divided by the worker's dask threads.
    """

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def setup(self, worker) -> None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(self.threads or max(1, cores // max(1, worker.state.nthreads)))


@contextmanager
def connect(
    address: str | None = None, workers: int | None = None, torch_threads: int | None = None
) -> Iterator[Client]:
    """A client of the scheduler at `address`, or of a new LocalCluster of `workers` processes (closed on exit).

    Local workers run one task at a time (threads_per_worker=1) with `torch_threads` each (default: the
    machine's cores divided among the workers).
    """
    if (address is None) == (workers is None):
        raise ValueError("give either a scheduler address or a number of local workers (not both, not neither)")
    cluster = None
    if workers is not None:
        if workers < 1:
            raise ValueError(f"the number of local workers must be >= 1, got {workers}")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch_threads = torch_threads or max(1, cores // workers)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
    else:
        client = Client(address)
    try:
        client.register_plugin(TorchThreads(torch_threads), name="napari-unet-torch-threads")
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# -------------------------------------------------------------------------------------------- blocks


def block_regions(shape: tuple[int, int], block: tuple[int, int]) -> list[tuple[slice, slice]]:
    """The (slice_y, slice_x) regions of `block`-sized blocks covering `shape` (H, W), row by row."""
    return [
        (slice(y, min(y + block[0], shape[0])), slice(x, min(x + block[1], shape[1])))
        for y in range(0, shape[0], block[0])
        for x in range(0, shape[1], block[1])
    ]


def block_shape(grid: TileGrid, block_size: int) -> tuple[int, int]:
    """`block_size` rounded up to whole tiles of `grid` on each axis (so blocks never split a tile)."""
    if block_size < 1:
        raise ValueError(f"the block size must be >= 1 pixel, got {block_size}")
    return tuple(math.ceil(block_size / s) * s for s in grid.stride)  # type: ignore[return-value]


def tiles_in(grid: TileGrid, region: tuple[slice, slice]) -> list[Tile]:
    """The tiles of `grid` whose output starts inside `region` (a block made of whole tiles)."""
    ry, rx = region
    return [t for t in grid if ry.start <= t.region[0].start < ry.stop and rx.start <= t.region[1].start < rx.stop]


def object_anchors(labels: np.ndarray, origin: tuple[int, int], width: int) -> np.ndarray:
    """(n + 1,) lookup: label i of a window at `origin` -> 1 + the global raster index of its first pixel
    (y * width + x in the whole image); 0 -> 0. The same object seen whole in two windows gets the same id."""
    n = int(labels.max(initial=0))
    lookup = np.zeros(n + 1, np.int64)
    if n == 0:
        return lookup
    rows = np.arange(labels.shape[0], dtype=np.int64)[:, None] + origin[0]
    cols = np.arange(labels.shape[1], dtype=np.int64)[None, :] + origin[1]
    raster = rows * width + cols
    from scipy import ndimage

    lookup[1:] = np.asarray(ndimage.minimum(raster, labels, np.arange(1, n + 1)), dtype=np.int64) + 1
    return lookup


def context_radius(config: PostprocessConfig) -> int:
    """How far (pixels) the post-processing of an object looks beyond it: growth and border filling."""
    return int(math.ceil(config.border_width + (config.grow_distance if config.grows else 0))) + 1


def label_window(
    probs_fg: np.ndarray,
    origin: tuple[int, int],
    image_shape: tuple[int, int],
    core: tuple[slice, slice],
    config: PostprocessConfig,
) -> tuple[np.ndarray, int]:
    """(labels of `core` with global ids, cut objects) from the foreground probabilities of a window.

    probs_fg: (h, w) the window at `origin` (y, x) of an image of `image_shape`; core: the block (image
    coordinates) inside it. Cut objects: objects in the core that come within `context_radius` of an edge
    of the window that is not an edge of the image (their labels may differ from a whole-image run).
    """
    labels = probs_to_labels(probs_fg, config)
    dtype = np.uint32 if image_shape[0] * image_shape[1] < np.iinfo(np.uint32).max else np.uint64
    ids = object_anchors(labels, origin, image_shape[1]).astype(dtype)
    inner = (
        slice(core[0].start - origin[0], core[0].stop - origin[0]),
        slice(core[1].start - origin[1], core[1].stop - origin[1]),
    )
    block = labels[inner]
    r = context_radius(config)
    h, w = labels.shape
    band = np.zeros(labels.shape, bool)
    if origin[0] > 0:
        band[:r] = True
    if origin[1] > 0:
        band[:, :r] = True
    if origin[0] + h < image_shape[0]:
        band[h - r :] = True
    if origin[1] + w < image_shape[1]:
        band[:, w - r :] = True
    cut = np.intersect1d(np.unique(labels[band]), np.unique(block))
    return ids[block], int(np.count_nonzero(cut))


# ------------------------------------------------------------------------------------- OME-Zarr output


def ngff_attributes(
    name: str, axes: str, scale: tuple[float, float] | None, unit: str | None, label: bool
) -> dict[str, Any]:
    """OME-NGFF 0.4 `multiscales` (one level, "0") for axes "YX" or "CYX", with the pixel size when known."""
    entries = []
    for a in axes.lower():
        entry: dict[str, Any] = {"name": a, "type": "channel" if a == "c" else "space"}
        if a != "c" and unit:
            entry["unit"] = unit
        entries.append(entry)
    yx = list(scale) if scale else [1.0, 1.0]
    full = ([1.0] if axes.startswith("C") else []) + [float(v) for v in yx]
    attrs: dict[str, Any] = {
        "multiscales": [
            {
                "version": NGFF_VERSION,
                "name": name,
                "axes": entries,
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": full}]}],
            }
        ]
    }
    if label:
        attrs["image-label"] = {"version": NGFF_VERSION}
    return attrs


def create_ome_zarr(path: Path, shape: tuple[int, ...], dtype, chunks: tuple[int, ...], attrs: dict[str, Any]):
    """A new OME-Zarr (NGFF 0.4: zarr format 2, "/" chunk keys) group at `path` with the empty array "0"."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    group.attrs.update(attrs)
    return group


def input_pixel_size(path: str | Path) -> tuple[tuple[float, float] | None, str | None]:
    """((y, x) pixel size, unit) of an OME-Zarr or TIFF file, (None, None) when it does not say."""
    path = Path(path)
    try:
        if path.suffix.lower() == ZARR_SUFFIX:
            return _zarr_pixel_size(path)
        return _tiff_pixel_size(path)
    except Exception:  # noqa: BLE001 - metadata is optional: a file without readable sizes has none
        return None, None


def _zarr_pixel_size(path: Path) -> tuple[tuple[float, float] | None, str | None]:
    import zarr

    node = zarr.open(str(path), mode="r")
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None, None
    axes = multiscales[0].get("axes", [])
    for transform in multiscales[0]["datasets"][0].get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = transform["scale"]
            unit = axes[-1].get("unit") if axes and isinstance(axes[-1], dict) else None
            return (float(scale[-2]), float(scale[-1])), unit
    return None, None


def _tiff_pixel_size(path: Path) -> tuple[tuple[float, float] | None, str | None]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.ome_metadata:
            import xml.etree.ElementTree as ET

            for element in ET.fromstring(tif.ome_metadata).iter():
                if element.tag.endswith("Pixels") and "PhysicalSizeX" in element.attrib:
                    a = element.attrib
                    size = (float(a.get("PhysicalSizeY", a["PhysicalSizeX"])), float(a["PhysicalSizeX"]))
                    return size, a.get("PhysicalSizeXUnit", "µm")
        tags = tif.pages[0].tags
        if "XResolution" in tags and "YResolution" in tags:
            xn, xd = tags["XResolution"].value
            yn, yd = tags["YResolution"].value
            unit = (tif.imagej_metadata or {}).get("unit")
            if xn and yn and (xn, xd) != (1, 1):
                return (yd / yn, xd / xn), unit.replace("\\u00B5", "µ") if unit else None
    return None, None


# ------------------------------------------------------------------------------------------- the tasks


@dataclass(frozen=True)
class Source:
    """Where a worker reads a single-plane image: `read_input(path, axes)` at `index` (leading T/Z of size 1)."""

    path: Path
    axes: str | None
    index: tuple[int, ...] = ()

    def open(self, in_channels: int):
        image, axes = read_input(self.path, self.axes)
        if self.index:
            image = image[self.index]
        return as_channels_first(image, in_channels)


def _predict_block(
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

    bundle, where = _worker_model(spec, device)
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


def _label_block(
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


def _segment_file(
    spec: ModelSpec,
    device: str,
    path: Path,
    axes: str | None,
    out_dir: Path,
    probabilities: bool,
    config: PostprocessConfig,
    tile_size: int | None,
) -> int:
    """One file segmented as in a single-process run, written under temporary names, then renamed."""
    import dask

    bundle, where = _worker_model(spec, device)
    final = output_paths(path, out_dir, probabilities)
    partial = Outputs(
        final.labels.with_name(".partial-" + final.labels.name),
        final.probs.with_name(".partial-" + final.probs.name) if final.probs else None,
    )
    objects = 0
    with dask.config.set(scheduler="synchronous"):  # a lazy input is read here, not as tasks of the cluster
        image, axes = read_input(path, axes)
        for done in segment_file(bundle, image, axes, partial, postprocess=config, tile_size=tile_size, device=where):
            objects += done.objects
    if final.probs is not None:
        os.replace(partial.probs, final.probs)
    os.replace(partial.labels, final.labels)
    return objects


def _identity(value: Any) -> Any:
    return value


# ---------------------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class BatchProgress:
    """One finished piece of a batch: `done` of `total`, what it was, and objects cut by a block's window."""

    done: int
    total: int
    item: str
    cut_objects: int = 0


@dataclass(frozen=True)
class LargeImage:
    """The plan for one image segmented block by block."""

    source: Source
    shape: tuple[int, int]
    grid: TileGrid
    block: tuple[int, int]
    labels: Path
    probs: Path
    progress: Path  # markers of finished blocks, in a subfolder named after the settings
    settings: str = ""

    @property
    def regions(self) -> list[tuple[slice, slice]]:
        return block_regions(self.shape, self.block)

    def marker(self, kind: str, region: tuple[slice, slice]) -> Path:
        return self.progress / self.settings / f"{kind}-{region[0].start}-{region[1].start}"


def large_output_paths(path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """(labels, probabilities) OME-Zarr outputs of an image segmented block by block."""
    stem, out_dir = base_name(path), Path(out_dir)
    return out_dir / f"{stem}_labels.ome.zarr", out_dir / f"{stem}_probs.ome.zarr"


def is_complete(path: Path) -> bool:
    """Whether the OME-Zarr output at `path` was finished (every block written)."""
    if not path.is_dir():
        return False
    import zarr

    try:
        return bool(zarr.open_group(str(path), mode="r").attrs.get(COMPLETE, False))
    except Exception:  # noqa: BLE001 - an unreadable output is unfinished
        return False


def segment_batch(
    client: Client,
    bundle: ModelBundle,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    block_size: int = DEFAULT_BLOCK,
    margin: int = DEFAULT_MARGIN,
    tile_size: int | None = None,
    device: str = "auto",
    probabilities: bool = False,
    axes: str | None = None,
    postprocess: PostprocessConfig | None = None,
) -> Iterator[BatchProgress]:
    """Segment image files on the cluster of `client`; yields after each finished file or block.

    A single-plane image larger than one block, or any `.zarr`, is segmented block by block into
    `<stem>_labels.ome.zarr` (and `<stem>_probs.ome.zarr`, the foreground probability, kept when
    `probabilities`); other files (and stacks) as whole tasks into `<stem>_labels.tif` like `predict`.
    Finished outputs are skipped, as are the finished blocks of an interrupted run. Stopping is not asking
    for the next event: the remaining tasks are cancelled.
    """
    if margin < 0:
        raise ValueError(f"the margin must be >= 0 pixels, got {margin}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = bundle.postprocess if postprocess is None else postprocess
    spec = ModelSpec.from_bundle(bundle)
    run = uuid.uuid4().hex[:8]
    model = client.submit(_identity, spec, key=f"napari-unet-model-{spec.digest}-{run}", pure=False)
    jobs: dict[Any, _Job] = {}
    label_blocks: dict[Path, int] = {}  # labels left to write, per large image
    plans: dict[Path, LargeImage] = {}
    skipped: list[str] = []
    try:
        for path in map(Path, inputs):
            image, found = read_input(path, axes)
            plan = _plan_large(bundle, path, image, found, axes, out_dir, block_size, tile_size, device)
            if plan is None:
                final = output_paths(path, out_dir, probabilities)
                if final.labels.exists() and (final.probs is None or final.probs.exists()):
                    skipped.append(path.name)
                    continue
                future = client.submit(
                    _segment_file,
                    model,
                    device,
                    path,
                    axes,
                    out_dir,
                    probabilities,
                    config,
                    tile_size,
                    key=f"segment-{path.name}-{run}",
                    pure=False,
                )
                jobs[future] = _Job(path.name)
            elif is_complete(plan.labels):
                skipped.append(path.name)
            else:
                plans[plan.labels] = plan
                label_blocks[plan.labels] = _submit_large(
                    client, model, device, bundle, plan, image, margin, config, probabilities, run, jobs
                )
        total = len(jobs) + len(skipped)
        done = 0
        for name in skipped:
            done += 1
            yield BatchProgress(done, total, f"{name} (already done)")
        for future in as_completed(list(jobs)):
            job = jobs[future]
            if future.status == "error":
                error = future.exception()
                raise RuntimeError(f"segmenting {job.item} failed: {type(error).__name__}: {error}") from error
            cut = 0
            if job.labels is not None:
                cut = int(future.result())
                label_blocks[job.labels] -= 1
                if label_blocks[job.labels] == 0:
                    _finish(plans[job.labels], probabilities)
            done += 1
            yield BatchProgress(done, total, job.item, cut)
    finally:
        unfinished = [f for f in jobs if not f.done()]
        if unfinished:
            client.cancel(unfinished)
        client.cancel([model])


@dataclass(frozen=True)
class _Job:
    """What a future computes: `item` names it; `labels` is the output of a label block, else None."""

    item: str
    labels: Path | None = None


def _plan_large(
    bundle, path: Path, image, found: str, axes, out_dir: Path, block_size: int, tile_size: int | None, device: str
) -> LargeImage | None:
    """The block plan for `path` when it is segmented block by block, else None (a whole-file task)."""
    lead = [i for i, a in enumerate(found) if a in "TZ"]
    if any(image.shape[i] > 1 for i in lead):
        return None
    height, width = image.shape[-2:]
    if path.suffix.lower() != ZARR_SUFFIX and height * width <= block_size**2:
        return None
    if tile_size is None:
        try:
            where = select_device(device)
        except ValueError:  # the device is on the workers, not here: a CPU-sized tile is valid anywhere
            where = torch.device("cpu")
        tile_size = auto_stride(bundle.net, where)
    grid = tile_grid(bundle.net, (height, width), tile_size)
    labels, probs = large_output_paths(path, out_dir)
    return LargeImage(
        Source(path, axes, (0,) * len(lead)),
        (height, width),
        grid,
        block_shape(grid, block_size),
        labels,
        probs,
        out_dir / f".{base_name(path)}.progress",
    )


def _submit_large(
    client,
    model,
    device: str,
    bundle: ModelBundle,
    plan: LargeImage,
    image,
    margin: int,
    config: PostprocessConfig,
    probabilities: bool,
    run: str,
    jobs: dict[Any, _Job],
) -> int:
    """Create (or reopen) the outputs of `plan` and submit its unfinished blocks; returns the label blocks left."""
    import dask

    stamp = {
        "shape": list(plan.shape),
        "block": list(plan.block),
        "stride": list(plan.grid.stride),
        "margin": margin,
        "postprocess": config.to_dict(),
        "model": ModelSpec.from_bundle(bundle).digest,
    }
    plan = replace(plan, settings=hashlib.sha1(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16])
    markers = plan.progress / plan.settings
    if not (markers.is_dir() and plan.labels.is_dir() and plan.probs.is_dir()):
        # new, or begun with other settings: start again (tasks of the old run find their folder gone)
        shutil.rmtree(plan.progress, ignore_errors=True)
        markers.mkdir(parents=True)
        (markers / "settings.json").write_text(json.dumps(stamp, indent=1))
        scale, unit = input_pixel_size(plan.source.path)
        dtype = np.uint32 if plan.shape[0] * plan.shape[1] < np.iinfo(np.uint32).max else np.uint64
        name = base_name(plan.source.path)
        create_ome_zarr(plan.labels, plan.shape, dtype, plan.block, ngff_attributes(name, "YX", scale, unit, True))
        create_ome_zarr(
            plan.probs,
            plan.shape,
            np.float32,
            plan.block,
            ngff_attributes(f"{name} foreground probability", "YX", scale, unit, False),
        )
    plane = image[plan.source.index] if plan.source.index else image
    with dask.config.set(scheduler="synchronous"):  # the percentiles' sample is read here, not by the cluster
        preprocess = bundle.preprocessor(as_channels_first(plane, bundle.net.config.in_channels), "CYX")
    name = plan.source.path.name
    probs_futures = {}
    for region in plan.regions:
        if plan.marker("probs", region).exists():
            continue
        item = f"{name} probabilities {region[0].start},{region[1].start}"
        future = client.submit(
            _predict_block,
            model,
            device,
            plan.source,
            preprocess,
            plan.grid,
            region,
            str(plan.probs / "0"),
            str(plan.marker("probs", region)),
            key=f"{item} {run}",
            pure=False,
        )
        jobs[future] = _Job(item)
        probs_futures[_corner(region)] = (region, future)
    pending = 0
    for region in plan.regions:
        if plan.marker("labels", region).exists():
            continue
        after = [f for r, f in probs_futures.values() if _near(r, region, margin)]
        item = f"{name} labels {region[0].start},{region[1].start}"
        future = client.submit(
            _label_block,
            str(plan.probs / "0"),
            region,
            margin,
            config,
            str(plan.labels / "0"),
            str(plan.marker("labels", region)),
            after,
            key=f"{item} {run}",
            pure=False,
        )
        jobs[future] = _Job(item, plan.labels)
        pending += 1
    if pending == 0:
        _finish(plan, probabilities)
    return pending


def _corner(region: tuple[slice, slice]) -> tuple[int, int]:
    return region[0].start, region[1].start


def _near(a: tuple[slice, slice], b: tuple[slice, slice], margin: int) -> bool:
    """Whether region `a` overlaps region `b` grown by `margin` pixels."""
    return all(sa.start < sb.stop + margin and sb.start - margin < sa.stop for sa, sb in zip(a, b))


def _finish(plan: LargeImage, keep_probs: bool) -> None:
    """Mark the labels complete; drop the probabilities (unless kept) and the progress markers."""
    import zarr

    zarr.open_group(str(plan.labels), mode="r+").attrs[COMPLETE] = True
    if keep_probs:
        zarr.open_group(str(plan.probs), mode="r+").attrs[COMPLETE] = True
    else:
        shutil.rmtree(plan.probs, ignore_errors=True)
    shutil.rmtree(plan.progress, ignore_errors=True)


def segment_files(
    model: str | Path | ModelBundle,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    address: str | None = None,
    workers: int | None = None,
    torch_threads: int | None = None,
    **options: Any,
) -> list[BatchProgress]:
    """`napari-unet predict ... --cluster ADDRESS` / `--workers N` from Python: connect, segment, disconnect.

    model: a model folder or a loaded bundle; inputs: image files (folders are expanded); options: those of
    `segment_batch`. Returns the progress events (their `cut_objects` sum should be 0).
    """
    from .modelfile import load_model
    from .pipeline import list_files

    bundle = model if isinstance(model, ModelBundle) else load_model(model)
    files = [f for path in inputs for f in list_files(path, "input image", zarr=True)]
    with connect(address, workers, torch_threads) as client:
        return list(segment_batch(client, bundle, files, out_dir, **options))
