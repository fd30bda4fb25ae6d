"""The driver: `segment_batch` plans the files and blocks, submits them, and yields as they finish.

A folder of images fans out as one task per file. An image larger than a block (any `.zarr` store, a large
TIFF, memory-mapped or through tifffile's zarr store when compressed) is cut into blocks, in two passes that write OME-Zarr arrays block by block:
probabilities (`tasks.predict_block`), then labels (`tasks.label_block`), each label block after the
probability blocks its margin reaches. Resumable: a block writes a marker file after its data; a rerun skips
marked blocks and finished files (`overwrite` redoes them). A worker killed mid-run loses only unmarked work,
which the scheduler reruns on another worker.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from distributed import Client, as_completed

from ..device import DEVICE_CHOICES, select_device
from ..metadata import PixelSize
from ..modelfile import ModelBundle
from ..ome_zarr import is_zarr_store
from ..pipeline import (
    ZARR_SUFFIX,
    base_name,
    check_distinct_names,
    describe_own_outputs,
    existing_output,
    file_settings,
    input_identity,
    list_inputs,
    output_paths,
    output_settings,
    read_settings,
    replaced_input,
    same_input,
    same_settings,
)
from ..postprocess import PostprocessConfig
from ..scale import check_tta_size
from ..tiling import TileGrid, auto_stride, tile_grid
from .blocks import block_regions, block_shape
from .cluster import ModelSpec, connect
from .omezarr import (
    COMPLETE,
    SETTINGS,
    create_ome_zarr,
    input_pixel_size,
    is_complete,
    large_output_paths,
    ngff_attributes,
    ngff_pixel_size,
    recorded_settings,
)
from .tasks import (
    Source,
    check_channels,
    check_values,
    identity,
    label_block,
    plane_reads,
    predict_block,
    read_lazily,
    segment_whole_file,
)

DEFAULT_BLOCK = 1024  # block side (pixels), rounded up to a multiple of the tile stride
DEFAULT_MARGIN = 128  # pixels of context around a block for the post-processing: larger than the objects


@dataclass(frozen=True)
class BatchProgress:
    """One finished piece of a batch: `done` of `total`, what it was, and objects cut by a block's window (the
    event of an image's last label block also counts those of its blocks an interrupted run finished, read from
    their markers, so that a resumed run reports as many as an uninterrupted one); `skipped`: a file whose
    outputs were already there (a rerun without `overwrite`)."""

    done: int
    total: int
    item: str
    cut_objects: int = 0
    skipped: bool = False


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
    axes: str = "YX"  # the input's canonical axes (`tasks.read_lazily`'s)

    @property
    def regions(self) -> list[tuple[slice, slice]]:
        return block_regions(self.shape, self.block)

    def marker(self, kind: str, region: tuple[slice, slice]) -> Path:
        return self.progress / self.settings / f"{kind}-{region[0].start}-{region[1].start}"


# `segment_batch`'s options that `plan_batch` takes; the others, `segment_plan`'s (`SEGMENT_PLAN_OPTIONS`).
BATCH_PLAN_OPTIONS = ("block_size", "margin", "tile_size", "device", "axes", "tta", "pixel_size")
SEGMENT_PLAN_OPTIONS = ("probabilities", "postprocess", "overwrite", "model_name", "stopped")


@dataclass(frozen=True)
class BatchPlan:
    """What `segment_plan` does with each input, worked out by `plan_batch` before any cluster is involved.

    items: (path, the lazily read image for a large one else None, its `LargeImage` plan else None: a whole
    file). network: the configuration of the network the plan was made for (`UNetConfig.to_dict`): the tile
    grids depend on it, so `segment_plan` refuses a model of another shape. The other fields are the settings
    the plan was made for, which the tasks use too (`pixel_size`: stored in every output instead of the
    input's own; None: each input's own, when its metadata says).
    """

    out_dir: Path
    items: tuple[tuple[Path, Any, LargeImage | None], ...]
    network: dict[str, Any]
    margin: int = DEFAULT_MARGIN
    tile_size: int | None = None
    device: str = "auto"
    axes: str | None = None
    tta: bool = False
    pixel_size: PixelSize | None = None


def goes_by_blocks(path: str | Path, shape: tuple[int, ...], axes: str, block_size: int = DEFAULT_BLOCK) -> bool:
    """Whether an input of `shape` (canonical `axes`, `pipeline.read_input`'s) is segmented block by block: a
    single plane (T and Z of size 1) larger than one block of `block_size`, or any single-plane `.zarr` (or zarr
    array or group by another name, `ome_zarr.is_zarr_store`)."""
    if any(n > 1 for n, a in zip(shape, axes) if a in "TZ"):
        return False
    zarr = Path(path).suffix.lower() == ZARR_SUFFIX or is_zarr_store(path)
    return zarr or shape[-2] * shape[-1] > block_size**2


def plan_batch(
    bundle: ModelBundle,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    block_size: int = DEFAULT_BLOCK,
    margin: int = DEFAULT_MARGIN,
    tile_size: int | None = None,
    device: str = "auto",
    axes: str | None = None,
    tta: bool = False,
    pixel_size: PixelSize | None = None,
) -> BatchPlan:
    """Read every input's shape (`tasks.read_lazily`) and plan it: a whole-file task, or blocks of `block_size`
    with `margin` pixels of context for the post-processing (a single plane larger than one block, or any
    `.zarr`: `goes_by_blocks`). Needs no cluster, so a bad input or option is refused before any worker starts:
    two inputs with one base name (`check_distinct_names`), a block or tile size < 1, a negative margin, an
    unknown device, an unreadable file, channels that the model's channel choice does not turn into the
    network's (`tasks.check_channels`), or with `tta` an input that would go by blocks or whose planes are too
    large for it; then, once every input passed those, the values of each input that goes by blocks: NaN or
    infinite values, or a constant image (`tasks.check_values`: a full read, chunk by chunk, on the driver's
    threads; skipped for an image whose labels are complete, as a rerun finds them). A whole file's values are
    checked by its task, as a single-process run checks them. pixel_size: stored in the outputs instead of each
    input's own. Writes nothing but `out_dir` itself. The plan holds absolute paths (relative ones are taken
    from this process's working directory): a worker on another machine, in another directory, reads and writes
    the same files."""
    _check_options(block_size, margin, tile_size, device)
    check_distinct_names(inputs, out_dir)
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for path in (Path(p).absolute() for p in inputs):
        image, found = read_lazily(path, axes)  # only the shape is read here (a whole file may be read whole)
        check_channels(bundle, path, image, found)
        plan = _plan_large(bundle, path, image, found, axes, out_dir, block_size, tile_size, device)
        if tta:
            _check_tta(path, image, plan, block_size, bundle.net.config.num_classes)
        items.append((path, None if plan is None else image, plan))  # whole files are read again by their task
    for path, image, plan in items:  # the values last: a full read of each image that goes by blocks
        if plan is not None and not is_complete(plan.labels):  # finished: its blocks read every value already
            check_values(path, image)
    network = bundle.net.config.to_dict()
    return BatchPlan(out_dir, tuple(items), network, margin, tile_size, device, axes, tta, pixel_size)


def check_scale(
    bundle: ModelBundle,
    diameter: float | str | None,
    give: str = "an object diameter of {:g} px",
    instead: str = "segment them one by one without workers",
) -> None:
    """Refuse a model with an object diameter unless `diameter` (px: the objects' size in the images; "auto" or
    None: not given) is that diameter. The workers segment every image at its own scale, where `predict` without
    workers rescales it to the model's object diameter (`ModelBundle.scale_factor`); a model without an object
    diameter never rescales, whatever `diameter` says. ValueError: what to give (`give`, formatted with the
    model's diameter) or do `instead`, in the caller's words (the CLI's options, the dock's fields)."""
    model = bundle.object_diameter
    if model is not None and diameter != model:
        raise ValueError(
            f"a batch segments the images at their own scale, but this model expects objects {model:g} px across "
            f"(it was trained at that scale): give {give.format(model)} if the objects are that size, resample the "
            f"images to it first, or {instead} (which rescales)"
        )


def _check_options(block_size: int, margin: int, tile_size: int | None, device: str) -> None:
    """Refuse sizes out of range and a device name that no worker could have, whatever the inputs."""
    if block_size < 1:
        raise ValueError(f"the block size must be >= 1 pixel, got {block_size}")
    if margin < 0:
        raise ValueError(f"the margin must be >= 0 pixels, got {margin}")
    if tile_size is not None and tile_size < 1:
        raise ValueError(f"the tile size must be >= 1 pixel (or None: the largest that fits), got {tile_size}")
    base, _, index = str(device).partition(":")
    if base not in DEVICE_CHOICES or (index and not (base == "cuda" and index.isdigit())):
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)} (optionally 'cuda:N'), got {device!r}")


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
    tta: bool = False,
    pixel_size: PixelSize | None = None,
    overwrite: bool = False,
    model_name: str | None = None,
    stopped: Callable[[], bool] | None = None,
) -> Iterator[BatchProgress]:
    """Segment image files on the cluster of `client`; yields after each finished file or block: `plan_batch`,
    then `segment_plan` (which say what each argument does). A caller that starts a cluster for the batch plans
    first (`plan_batch`, `BATCH_PLAN_OPTIONS`), so that a bad input is refused before the workers start."""
    plan = plan_batch(
        bundle,
        inputs,
        out_dir,
        block_size=block_size,
        margin=margin,
        tile_size=tile_size,
        device=device,
        axes=axes,
        tta=tta,
        pixel_size=pixel_size,
    )
    yield from segment_plan(
        client,
        bundle,
        plan,
        probabilities=probabilities,
        postprocess=postprocess,
        overwrite=overwrite,
        model_name=model_name,
        stopped=stopped,
    )


def segment_plan(
    client: Client,
    bundle: ModelBundle,
    plan: BatchPlan,
    *,
    probabilities: bool = False,
    postprocess: PostprocessConfig | None = None,
    overwrite: bool = False,
    model_name: str | None = None,
    stopped: Callable[[], bool] | None = None,
) -> Iterator[BatchProgress]:
    """Segment the inputs of `plan` (`plan_batch`) on the cluster of `client`; yields after each finished file
    or block.

    A single-plane image larger than one block, or any `.zarr`, is segmented block by block into
    `<stem>_labels.ome.zarr` (and `<stem>_probs.ome.zarr`, the foreground probability, kept when
    `probabilities`); other files (and stacks) as whole tasks into `<stem>_labels.tif` like `predict`, with the
    settings record of `predict`'s outputs (`pipeline.output_settings`, `model_name` naming the model there), so
    that a later single-process `predict` with the same settings skips them.
    Finished outputs (labels, and the probabilities when asked) are skipped (an event with `skipped`), as are
    the finished blocks of an interrupted run; with `overwrite` they are segmented again, from the start. An image
    that goes by blocks whose labels are complete but whose probabilities are asked for and missing gets its
    probabilities only: its labels are kept as they are, never recreated (an interrupted rerun leaves them). The
    outputs record the run's settings (`pipeline.output_settings`; an OME-Zarr's in its attributes, `SETTINGS`):
    a finished output written with other settings, or recording none, is refused with a ValueError before
    anything is submitted, as `predict` refuses it (`overwrite` replaces it).
    Stopping is not asking for the next event: the remaining tasks are cancelled (the finished blocks and files
    stay, for a rerun to resume). A caller that must stop while no task finishes (a GUI's Cancel, all workers busy
    or none at all) gives `stopped`, polled while waiting: once it returns True the generator cancels the remaining
    tasks and ends. postprocess: default the model's. With the plan's
    `tta`, test-time augmentation (`tiling.predict_tta`) of whole files (`plan_batch` refused inputs that go by
    blocks: the mean over the orientations of a block is not the whole image's). A `bundle` whose network
    differs from the one the plan was made for (other tile grids) is refused with a ValueError before anything
    is submitted; other weights or post-processing of the same network are fine. An image with NaN or infinite
    values, or constant, is refused as `predict` refuses it: by blocks, when planning (`plan_batch`), and again,
    should the input have changed since, from the sample read for its percentiles before its blocks are
    submitted and in each window a block reads; a whole file by its task. A task that fails on its input (a
    ValueError or OSError: a corrupt chunk, NaN values) raises a ValueError naming the file; any other failure a
    RuntimeError naming it.
    """
    network = bundle.net.config.to_dict()
    if network != plan.network:
        changed = sorted(
            key for key in network.keys() | plan.network.keys() if network.get(key) != plan.network.get(key)
        )
        raise ValueError(
            f"the batch was planned for another network ({', '.join(changed)} differ): plan it again with this "
            "model (plan_batch)"
        )
    config = bundle.postprocess if postprocess is None else postprocess
    settings = _output_settings(bundle, plan, config, model_name)
    if not overwrite:
        _check_finished(plan, probabilities, settings)
    spec = ModelSpec.from_bundle(bundle)
    run = uuid.uuid4().hex[:8]
    model = client.submit(identity, spec, key=f"napari-unet-model-{spec.digest}-{run}", pure=False)
    jobs: dict[Any, _Job] = {}
    label_blocks: dict[Path, int] = {}  # labels left to write, per large image
    recorded: dict[Path, dict[str, Any]] = {}  # the settings each large image's outputs record (its own input's)
    carried: dict[Path, int] = {}  # objects cut by the label blocks an interrupted run finished, per large image
    plans: dict[Path, LargeImage] = {}
    kept: dict[Path, bool] = {}  # whether a large image's complete labels are kept (only its probabilities missing)
    skipped: list[tuple[str, int]] = []  # (name, objects cut by its blocks in an earlier run)
    try:
        for path, image, large in plan.items:
            own = file_settings(settings, path)  # with the input's identity: a replaced image is not done
            if large is None:
                final = output_paths(path, plan.out_dir, probabilities)
                if not overwrite and final.labels.exists() and (final.probs is None or final.probs.exists()):
                    skipped.append((path.name, 0))
                    continue
                future = client.submit(
                    segment_whole_file,
                    model,
                    plan.device,
                    path,
                    plan.axes,
                    plan.out_dir,
                    probabilities,
                    config,
                    plan.tile_size,
                    plan.tta,
                    plan.pixel_size,
                    own,
                    key=f"segment-{path.name}-{run}",
                    pure=False,
                )
                jobs[future] = _Job(path.name)
            elif not overwrite and is_complete(large.labels) and (not probabilities or is_complete(large.probs)):
                skipped.append((path.name, 0))
            else:
                if overwrite:  # from the start: no block of an earlier run is kept
                    for old in (large.labels, large.probs, large.progress):
                        shutil.rmtree(old, ignore_errors=True)
                # complete labels (of these settings: `_check_finished`) whose probabilities are now asked for are
                # kept, never rewritten: only the probabilities are computed
                keep_labels = not overwrite and is_complete(large.labels)
                plans[large.labels], recorded[large.labels], kept[large.labels] = large, own, keep_labels
                pending, cut = _submit_large(
                    client, model, plan, bundle, large, image, config, probabilities, own, run, jobs, keep_labels
                )
                if pending == 0:  # every block was done by an interrupted run: finished now, nothing submitted
                    skipped.append((path.name, cut))
                label_blocks[large.labels], carried[large.labels] = pending, cut
        total = len(jobs) + len(skipped)
        done = 0
        for name, cut in skipped:
            done += 1
            yield BatchProgress(done, total, f"{name} (already done)", cut, skipped=True)
        for future in _as_finished(client, list(jobs), stopped):
            job = jobs.pop(future)  # released: the workers and the scheduler forget a finished task
            if future.status == "error":
                error = future.exception()
                failure = ValueError if isinstance(error, (ValueError, OSError)) else RuntimeError
                raise failure(f"segmenting {job.item} failed: {type(error).__name__}: {error}") from error
            cut = 0
            if job.labels is not None:
                cut = int(future.result()) if job.cuts else 0
                label_blocks[job.labels] -= 1
                if label_blocks[job.labels] == 0:
                    _finish(plans[job.labels], probabilities, recorded[job.labels], kept[job.labels])
                    cut += carried[job.labels]
            done += 1
            yield BatchProgress(done, total, job.item, cut)
    finally:
        unfinished = [f for f in jobs if not f.done()]
        if unfinished:
            client.cancel(unfinished)
        model.release()  # not cancelled: that would cancel its finished dependents too, already released


def _as_finished(client: Client, futures: list[Any], stopped: Callable[[], bool] | None) -> Iterator[Any]:
    """`futures` (of `client`, which need not be dask's default) as they finish; with `stopped`, polled every 0.05 s
    while none is ready: True ends the iteration, whatever is still running."""
    finished = as_completed(futures, loop=client.loop)
    if stopped is None:
        yield from finished
        return
    while not finished.is_empty() and not stopped():
        if finished.has_ready():
            yield next(finished)
        else:
            time.sleep(0.05)


def _output_settings(
    bundle: ModelBundle, plan: BatchPlan, config: PostprocessConfig, model_name: str | None
) -> dict[str, Any]:
    """The settings the outputs record (a whole file's TIFFs, a large image's OME-Zarr): those of `predict` with
    the options this plan stands for (`pipeline.output_settings`). The images are segmented at their own scale,
    which is --diameter at the model's object diameter, with the model's channel choice and --precision auto (the
    only precision `predict` takes with --workers or --cluster: the workers compute in fp32, which "auto" is on a
    CPU). model_name: how the record names the model (for messages only); None: "(unnamed)"."""
    return output_settings(
        bundle,
        config,
        model=model_name or "(unnamed)",
        diameter=bundle.object_diameter,
        tta=plan.tta,
        axes=plan.axes,
        pixel_size=plan.pixel_size,
    )


def _check_finished(plan: BatchPlan, probabilities: bool, settings: dict[str, Any]) -> None:
    """Refuse, before anything is submitted, a finished output of the plan that was written with other settings,
    or records none (another program's, an earlier version's), or from another version of its input (replaced
    under its name since), as `predict` refuses it: a rerun skips only its own outputs, and --overwrite replaces
    the others."""
    for path, _image, large in plan.items:
        if large is None:
            final = output_paths(path, plan.out_dir, probabilities)
            written = {p: read_settings(p) for p in (final.labels, final.probs) if p is not None and p.exists()}
        else:
            outputs = (large.labels, large.probs) if probabilities else (large.labels,)
            written = {p: recorded_settings(p) for p in outputs if is_complete(p)}
        for output, recorded in written.items():
            if not same_settings(recorded, settings):
                raise ValueError(existing_output(output, recorded, settings))
            if not same_input(recorded, path):
                raise ValueError(replaced_input(output, path))


def _check_tta(path: Path, image, plan: LargeImage | None, block_size: int, classes: int) -> None:
    """Refuse test-time augmentation of an input that goes by blocks, or whose planes are too large for it
    (`scale.check_tta_size`), before anything is submitted; nothing is read."""
    if plan is not None:
        raise ValueError(
            f"{path.name} would be segmented block by block (a single plane larger than one block of {block_size} "
            "px, or a single-plane .zarr): test-time augmentation works on whole files; segment it without "
            "test-time augmentation"
        )
    check_tta_size(image[(0,) * (image.ndim - 2)], 1.0, classes)


@dataclass(frozen=True)
class _Job:
    """What a future computes: `item` names it; `labels`: the labels of the large image whose last block it may
    be (its label blocks; its probability blocks when its complete labels are kept), else None; `cuts`: whether
    it returns the objects it cut (a label block)."""

    item: str
    labels: Path | None = None
    cuts: bool = False


def _plan_large(
    bundle, path: Path, image, found: str, axes, out_dir: Path, block_size: int, tile_size: int | None, device: str
) -> LargeImage | None:
    """The block plan for `path` when it is segmented block by block (`goes_by_blocks`), else None (a whole-file
    task)."""
    if not goes_by_blocks(path, tuple(image.shape), found, block_size):
        return None
    lead = [i for i, a in enumerate(found) if a in "TZ"]
    height, width = image.shape[-2:]
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
        axes=found,
    )


def _submit_large(
    client,
    model,
    batch: BatchPlan,
    bundle: ModelBundle,
    plan: LargeImage,
    image,
    config: PostprocessConfig,
    probabilities: bool,
    settings: dict[str, Any],
    run: str,
    jobs: dict[Any, _Job],
    keep_labels: bool = False,
) -> tuple[int, int]:
    """Create (or reopen) the outputs of `plan` and submit its unfinished blocks; returns the blocks left that
    finish the image (its label blocks) and the objects cut by the label blocks already done (their markers').
    keep_labels: the labels are complete and only the probabilities are missing (a rerun with `probabilities`):
    the labels are neither recreated nor written, only the probability blocks are submitted (those are then the
    blocks that finish the image), so that an interrupted rerun leaves the complete labels as they were."""
    import dask

    device, margin = batch.device, batch.margin
    stamp = {
        "shape": list(plan.shape),
        "block": list(plan.block),
        "stride": list(plan.grid.stride),
        "margin": margin,
        "postprocess": config.to_dict(),
        "model": ModelSpec.from_bundle(bundle).digest,
        "input": input_identity(plan.source.path),  # a replaced image starts again, as one with other settings
        "pixel_size": None if batch.pixel_size is None else batch.pixel_size.to_dict(),  # in the outputs' attributes
    }
    plan = replace(plan, settings=hashlib.sha1(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16])
    markers = plan.progress / plan.settings
    if not (markers.is_dir() and (keep_labels or plan.labels.is_dir()) and plan.probs.is_dir()):
        # new, or begun with other settings: start again (tasks of the old run find their folder gone)
        shutil.rmtree(plan.progress, ignore_errors=True)
        markers.mkdir(parents=True)
        (markers / "settings.json").write_text(json.dumps(stamp, indent=1))
        scale, unit = input_pixel_size(plan.source.path)
        if batch.pixel_size is not None:
            scale, unit = ngff_pixel_size(batch.pixel_size)
        dtype = np.uint32 if plan.shape[0] * plan.shape[1] < np.iinfo(np.uint32).max else np.uint64
        name = base_name(plan.source.path)
        if not keep_labels:
            create_ome_zarr(plan.labels, plan.shape, dtype, plan.block, ngff_attributes(name, "YX", scale, unit, True))
        create_ome_zarr(
            plan.probs,
            plan.shape,
            np.float32,
            plan.block,
            ngff_attributes(f"{name} foreground probability", "YX", scale, unit, False),
        )
    # the percentiles' sample is read here, not by the cluster; an image with NaN values, or constant, is refused
    with dask.config.set(scheduler="synchronous"):
        sample = plane_reads(bundle, plan.source.path, image, plan.axes, plan.source.index).sample()
    preprocess = bundle.preprocessor(sample, "CYX")  # the percentiles of the sample are those of the whole image
    name = plan.source.path.name
    # keys "napari-unet-<pass>-<run>-<image>-<y>-<x>": dask groups tasks by the words before the first token, so
    # all blocks share one task prefix (a key per block as its own prefix grows the workers' profiles and the
    # scheduler's per-prefix state with every block: ~0.1 MB per task on each worker)
    image_id = hashlib.sha1(str(plan.labels).encode()).hexdigest()[:8]
    probs_futures = {}
    for region in plan.regions:
        if plan.marker("probs", region).exists():
            continue
        item = f"{name} probabilities {region[0].start},{region[1].start}"
        future = client.submit(
            predict_block,
            model,
            device,
            plan.source,
            preprocess,
            plan.grid,
            region,
            str(plan.probs / "0"),
            str(plan.marker("probs", region)),
            key=f"napari-unet-probabilities-{run}-{image_id}-{region[0].start}-{region[1].start}",
            pure=False,
        )
        jobs[future] = _Job(item, plan.labels if keep_labels else None)
        probs_futures[_corner(region)] = (region, future)
    if keep_labels:
        pending = len(probs_futures)
        if pending == 0:
            _finish(plan, probabilities, settings, keep_labels)
        return pending, 0
    pending, cut = 0, 0
    for region in plan.regions:
        if plan.marker("labels", region).exists():
            cut += _marked_cut(plan.marker("labels", region))
            continue
        after = [f for r, f in probs_futures.values() if _near(r, region, margin)]
        item = f"{name} labels {region[0].start},{region[1].start}"
        future = client.submit(
            label_block,
            str(plan.probs / "0"),
            region,
            margin,
            config,
            str(plan.labels / "0"),
            str(plan.marker("labels", region)),
            after,
            key=f"napari-unet-labels-{run}-{image_id}-{region[0].start}-{region[1].start}",
            pure=False,
        )
        jobs[future] = _Job(item, plan.labels, cuts=True)
        pending += 1
    if pending == 0:
        _finish(plan, probabilities, settings)
    return pending, cut


def _marked_cut(marker: Path) -> int:
    """The objects cut by the label block of `marker` (`tasks.label_block` writes them there); 0 if unreadable."""
    try:
        return int(json.loads(marker.read_text()).get("cut_objects", 0))
    except (OSError, ValueError, AttributeError):
        return 0


def _corner(region: tuple[slice, slice]) -> tuple[int, int]:
    return region[0].start, region[1].start


def _near(a: tuple[slice, slice], b: tuple[slice, slice], margin: int) -> bool:
    """Whether region `a` overlaps region `b` grown by `margin` pixels."""
    return all(sa.start < sb.stop + margin and sb.start - margin < sa.stop for sa, sb in zip(a, b))


def _finish(plan: LargeImage, keep_probs: bool, settings: dict[str, Any], kept_labels: bool = False) -> None:
    """Mark the labels complete, with the `settings` they were written with (unless `kept_labels`: complete
    already, left as they are); drop the probabilities (unless kept, marked the same) and the progress markers."""
    import zarr

    if not kept_labels:
        zarr.open_group(str(plan.labels), mode="r+").attrs.update({SETTINGS: settings, COMPLETE: True})
    if keep_probs:
        zarr.open_group(str(plan.probs), mode="r+").attrs.update({SETTINGS: settings, COMPLETE: True})
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

    model: a model folder or a loaded bundle; inputs: image files (folders are expanded, `input_files`: the
    outputs of an earlier run written beside their inputs are left out, with a warning); options: those of
    `segment_batch`, and `diameter` for a model with an object diameter (`check_scale`: `predict`'s --diameter).
    Returns the progress events (their `cut_objects` sum should be 0).
    """
    from ..modelfile import load_model

    if isinstance(model, ModelBundle):
        bundle = model
    else:  # the outputs' settings name the model as given (`segment_plan`'s model_name)
        bundle, options = load_model(model), {"model_name": str(model)} | options
    plan, rest = plan_with(bundle, input_files(inputs), out_dir, options)  # a bad input is refused before workers
    with connect(address, workers, torch_threads) as client:
        return list(segment_plan(client, bundle, plan, **rest))


def input_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The files and `.zarr` stores of `inputs` (folders expanded) to segment: `predict`'s outputs of another of
    them (an earlier run's results written into an input folder) are left out with a warning that names them, as
    `predict` notes them (`pipeline.list_inputs`)."""
    files, own = list_inputs(inputs)
    if own:
        warnings.warn(describe_own_outputs(own), stacklevel=3)
    return files


def plan_with(
    bundle: ModelBundle, inputs: Sequence[str | Path], out_dir: str | Path, options: dict[str, Any]
) -> tuple[BatchPlan, dict[str, Any]]:
    """`plan_batch` with those of `segment_batch`'s `options` it takes; returns the plan and the others, for
    `segment_plan`. The option `diameter` (px: the objects' size in the images; default None, not given) is checked
    against the model (`check_scale`). An option none of them takes, or a model that would need rescaling, is
    refused here, before any cluster starts."""
    options = dict(options)
    diameter = options.pop("diameter", None)
    unknown = sorted(set(options) - set(BATCH_PLAN_OPTIONS) - set(SEGMENT_PLAN_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown batch option(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(BATCH_PLAN_OPTIONS + SEGMENT_PLAN_OPTIONS + ('diameter',))}"
        )
    check_scale(bundle, diameter)
    planning = {k: v for k, v in options.items() if k in BATCH_PLAN_OPTIONS}
    rest = {k: v for k, v in options.items() if k in SEGMENT_PLAN_OPTIONS}
    return plan_batch(bundle, inputs, out_dir, **planning), rest
