"""Segmentation on dask.distributed equals the single-process run: probabilities bit for bit, labels up to
renumbering, also after an interruption and with a worker killed mid-run."""

from __future__ import annotations

import inspect
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

pytest.importorskip("distributed", reason="needs dask.distributed: pip install 'napari-unet-2015[distributed]'")
zarr = pytest.importorskip("zarr")

from napari_unet import distributed as dist  # noqa: E402
from napari_unet.channels import ChannelChoice  # noqa: E402
from napari_unet.io import write_tiff  # noqa: E402
from napari_unet.model import UNet, UNetConfig  # noqa: E402
from napari_unet.modelfile import ModelBundle, Normalization  # noqa: E402
from napari_unet.pipeline import output_paths, read_input, segment_file  # noqa: E402
from napari_unet.postprocess import PostprocessConfig, probs_to_labels  # noqa: E402
from napari_unet.synthetic import make_cells  # noqa: E402
from napari_unet.tiling import tile_grid  # noqa: E402

TILE, BLOCK, MARGIN = 32, 60, 64  # 300 x 330 pixels: tiles of 30, blocks of 60, 5 x 6 = 30 blocks
BLOCKS = 30
SHAPE = (300, 330)


def same_up_to_renumbering(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the label images `a` and `b` are equal up to a one-to-one renumbering (0 stays 0)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel().astype(np.int64), b.ravel().astype(np.int64)]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.fixture(scope="module")
def client():
    """Two local worker processes with one torch thread each (the reference below uses one thread too)."""
    with dist.connect(workers=2, torch_threads=1) as client:
        yield client


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    torch.manual_seed(0)
    # an untrained tiny net: its probability follows the cells; 0.7 gives ~40 objects of at most ~55 pixels
    return ModelBundle(UNet(UNetConfig(depth=2, base_channels=4)), postprocess=PostprocessConfig(threshold=0.7))


@pytest.fixture(scope="module")
def big_zarr(tmp_path_factory) -> Path:
    """A single-plane OME-Zarr image with a pixel size of 0.5 micrometre."""
    image, _ = make_cells(SHAPE, seed=3)
    path = tmp_path_factory.mktemp("input") / "big.zarr"
    attrs = dist.ngff_attributes("big", "YX", (0.5, 0.5), "micrometer", label=False)
    dist.create_ome_zarr(path, SHAPE, np.uint16, (128, 128), attrs)["0"][:] = (image * 1000).astype(np.uint16)
    return path


def single_process_probs(bundle, image) -> np.ndarray:
    """Foreground probabilities of the single-process tiled prediction, with one torch thread like the workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return bundle.predict(image, tile_size=TILE, device="cpu")[1]
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(bundle, big_zarr) -> tuple[np.ndarray, np.ndarray]:
    """(foreground probabilities, labels) of the single-process run, with one torch thread like the workers."""
    image, _ = read_input(big_zarr)
    probs = single_process_probs(bundle, image)
    return probs, probs_to_labels(probs, bundle.postprocess)


def batch(client, bundle, inputs, out, **kwargs):
    """`segment_batch` with this module's blocks, tiles and device (probabilities asked for unless said)."""
    options = dict(block_size=BLOCK, margin=MARGIN, tile_size=TILE, device="cpu", probabilities=True)
    return dist.segment_batch(client, bundle, inputs, out, **(options | kwargs))


def run(client, bundle, inputs, out, **kwargs) -> list[dist.BatchProgress]:
    return list(batch(client, bundle, inputs, out, **kwargs))


def read_outputs(out: Path, stem: str = "big") -> tuple[np.ndarray, np.ndarray]:
    labels = zarr.open_group(str(out / f"{stem}_labels.ome.zarr"), mode="r")["0"][:]
    probs = zarr.open_group(str(out / f"{stem}_probs.ome.zarr"), mode="r")["0"][:]
    return probs, labels


# ---------------------------------------------------------------------------------- blocks, without a cluster


def test_blocks_are_whole_tiles_and_cover_the_grid_once():
    net = UNet(UNetConfig(depth=3, base_channels=4))
    grid = tile_grid(net, (250, 333), 40)
    block = dist.block_shape(grid, 100)
    assert all(b % s == 0 and b >= 100 for b, s in zip(block, grid.stride))
    seen = [t.index for region in dist.block_regions(grid.shape, block) for t in dist.tiles_in(grid, region)]
    assert sorted(seen) == list(range(len(grid)))
    with pytest.raises(ValueError, match="block size must be >= 1"):
        dist.block_shape(grid, 0)


def cell_probabilities(shape=(256, 300), seed=5) -> np.ndarray:
    """A smooth foreground probability with touching cells (borders of 1 pixel between them)."""
    _, labels = make_cells(shape, seed=seed)
    inner = labels * (ndimage.maximum_filter(labels, 3) == ndimage.minimum_filter(np.where(labels, labels, 1 << 30), 3))
    return ndimage.gaussian_filter((inner > 0).astype(np.float32), 0.7)


def labels_by_blocks(probs: np.ndarray, block: int, margin: int, config: PostprocessConfig) -> tuple[np.ndarray, int]:
    out, cut = np.zeros(probs.shape, np.uint32), 0
    for region in dist.block_regions(probs.shape, (block, block)):
        window = tuple(slice(max(0, r.start - margin), min(n, r.stop + margin)) for r, n in zip(region, probs.shape))
        labels, n_cut = dist.label_window(
            probs[window], (window[0].start, window[1].start), probs.shape, region, config
        )
        out[region] = labels
        cut += n_cut
    return out, cut


@pytest.mark.parametrize(
    "config",
    [
        PostprocessConfig(),
        PostprocessConfig(watershed=True, min_size=30),
        PostprocessConfig(grow_threshold=0.2, border_width=2, fill_holes=False),
        PostprocessConfig(threshold=0.2, seed_threshold=0.9, watershed=True, watershed_h=2.0),
    ],
    ids=["default", "watershed", "growth", "cores"],
)
def test_labels_by_blocks_equal_the_whole_image_up_to_renumbering(config):
    probs = cell_probabilities()
    if config.seeds_from_cores:  # several cores in one component: the seeds, not the mask, part the cells
        components = ndimage.label(probs > config.threshold)[0]
        cores = ndimage.label(probs > config.seed_threshold)[0]
        assert any(np.unique(cores[(components == c) & (cores > 0)]).size > 1 for c in range(1, components.max() + 1))
    whole = probs_to_labels(probs, config)
    blocks, cut = labels_by_blocks(probs, 64, 64, config)
    assert cut == 0
    crossing = {int(i) for i in np.unique(whole[63:65]) if i} | {int(i) for i in np.unique(whole[:, 63:65]) if i}
    assert len(crossing) > 5  # objects do cross block borders
    assert same_up_to_renumbering(blocks, whole)


def test_flooded_cells_by_blocks_are_the_whole_image_s_but_for_where_lines_cross_flat_stretches(membrane_mask):
    """Cells that tile the image, flooded (`PostprocessConfig.flood`): each cell gets one id across blocks and
    no two cells share one (but those reported cut), although on a flat stretch of probability a line may run a
    pixel apart from the whole-image run (the flood's queue order depends on the window)."""
    probs = ndimage.gaussian_filter(membrane_mask((256, 300), 90, seed=2).astype(np.float32), 0.7)
    config = PostprocessConfig(threshold=0.6, border_width=0, flood=True)
    whole = probs_to_labels(probs, config)
    blocks, cut = labels_by_blocks(probs, 64, 64, config)
    both = (whole > 0) & (blocks > 0)
    pairs = np.unique(np.stack([whole[both], blocks[both].astype(np.int64)]), axis=1)
    split = np.count_nonzero(np.bincount(pairs[0]) > 1)
    shared = np.count_nonzero(np.unique(pairs[1], return_counts=True)[1] > 1)
    assert whole.max() > 80 and cut <= 2 and split <= cut and shared <= cut
    assert np.mean((whole == 0) != (blocks == 0)) < 0.02  # lines a pixel apart at most here and there


def test_objects_larger_than_the_margin_are_reported():
    probs = cell_probabilities()
    _, cut = labels_by_blocks(probs, 64, 3, PostprocessConfig())
    assert cut > 0


def test_an_object_that_a_block_edge_cuts_below_min_size_is_reported_not_dropped_silently():
    """A 24-pixel nucleus across the border y=64 with no margin: each block sees 12 pixels, fewer than min_size
    (16), and removed them: the whole image has it, the blocks had not, and no object was reported cut."""
    probs = np.zeros((128, 128), np.float32)
    probs[61:67, 20:24] = 0.9  # across the border of the blocks at y = 64
    probs[100:106, 100:104] = 0.9  # inside a block
    probs[30:32, 40:42] = 0.9  # debris, too small anywhere, far from any block edge: not a cut object
    whole = probs_to_labels(probs, PostprocessConfig())
    assert whole.max() == 2
    blocks, cut = labels_by_blocks(probs, 64, 0, PostprocessConfig())
    assert len(np.unique(blocks)) - 1 == 1 and cut == 2  # the nucleus is gone: both its halves are reported
    for margin in (1, 2):  # its halves are kept, as two objects: reported too
        blocks, cut = labels_by_blocks(probs, 64, margin, PostprocessConfig())
        assert not same_up_to_renumbering(blocks, whole) and cut > 0
    blocks, cut = labels_by_blocks(probs, 64, 16, PostprocessConfig())  # a margin larger than the objects: exact
    assert cut == 0 and same_up_to_renumbering(blocks, whole)


def test_object_ids_are_the_first_pixel_in_raster_order():
    labels = np.array([[0, 2, 2], [1, 1, 0]])
    assert dist.object_anchors(labels, (10, 20), width=100).tolist() == [0, 11 * 100 + 20 + 1, 10 * 100 + 21 + 1]


def test_connect_needs_an_address_or_a_number_of_workers():
    with pytest.raises(ValueError, match="either a scheduler address or a number of local workers"):
        with dist.connect():
            pass
    with pytest.raises(ValueError, match="must be >= 1"):
        with dist.connect(workers=0):
            pass


def test_torch_threads_default_to_the_cores_per_dask_thread():
    class Worker:
        class state:
            nthreads = 2

    threads = torch.get_num_threads()
    try:
        dist.TorchThreads(3).setup(Worker())
        assert torch.get_num_threads() == 3
        dist.TorchThreads().setup(Worker())
        assert torch.get_num_threads() == max(1, len(os.sched_getaffinity(0)) // 2)
    finally:
        torch.set_num_threads(threads)


def test_the_model_travels_whole():
    net = UNet(UNetConfig(depth=2, base_channels=4))
    bundle = ModelBundle(
        net,
        Normalization(2.0, 99.0, invert="auto"),
        PostprocessConfig(threshold=0.6),
        channels=ChannelChoice(grey=True),
    )
    spec = dist.ModelSpec.from_bundle(bundle)
    built = spec.build()
    assert built.normalization == bundle.normalization and built.postprocess == bundle.postprocess
    assert built.channels == bundle.channels  # the channel choice too: an RGB image is made grey on the workers
    assert all(torch.equal(a, b) for a, b in zip(built.net.state_dict().values(), net.state_dict().values()))
    plain = dist.ModelSpec.from_bundle(replace(bundle, normalization=Normalization(2.0, 99.0)))
    assert plain.digest != spec.digest  # a changed setting is another model (a rerun starts again)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM, and ru_maxrss kept across exec, are Linux's")
def test_peak_rss_is_the_worker_s_own_not_that_of_the_process_that_started_it():
    import resource
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    held = np.ones(1 << 27)  # 1 GiB in the starting process while the child starts, as a client's data would be
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # how a LocalCluster's nanny starts one
        own = pool.submit(dist.peak_rss).result(timeout=300)
        inherited = pool.submit(resource.getrusage, resource.RUSAGE_SELF).result(timeout=300).ru_maxrss * 1024
    assert held.sum() == 1 << 27
    assert inherited >= 1 << 30  # ru_maxrss starts at the starting process's peak: not a worker's memory
    assert own < 1 << 30  # the child's own peak (python, numpy, torch imported)


def test_pixel_size_of_tiffs_and_ome_zarr(tmp_path, big_zarr):
    import tifffile

    tifffile.imwrite(
        tmp_path / "a.tif",
        np.zeros((8, 8), np.uint8),
        imagej=True,
        resolution=(1 / 0.3, 1 / 0.2),
        metadata={"unit": "um"},
    )
    size, unit = dist.input_pixel_size(tmp_path / "a.tif")
    assert np.allclose(size, (0.2, 0.3)) and unit == "micrometer"  # NGFF's (UDUNITS) name, as write_ome_zarr's
    metadata = {"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "µm"}
    tifffile.imwrite(tmp_path / "c.ome.tif", np.zeros((8, 8), np.uint8), metadata=metadata)
    assert dist.input_pixel_size(tmp_path / "c.ome.tif") == ((0.5, 0.5), "micrometer")
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((8, 8), np.uint8))
    assert dist.input_pixel_size(tmp_path / "b.tif") == (None, None)
    assert dist.input_pixel_size(big_zarr) == ((0.5, 0.5), "micrometer")


# ------------------------------------------------------------------------------------ on a LocalCluster


def test_the_batch_s_client_is_not_dask_s_default_scheduler(client):
    """A LocalCluster's client became the process's default scheduler: napari's dask-backed layers (a lazily
    read image on screen) were computed on the batch's workers while it ran, and after it."""
    import dask.array as da
    from distributed import default_client

    where = da.ones((64, 64), chunks=32).map_blocks(lambda b: b * 0 + os.getpid(), dtype=np.int64).max().compute()
    assert where == os.getpid()
    with pytest.raises(ValueError, match="No clients found"):
        default_client()


def test_a_stopped_batch_ends_at_once_while_no_task_can_run(bundle, tmp_path):
    """`stopped` ends the batch while it waits for tasks that no worker runs (a GUI's Cancel): the generator
    returns without an event and cancels its tasks, where it waited in `as_completed` for ever."""
    import threading
    import time

    from distributed import Client, LocalCluster

    write_tiff(tmp_path / "a.tif", (make_cells((60, 50), seed=1)[0] * 1000).astype(np.uint16), "YX")
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster, set_as_default=False) as client:
            polls, events = [], []

            def stopped() -> bool:  # True from the 6th poll on
                polls.append(1)
                return len(polls) > 5

            def batch() -> None:
                events.extend(run(client, bundle, [tmp_path / "a.tif"], tmp_path / "out", stopped=stopped))

            thread = threading.Thread(target=batch, daemon=True)
            thread.start()
            thread.join(30)
            assert not thread.is_alive() and len(polls) == 6 and events == []
            deadline = time.monotonic() + 10
            while cluster.scheduler.tasks and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not cluster.scheduler.tasks  # cancelled and released
    assert not (tmp_path / "out" / "a_labels.tif").exists()


def test_large_zarr_equals_single_process(client, bundle, big_zarr, reference, tmp_path):
    events = run(client, bundle, [big_zarr], tmp_path)
    assert len(events) == 2 * BLOCKS and events[-1].done == events[-1].total == 2 * BLOCKS
    assert sum(e.cut_objects for e in events) == 0
    probs, labels = read_outputs(tmp_path)
    assert np.array_equal(probs, reference[0])  # bit for bit in fp32
    crossing = {int(i) for i in np.unique(labels[59:61]) if i} | {int(i) for i in np.unique(labels[:, 59:61]) if i}
    assert crossing and same_up_to_renumbering(labels, reference[1])
    group = zarr.open_group(str(tmp_path / "big_labels.ome.zarr"), mode="r")
    assert group.attrs[dist.COMPLETE] and group.attrs["image-label"]["version"] == "0.4"
    multiscale = group.attrs["multiscales"][0]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    assert [a["unit"] for a in multiscale["axes"]] == ["micrometer", "micrometer"]
    digest = dist.ModelSpec.from_bundle(bundle).digest
    builds = client.run(dist.worker_model_builds)
    assert all(b.count(digest) <= 1 for b in builds.values()) and any(digest in b for b in builds.values())
    again = run(client, bundle, [big_zarr], tmp_path)
    assert [e.item for e in again] == ["big.zarr (already done)"]


def test_an_interrupted_run_resumes_where_it_stopped(client, bundle, big_zarr, reference, tmp_path):
    stream = dist.segment_batch(
        client, bundle, [big_zarr], tmp_path, block_size=BLOCK, margin=MARGIN, tile_size=TILE, device="cpu"
    )
    first = [next(stream) for _ in range(10)]
    stream.close()  # stopping: the other tasks are cancelled
    assert not dist.is_complete(tmp_path / "big_labels.ome.zarr")
    rest = run(client, bundle, [big_zarr], tmp_path, probabilities=False)
    assert len(first) + len(rest) <= 2 * BLOCKS + 2  # at most the blocks in flight at the stop run twice
    assert len(rest) < 2 * BLOCKS
    labels = zarr.open_group(str(tmp_path / "big_labels.ome.zarr"), mode="r")["0"][:]
    assert same_up_to_renumbering(labels, reference[1])
    assert not (tmp_path / "big_probs.ome.zarr").exists()  # not asked for: removed at the end
    assert not any(p.name.endswith(".progress") for p in tmp_path.iterdir())


def test_a_killed_worker_is_replaced_and_the_output_is_complete(client, bundle, big_zarr, reference, tmp_path):
    stream = batch(client, bundle, [big_zarr], tmp_path)
    events, killed = [], False
    for event in stream:
        events.append(event)
        if len(events) == 4:
            pids = client.run(os.getpid)
            os.kill(next(iter(pids.values())), signal.SIGKILL)
            killed = True
    assert killed and len(events) == 2 * BLOCKS
    probs, labels = read_outputs(tmp_path)
    assert dist.is_complete(tmp_path / "big_labels.ome.zarr")
    assert np.array_equal(probs, reference[0])
    assert same_up_to_renumbering(labels, reference[1])
    client.wait_for_workers(2, timeout=600)  # the nanny restarts the killed one (slow on a loaded machine)


def test_files_fan_out_as_tasks_and_large_tiffs_go_by_blocks(client, bundle, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    small = [make_cells((60, 50), seed=s)[0] for s in (1, 2)]
    for i, image in enumerate(small):
        write_tiff(folder / f"cells_{i}.tif", (image * 1000).astype(np.uint16), "YX")
    stack = np.stack([make_cells((40, 48), seed=s)[0] for s in (3, 4)])
    write_tiff(folder / "stack.tif", (stack * 1000).astype(np.uint16), "ZYX")
    write_tiff(folder / "large.tif", (make_cells((150, 140), seed=7)[0] * 1000).astype(np.uint16), "YX")
    inputs = sorted(folder.iterdir())
    events = run(client, bundle, inputs, tmp_path / "out")
    assert len(events) == 3 + 2 * 6  # three whole files, the large one in 3 x 2 blocks of 60 x 84
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for path in inputs[:2] + inputs[3:]:
            image, axes = read_input(path)
            expected = output_paths(path, tmp_path / "single", probabilities=True)
            list(segment_file(bundle, image, axes, expected, tile_size=TILE, device="cpu"))
            got = output_paths(path, tmp_path / "out", probabilities=True)
            assert np.array_equal(read_input(got.labels)[0], read_input(expected.labels)[0])
            assert np.array_equal(read_input(got.probs)[0], read_input(expected.probs)[0])
        large, _ = read_input(inputs[2])
        probs = bundle.predict(np.asarray(large), tile_size=TILE, device="cpu")[1]
    finally:
        torch.set_num_threads(threads)
    got_probs, got_labels = read_outputs(tmp_path / "out", "large")
    assert np.array_equal(got_probs, probs)
    assert same_up_to_renumbering(got_labels, probs_to_labels(probs, bundle.postprocess))
    again = run(client, bundle, inputs, tmp_path / "out")
    assert all(e.item.endswith("(already done)") for e in again) and len(again) == 4


def test_whole_files_keep_the_z_step_and_frame_interval(client, bundle, tmp_path):
    """A stack segmented as one task (`tasks.segment_whole_file`) keeps its pixel size, Z step and frame interval
    as a single-process `predict` does (it kept the pixel size only); a given pixel size takes the Z step in its
    unit."""
    from napari_unet.metadata import PixelSize, StackSpacing, read_pixel_size, read_spacing
    from napari_unet.ome_zarr import write_ome_zarr

    size, spacing = PixelSize(0.5, 0.5, "um"), StackSpacing(z=2.0, t=30.0)
    stack = np.stack([make_cells((40, 48), seed=s)[0] for s in (3, 4, 5, 6)]).reshape(2, 2, 40, 48)
    write_tiff(tmp_path / "stack.tif", (stack * 1000).astype(np.uint16), "TZYX", pixel_size=size, spacing=spacing)
    assert len(run(client, bundle, [tmp_path / "stack.tif"], tmp_path / "out")) == 1
    got = output_paths(tmp_path / "stack.tif", tmp_path / "out", probabilities=True)
    for path in (got.labels, got.probs):
        assert read_input(path)[1] == "TZYX"
        assert read_pixel_size(path) == size and read_spacing(path, size) == spacing, path.name
    nm = PixelSize(500.0, 500.0, "nm")
    run(client, bundle, [tmp_path / "stack.tif"], tmp_path / "nm", pixel_size=nm, probabilities=False)
    labels = output_paths(tmp_path / "stack.tif", tmp_path / "nm").labels
    assert read_pixel_size(labels) == nm and read_spacing(labels, nm) == StackSpacing(z=2000.0, t=30.0)
    # an OME-Zarr stack: its z and t scales (`ome_zarr.write_ome_zarr`), read back by the task
    zarr_stack = write_ome_zarr(
        tmp_path / "zarr_stack.ome.zarr", (stack * 1000).astype(np.uint16), "TZYX", size, spacing
    )
    run(client, bundle, [zarr_stack], tmp_path / "from_zarr", probabilities=False)
    labels = output_paths(zarr_stack, tmp_path / "from_zarr").labels
    assert read_pixel_size(labels) == size and read_spacing(labels, size) == spacing


def test_whole_files_get_test_time_augmentation_and_blocks_are_refused_it(client, bundle, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        write_tiff(folder / f"cells_{i}.tif", (make_cells((60, 50), seed=10 + i)[0] * 1000).astype(np.uint16), "YX")
    inputs = sorted(folder.iterdir())
    events = run(client, bundle, inputs, tmp_path / "out", tta=True)
    assert len(events) == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for path in inputs:
            image, axes = read_input(path)
            expected = output_paths(path, tmp_path / "single", probabilities=True)
            list(segment_file(bundle, image, axes, expected, tile_size=TILE, device="cpu", tta=True))
            got = output_paths(path, tmp_path / "out", probabilities=True)
            assert np.array_equal(read_input(got.probs)[0], read_input(expected.probs)[0])
            assert np.array_equal(read_input(got.labels)[0], read_input(expected.labels)[0])
            plain = output_paths(path, tmp_path / "plain", probabilities=True)
            list(segment_file(bundle, image, axes, plain, tile_size=TILE, device="cpu"))
            assert not np.array_equal(read_input(got.probs)[0], read_input(plain.probs)[0])
    finally:
        torch.set_num_threads(threads)
    write_tiff(folder / "large.tif", (make_cells((150, 140), seed=7)[0] * 1000).astype(np.uint16), "YX")
    with pytest.raises(ValueError, match="large.tif would be segmented block by block.*test-time augmentation"):
        run(client, bundle, sorted(folder.iterdir()), tmp_path / "refused", tta=True)
    assert not list((tmp_path / "refused").iterdir())  # refused before anything was submitted


def test_whole_files_too_large_for_test_time_augmentation_are_refused_before_any_task(
    client, bundle, tmp_path, monkeypatch
):
    write_tiff(tmp_path / "cells.tif", (make_cells((60, 50), seed=1)[0] * 1000).astype(np.uint16), "YX")
    monkeypatch.setattr("napari_unet.scale.MAX_RESCALE_BYTES", 1000)  # so that a 60 x 50 plane is "too large"
    with pytest.raises(ValueError, match="test-time augmentation holds"):
        run(client, bundle, [tmp_path / "cells.tif"], tmp_path / "out", tta=True)
    assert not list((tmp_path / "out").iterdir())
    assert len(run(client, bundle, [tmp_path / "cells.tif"], tmp_path / "out")) == 1  # without it: segmented


def test_bad_inputs_are_refused_before_any_worker_starts(bundle, big_zarr, tmp_path, monkeypatch, capsys):
    """`predict --workers`, `segment_files` and the Batch dock's job plan every input (`plan_batch`) before they
    connect: a large image with --tta, a negative margin, are refused without starting a cluster."""
    from napari_unet.__main__ import main
    from napari_unet.jobs.batch import run_batch
    from napari_unet.modelfile import save_model

    started = []

    def connect(*args, **kwargs):  # a cluster that must not start
        started.append(args)
        raise AssertionError("a cluster was started")

    monkeypatch.setattr("napari_unet.distributed.connect", connect)
    monkeypatch.setattr("napari_unet.distributed.batch.connect", connect)
    model = save_model(tmp_path / "cells.model", bundle)
    out = tmp_path / "out"
    assert main(["predict", str(model), str(big_zarr), "--out", str(out), "--workers", "2", "--tta"]) == 2
    assert "test-time augmentation works on whole files" in capsys.readouterr().err
    with pytest.raises(ValueError, match="test-time augmentation works on whole files"):
        dist.segment_files(model, [big_zarr], out, workers=2, tta=True)
    with pytest.raises(ValueError, match="the margin must be >= 0 pixels"):
        next(run_batch(bundle, [big_zarr], out, workers=2, margin=-1))
    scaled = replace(bundle, object_diameter=20.0)  # segmented at the images' own scale: refused, as predict does
    with pytest.raises(ValueError, match="expects objects 20 px across .*: give an object diameter of 20 px"):
        next(run_batch(scaled, [big_zarr], out, workers=2))
    with pytest.raises(ValueError, match="expects objects 20 px across"):
        dist.segment_files(scaled, [big_zarr], out, workers=2, diameter=25.0)
    scaled_model = save_model(tmp_path / "scaled.model", scaled)
    assert main(["predict", str(scaled_model), str(big_zarr), "--out", str(out), "--workers", "2"]) == 2
    assert "give --diameter 20 if the objects are that size" in capsys.readouterr().err  # the CLI's words
    dist.check_scale(scaled, 20.0)  # the objects are the model's size: no rescaling needed
    dist.check_scale(bundle, "auto")  # a model without an object diameter never rescales
    assert not started and not list(out.iterdir())
    plan = dist.plan_batch(bundle, [big_zarr], out, block_size=BLOCK, margin=MARGIN, tile_size=TILE, device="cpu")
    ((path, image, large),) = plan.items
    assert path == big_zarr and image is not None and large is not None and plan.margin == MARGIN
    assert large.labels == out / "big_labels.ome.zarr" and not large.labels.exists()  # planned, not written
    keyword_only = inspect.Parameter.KEYWORD_ONLY
    for function, names in ((dist.plan_batch, dist.BATCH_PLAN_OPTIONS), (dist.segment_plan, dist.SEGMENT_PLAN_OPTIONS)):
        parameters = inspect.signature(function).parameters.values()
        assert {p.name for p in parameters if p.kind == keyword_only} == set(names)
    with pytest.raises(TypeError, match="unknown batch option.*probabilites"):
        dist.plan_with(bundle, [big_zarr], out, {"probabilites": True})  # misspelt: refused before a cluster


def test_a_plan_is_run_with_the_network_it_was_made_for(bundle, big_zarr, tmp_path):
    """The tile grids of a plan depend on the network: `segment_plan` refuses a model of another shape before
    it submits anything, and takes the same network with other weights or post-processing."""

    class Refusing:  # a cluster that must not be used
        def submit(self, *args, **kwargs):
            raise AssertionError("a task was submitted")

    plan = dist.plan_batch(bundle, [big_zarr], tmp_path / "out", block_size=BLOCK, tile_size=TILE, device="cpu")
    assert plan.network == bundle.net.config.to_dict()
    deeper = ModelBundle(UNet(UNetConfig(depth=3, base_channels=4)))
    with pytest.raises(ValueError, match=r"planned for another network \(depth differ\): plan it again"):
        next(dist.segment_plan(Refusing(), deeper, plan))
    retrained = ModelBundle(UNet(UNetConfig(depth=2, base_channels=4)), postprocess=PostprocessConfig(threshold=0.5))
    with pytest.raises(AssertionError, match="a task was submitted"):  # accepted: it went on to submit
        next(dist.segment_plan(Refusing(), retrained, plan))


def test_a_compressed_tiff_is_read_lazily_and_goes_by_blocks(client, bundle, tmp_path):
    import dask
    import tifffile

    image = (make_cells((150, 140), seed=8)[0] * 1000).astype(np.uint16)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, compression="zlib", tile=(64, 64))  # not memory-mappable
    lazy, axes = dist.tasks.read_lazily(path)
    assert axes == "YX" and not isinstance(lazy, np.ndarray)  # a block reads its TIFF tiles, not the whole image
    with dask.config.set(scheduler="synchronous"):  # read here, as the tasks do, not on the cluster
        assert np.array_equal(np.asarray(lazy[10:90, 70:130]), image[10:90, 70:130])
    events = run(client, bundle, [path], tmp_path / "out")
    assert len(events) == 2 * 6  # 3 x 2 blocks of 60 x 84
    probs = single_process_probs(bundle, image)
    got_probs, got_labels = read_outputs(tmp_path / "out", "slide")
    assert np.array_equal(got_probs, probs)
    assert same_up_to_renumbering(got_labels, probs_to_labels(probs, bundle.postprocess))


def test_a_failing_file_names_itself(client, bundle, tmp_path):
    image = (make_cells((60, 50), seed=1)[0] * 1000).astype(np.float32)
    image[20, 30] = np.nan
    write_tiff(tmp_path / "nan.tif", image, "YX")
    with pytest.raises(ValueError, match="segmenting nan.tif failed: ValueError: image has 1 NaN or infinite"):
        run(client, bundle, [tmp_path / "nan.tif"], tmp_path / "out")  # its input: one line on the command line
    assert not list((tmp_path / "out").iterdir())  # refused as a single-process run refuses it: nothing written


def test_channels_are_checked_when_planning(bundle, tmp_path):
    write_tiff(tmp_path / "rgb.tif", np.zeros((3, 20, 20), np.uint16), "CYX")  # the model has one channel
    with pytest.raises(ValueError, match=r"rgb.tif: the model expects 1 channel.*gives 3.*shape \(3, 20, 20\)"):
        dist.plan_batch(bundle, [tmp_path / "rgb.tif"], tmp_path / "out")


def grey_model(bundle: ModelBundle) -> ModelBundle:
    """`bundle` saved with a grey conversion (the built-in nuclei model's channel choice)."""
    return replace(bundle, channels=ChannelChoice(grey=True))


def test_a_grey_model_makes_rgb_grey_for_whole_files_and_blocks(client, bundle, tmp_path):
    """A model whose channel choice is grey segments an RGB image as a single-process run does (`predict`
    applies `ModelBundle.prepare`): a whole file, and an OME-Zarr block by block, bit for bit."""
    grey = grey_model(bundle)
    rgb = np.stack([(make_cells((150, 140), seed=s)[0] * 200).astype(np.uint8) for s in (1, 2, 3)])
    write_tiff(tmp_path / "small.tif", rgb[:, :60, :50], "CYX")
    attrs = dist.ngff_attributes("large", "CYX", (0.5, 0.5), "micrometer", label=False)
    dist.create_ome_zarr(tmp_path / "large.zarr", rgb.shape, np.uint8, (3, 64, 64), attrs)["0"][:] = rgb
    out = tmp_path / "out"
    run(client, grey, [tmp_path / "small.tif", tmp_path / "large.zarr"], out)
    for stem, image in (("small", rgb[:, :60, :50]), ("large", rgb)):
        plane, axes = grey.prepare(image, "CYX")
        assert axes == "YX"
        probs = single_process_probs(grey, plane)
        if stem == "large":
            got_probs, got_labels = read_outputs(out, stem)
            assert np.array_equal(got_probs, probs)
        else:
            got_labels = read_input(out / "small_labels.tif")[0]
        assert same_up_to_renumbering(np.asarray(got_labels), probs_to_labels(probs, grey.postprocess))


def test_nan_and_constant_images_that_go_by_blocks_are_refused_when_planning(bundle, tmp_path, monkeypatch, capsys):
    """As a single-process run refuses them (`validation.check_image`), and before any output or task: a zarr,
    a memory-mapped TIFF and a compressed TIFF with one NaN or infinite pixel, and a constant image. Before,
    `plan_batch` accepted them; a block's task failed on the cluster, after the outputs were created and other
    blocks had run, when the percentiles' sample (every n-th pixel of a large image) missed the NaN."""
    from napari_unet.__main__ import main
    from napari_unet.modelfile import save_model

    image = (make_cells((150, 140), seed=7)[0] * 1000).astype(np.float32)
    image[71, 61] = np.nan
    infinite = image.copy()
    infinite[71, 61] = np.inf
    attrs = dist.ngff_attributes("x", "YX", None, None, label=False)
    for name, values in (("nan", image), ("constant", np.full((150, 140), 5, np.uint16))):
        dist.create_ome_zarr(tmp_path / f"{name}.zarr", values.shape, values.dtype, (64, 64), attrs)["0"][:] = values
    write_tiff(tmp_path / "mapped.tif", image, "YX")  # memory-mapped
    write_tiff(tmp_path / "packed.tif", infinite, "YX", compression="zlib")  # through tifffile's zarr store
    refusals = {
        "nan.zarr": r"nan.zarr: the image has 1 NaN or infinite values out of 21000; replace them",
        "mapped.tif": r"mapped.tif: the image has 1 NaN or infinite values out of 21000",
        "packed.tif": r"packed.tif: the image has 1 NaN or infinite values out of 21000",
        "constant.zarr": r"constant.zarr: the image is constant \(every value is 5.0\): nothing to segment",
    }
    out = tmp_path / "out"
    for name, message in refusals.items():
        assert dist.goes_by_blocks(tmp_path / name, (150, 140), "YX", BLOCK)
        with pytest.raises(ValueError, match=message):
            dist.plan_batch(bundle, [tmp_path / name], out, block_size=BLOCK, tile_size=TILE, device="cpu")
    assert not list(out.iterdir())  # no output, no progress folder

    def connect(*args, **kwargs):  # a cluster that must not start
        raise AssertionError("a cluster was started")

    monkeypatch.setattr("napari_unet.distributed.batch.connect", connect)
    model = save_model(tmp_path / "cells.model", bundle)
    command = ["predict", str(model), str(tmp_path / "nan.zarr"), "--out", str(out), "--workers", "2"]
    assert main([*command, "--block-size", str(BLOCK), "--tile-size", str(TILE), "--device", "cpu"]) == 2
    assert "nan.zarr: the image has 1 NaN or infinite values" in capsys.readouterr().err
    with pytest.raises(ValueError, match="constant.zarr: the image is constant"):
        dist.segment_files(model, [tmp_path / "constant.zarr"], out, workers=2, block_size=BLOCK, device="cpu")
    assert not list(out.iterdir())


def test_the_values_are_checked_chunk_by_chunk(bundle, tmp_path, monkeypatch):
    """`tasks.check_values` reads each value once and never the whole image at once: a zarr (dask) image chunk
    by chunk, a memory-mapped one in bands of whole rows of ~`validation.BLOCK_ELEMENTS` values. A rerun does
    not read an image whose labels are complete (its blocks read every value)."""
    import dask.array as da

    class Reads:
        """A lazy (H, W) image that records the number of values of every read."""

        def __init__(self, values: np.ndarray):
            self.values, self.shape, self.dtype, self.ndim, self.sizes = values, values.shape, values.dtype, 2, []

        def __getitem__(self, key):
            self.sizes.append(self.values[key].size)
            return self.values[key]

    monkeypatch.setattr("napari_unet.validation.BLOCK_ELEMENTS", 1000)
    values = np.arange(150 * 140, dtype=np.float32).reshape(150, 140)
    values[149, 139] = np.nan
    mapped = Reads(values)
    with pytest.raises(ValueError, match="x.tif: the image has 1 NaN or infinite values out of 21000"):
        dist.tasks.check_values(Path("x.tif"), mapped)
    assert sum(mapped.sizes) == values.size and max(mapped.sizes) == (1000 // 140) * 140
    chunked = Reads(values)
    with pytest.raises(ValueError, match="x.zarr: the image has 1 NaN or infinite values out of 21000"):
        dist.tasks.check_values(Path("x.zarr"), da.from_array(chunked, chunks=(64, 64), name=False))
    assert sum(chunked.sizes) == values.size and max(chunked.sizes) == 64 * 64

    attrs = dist.ngff_attributes("nan", "YX", None, None, label=False)
    dist.create_ome_zarr(tmp_path / "nan.zarr", values.shape, np.float32, (64, 64), attrs)["0"][:] = values
    labels = dist.create_ome_zarr(tmp_path / "out" / "nan_labels.ome.zarr", values.shape, np.uint32, (64, 64), attrs)
    labels.attrs[dist.COMPLETE] = True  # as a finished run leaves it
    plan = dist.plan_batch(bundle, [tmp_path / "nan.zarr"], tmp_path / "out", block_size=BLOCK, tile_size=TILE)
    assert plan.items[0][2] is not None  # planned without reading its values: segment_plan skips it


def test_a_memory_mapped_image_is_checked_without_a_copy_of_it(bundle, tmp_path, monkeypatch):
    """A real memory-mapped image (an np.memmap, not a stand-in): `dask.array.from_array` copied it whole before
    reading a chunk, so checking its values and channels held the whole image in memory."""
    import tracemalloc

    import dask.array  # noqa: F401 - imported before measuring: importing allocates

    monkeypatch.setattr("napari_unet.validation.BLOCK_ELEMENTS", 100_000)  # bands of 50 rows
    path = tmp_path / "x.npy"
    mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(2000, 2000))
    mapped[:] = np.arange(2000, dtype=np.float32)
    mapped.flush()
    mapped = np.load(path, mmap_mode="r")  # 16 MB
    peaks = []
    for check in (dist.tasks.check_values, lambda path, image: dist.tasks.check_channels(bundle, path, image, "YX")):
        tracemalloc.start()
        try:
            check(Path("x.tif"), mapped)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert max(peaks) < mapped.nbytes / 4, peaks


def test_a_block_s_reads_still_refuse_values_that_changed_after_planning(client, bundle, tmp_path):
    """The sample read for the percentiles (before any block is submitted) and every window a block reads
    refuse NaN values too: an input written to between planning and running is refused, naming it."""
    image = (make_cells((150, 140), seed=7)[0] * 1000).astype(np.float32)
    attrs = dist.ngff_attributes("nan", "YX", None, None, label=False)
    store = dist.create_ome_zarr(tmp_path / "nan.zarr", image.shape, np.float32, (64, 64), attrs)["0"]
    store[:] = image
    plan = dist.plan_batch(bundle, [tmp_path / "nan.zarr"], tmp_path / "out", block_size=BLOCK, tile_size=TILE)
    image[70:80, 60:75] = np.nan
    store[:] = image
    with pytest.raises(ValueError, match=r"nan.zarr: the image has 150 NaN or infinite values in rows 0:150"):
        list(dist.segment_plan(client, bundle, plan))  # from the sample: every value of so small an image
    assert not dist.is_complete(tmp_path / "out" / "nan_labels.ome.zarr")
    assert not list((tmp_path / "out" / ".nan.progress").rglob("probs-*"))  # no block ran
    reads = dist.tasks.plane_reads(bundle, tmp_path / "nan.zarr", image, "YX")
    assert reads[..., 0:60, 0:60].shape == (1, 60, 60)
    with pytest.raises(ValueError, match=r"nan.zarr: the image has 90 NaN or infinite values in rows 60:120, columns"):
        reads[..., 60:120, 60:69]


def test_a_resumed_run_reports_the_cut_objects_of_the_blocks_done_before(client, bundle, big_zarr, tmp_path):
    """Objects cut by a block's window are counted once in all: the blocks an interrupted run finished are
    counted by the resumed run (from their markers), which reports as many as an uninterrupted run."""
    options = dict(margin=2, probabilities=False)
    full = sum(e.cut_objects for e in run(client, bundle, [big_zarr], tmp_path / "full", **options))
    assert full > 0  # a margin of 2 pixels cuts objects
    stream = dist.segment_batch(
        client, bundle, [big_zarr], tmp_path / "resumed", block_size=BLOCK, margin=2, tile_size=TILE, device="cpu"
    )
    labelled = 0
    for event in stream:
        labelled += " labels " in event.item
        if labelled == 3:
            break
    stream.close()
    resumed = run(client, bundle, [big_zarr], tmp_path / "resumed", **options)
    assert sum(" labels " in e.item for e in resumed) < BLOCKS  # the blocks done before were not redone
    assert sum(e.cut_objects for e in resumed) == full


def test_a_changed_model_restarts_an_unfinished_image(client, bundle, big_zarr, reference, tmp_path):
    stream = dist.segment_batch(
        client, bundle, [big_zarr], tmp_path, block_size=BLOCK, margin=MARGIN, tile_size=TILE, device="cpu"
    )
    next(stream)
    stream.close()
    other = replace(bundle, postprocess=PostprocessConfig(threshold=0.75))
    events = run(client, other, [big_zarr], tmp_path)
    assert len(events) == 2 * BLOCKS  # nothing reused from the run with other settings
    _, labels = read_outputs(tmp_path)
    assert same_up_to_renumbering(labels, probs_to_labels(reference[0], other.postprocess))


def test_the_command_line_and_python_run_on_a_cluster(client, bundle, big_zarr, reference, tmp_path, capsys):
    from napari_unet.cli import main
    from napari_unet.modelfile import save_model

    model = save_model(tmp_path / "cells.model", bundle)
    address = client.scheduler.address
    code = main(
        [
            "predict",
            str(model),
            str(big_zarr),
            "--out",
            str(tmp_path / "cli"),
            "--cluster",
            address,
            "--tile-size",
            str(TILE),
            "--block-size",
            str(BLOCK),
            "--margin",
            str(MARGIN),
            "--torch-threads",
            "1",
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert code == 0 and "segmented 1 image(s)" in capsys.readouterr().out
    labels = zarr.open_group(str(tmp_path / "cli" / "big_labels.ome.zarr"), mode="r")["0"][:]
    assert same_up_to_renumbering(labels, reference[1])
    events = dist.segment_files(
        model,
        [big_zarr],
        tmp_path / "py",
        address=address,
        torch_threads=1,
        tile_size=TILE,
        block_size=BLOCK,
        margin=MARGIN,
        device="cpu",
    )
    labels = zarr.open_group(str(tmp_path / "py" / "big_labels.ome.zarr"), mode="r")["0"][:]
    assert len(events) == 2 * BLOCKS and same_up_to_renumbering(labels, reference[1])
    assert main(["predict", str(model), str(big_zarr), "--out", str(tmp_path / "o"), "--workers", "2", "--tta"]) == 2
    assert "test-time augmentation works on whole files" in capsys.readouterr().err


# ------------------------------------------------------------------------- refusals, reruns, pixel sizes


def test_inputs_with_one_base_name_are_refused_before_any_work(bundle, big_zarr, tmp_path, monkeypatch):
    """a.tif and a.png (or a.zarr and a.tif) would write the same outputs: `plan_batch`, `segment_files` and the
    Batch dock's job refuse them, naming both, before anything is read or a cluster starts."""
    from PIL import Image

    from napari_unet.jobs.batch import run_batch

    monkeypatch.setattr("napari_unet.distributed.batch.connect", None)  # a cluster that must not start
    write_tiff(tmp_path / "a.tif", (make_cells((40, 44), seed=1)[0] * 1000).astype(np.uint16), "YX")
    Image.fromarray((make_cells((40, 44), seed=2)[0] * 255).astype(np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "big.tif").write_bytes(b"not read: refused by name first")
    out = tmp_path / "out"
    for inputs in ([tmp_path / "a.png", tmp_path / "a.tif"], [big_zarr, tmp_path / "big.tif"]):
        message = f"{inputs[0]} and {inputs[1]} would both be written to"
        with pytest.raises(ValueError, match=message):
            dist.plan_batch(bundle, inputs, out, tile_size=TILE, device="cpu")
        with pytest.raises(ValueError, match=message):
            dist.segment_files(bundle, inputs, out, workers=1)
    with pytest.raises(ValueError, match="a.png and .*a.tif would both be written to"):
        next(run_batch(bundle, [tmp_path], out, workers=1, tile_size=TILE, device="cpu"))
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("option", [dict(tile_size=0), dict(tile_size=-8), dict(device="gpu"), dict(device="cuda:x")])
def test_bad_options_are_refused_for_whole_files_too(bundle, tmp_path, option):
    write_tiff(tmp_path / "small.tif", (make_cells((40, 44), seed=1)[0] * 1000).astype(np.uint16), "YX")
    with pytest.raises(ValueError, match="tile size must be >= 1|device must be one of"):
        dist.plan_batch(bundle, [tmp_path / "small.tif"], tmp_path / "out", **({"device": "cpu"} | option))


def test_overwrite_redoes_finished_outputs_and_a_rerun_skips_them(client, bundle, tmp_path):
    """Without `overwrite` a rerun skips finished files and images (resumable); with it they are segmented
    again with the new settings, probabilities included."""
    write_tiff(tmp_path / "small.tif", (make_cells((60, 50), seed=1)[0] * 1000).astype(np.uint16), "YX")
    write_tiff(tmp_path / "large.tif", (make_cells((150, 140), seed=7)[0] * 1000).astype(np.uint16), "YX")
    inputs, out = [tmp_path / "small.tif", tmp_path / "large.tif"], tmp_path / "out"
    run(client, bundle, inputs, out, probabilities=False)
    again = run(client, bundle, inputs, out)  # probabilities asked, absent: not finished as asked, done again
    assert not any(e.skipped for e in again) and (out / "small_probs.tif").exists()
    again = run(client, bundle, inputs, out)
    assert [e.skipped for e in again] == [True, True]
    stricter = replace(bundle, postprocess=PostprocessConfig(threshold=0.9))
    events = run(client, stricter, inputs, out, overwrite=True)
    assert len(events) == 1 + 2 * 6 and not any(e.skipped for e in events)
    probs, labels = read_outputs(out, "large")
    assert same_up_to_renumbering(labels, probs_to_labels(probs, stricter.postprocess))
    small_probs = read_input(out / "small_probs.tif")[0]
    small_labels = read_input(out / "small_labels.tif")[0]
    assert np.array_equal(small_labels, probs_to_labels(np.asarray(small_probs), stricter.postprocess))


def test_the_command_line_rerun_skips_finished_files_and_keeps_pixel_sizes(client, bundle, tmp_path, capsys):
    """`predict --cluster` reruns skip finished outputs with a line saying so (resumable), --overwrite redoes
    them; whole files and blocks keep the input's pixel size, or --pixel-size."""
    import tifffile

    from napari_unet.cli import main
    from napari_unet.metadata import read_pixel_size
    from napari_unet.modelfile import save_model

    image = (make_cells((60, 50), seed=1)[0] * 1000).astype(np.uint16)
    calibrated = {"resolution": (1 / 0.25, 1 / 0.25), "metadata": {"unit": "um", "axes": "YX"}, "imagej": True}
    tifffile.imwrite(tmp_path / "small.tif", image, **calibrated)
    tifffile.imwrite(tmp_path / "large.tif", (make_cells((150, 140), seed=7)[0] * 1000).astype(np.uint16))
    model = save_model(tmp_path / "cells.model", bundle)
    out = tmp_path / "out"
    command = ["predict", str(model), str(tmp_path / "small.tif"), str(tmp_path / "large.tif"), "--out", str(out)]
    command += ["--cluster", client.scheduler.address, "--tile-size", str(TILE), "--block-size", str(BLOCK)]
    command += ["--margin", str(MARGIN), "--device", "cpu"]
    assert main(command) == 0
    assert read_pixel_size(out / "small_labels.tif").scale == (0.25, 0.25)
    capsys.readouterr()
    assert main(command) == 0
    captured = capsys.readouterr()
    assert "small.tif (already done): skipped" in captured.err and "large.tif (already done): skipped" in captured.err
    assert "segmented 0 image(s), 2 skipped (already done) in" in captured.out
    assert main([*command, "--overwrite", "--pixel-size", "0.5"]) == 0
    assert "skipped" not in capsys.readouterr().err
    assert read_pixel_size(out / "small_labels.tif").scale == (0.5, 0.5)
    assert dist.input_pixel_size(out / "large_labels.ome.zarr") == ((0.5, 0.5), "micrometer")


def test_an_earlier_runs_outputs_in_the_input_folder_are_not_inputs(client, bundle, tmp_path):
    """A second `segment_files` (or Batch dock job) into its input folder refused its own outputs ("im0.tif and
    im0_labels.tif would both be written to ..."): they are left out, with a warning that names them, as
    `predict` notes them, and the finished images are skipped."""
    from napari_unet.jobs.batch import batch_outputs, run_batch

    folder = tmp_path / "same"
    folder.mkdir()
    for i, shape in enumerate(((60, 50), (150, 140))):  # a whole file, and one that goes by blocks
        write_tiff(folder / f"im{i}.tif", (make_cells(shape, seed=i)[0] * 1000).astype(np.uint16), "YX")
    options = dict(tile_size=TILE, block_size=BLOCK, margin=MARGIN, device="cpu")
    address = client.scheduler.address
    first = dist.segment_files(bundle, [folder], folder, address=address, **options)
    assert not any(e.skipped for e in first)
    own = "skipped 2 files that are predict's outputs of other inputs: im0_labels.tif, im1_labels.ome.zarr"
    with pytest.warns(UserWarning, match=own):
        again = dist.segment_files(bundle, [folder], folder, address=address, **options)
    assert [e.skipped for e in again] == [True, True]
    with pytest.warns(UserWarning, match=own):
        events = list(run_batch(bundle, [folder], folder, address=address, **options))
    assert [e.skipped for e in events] == [True, True]
    assert batch_outputs([folder], folder) == [folder / "im1_labels.ome.zarr"]
    assert sorted(p.name for p in folder.iterdir()) == ["im0.tif", "im0_labels.tif", "im1.tif", "im1_labels.ome.zarr"]


def test_whole_files_record_predicts_settings_so_that_a_predict_rerun_skips_them(client, bundle, tmp_path, capsys):
    """The outputs of a whole file written by `predict --cluster` (or `segment_files`) record the settings a
    single-process `predict` records (TIFF tag 65421): a rerun without --cluster skips them, and a rerun with
    other settings is refused naming the difference. They recorded nothing, and such a rerun refused them all."""
    from napari_unet.cli import main
    from napari_unet.modelfile import save_model
    from napari_unet.pipeline import model_digest, read_settings

    model = save_model(tmp_path / "cells.model", replace(bundle, object_diameter=20.0))
    source = tmp_path / "in"
    source.mkdir()
    write_tiff(source / "a.tif", (make_cells((60, 50), seed=1)[0] * 1000).astype(np.uint16), "YX")
    out = tmp_path / "out"
    command = ["predict", str(model), str(source), "--out", str(out), "--diameter", "20", "--pixel-size", "0.5"]
    command += ["--axes", "YX", "--probabilities", "--device", "cpu"]
    assert main([*command, "--cluster", client.scheduler.address, "-q"]) == 0
    recorded = [read_settings(out / name) for name in ("a_labels.tif", "a_probs.tif")]
    assert recorded[0] == recorded[1] and recorded[0]["weights"] == model_digest(bundle)
    assert (recorded[0]["diameter"], recorded[0]["pixel_size"], recorded[0]["axes"]) == (20.0, "0.5 x 0.5 um", "YX")
    capsys.readouterr()
    assert main(command) == 0
    assert "1 image(s) already segmented in" in capsys.readouterr().err
    assert main([*command, "--threshold", "0.9"]) == 2
    assert "a_labels.tif exists from a run with threshold 0.7 (now 0.9)" in capsys.readouterr().err
    python = tmp_path / "python"
    options = dict(address=client.scheduler.address, probabilities=True, axes="YX", diameter=20.0)
    dist.segment_files(model, [source], python, **options)
    by_python = read_settings(python / "a_labels.tif")
    assert by_python["model"] == str(model) and by_python["pixel_size"] is None


def test_a_rerun_with_other_settings_is_refused_not_skipped(client, bundle, tmp_path):
    """A finished output written with other settings (a whole file's TIFF, a large image's OME-Zarr) was skipped
    as "already done", leaving results of the old settings: it is refused naming the difference, before anything
    is submitted, as `predict` refuses it; an output that records no settings is refused too, and `overwrite`
    replaces both."""
    write_tiff(tmp_path / "small.tif", (make_cells((60, 50), seed=1)[0] * 1000).astype(np.uint16), "YX")
    write_tiff(tmp_path / "large.tif", (make_cells((150, 140), seed=7)[0] * 1000).astype(np.uint16), "YX")
    out = tmp_path / "out"
    run(client, bundle, [tmp_path / "small.tif", tmp_path / "large.tif"], out)
    assert dist.recorded_settings(out / "large_labels.ome.zarr")["postprocess"] == bundle.postprocess.to_dict()
    assert dist.recorded_settings(out / "large_probs.ome.zarr") == dist.recorded_settings(out / "large_labels.ome.zarr")
    stricter = replace(bundle, postprocess=PostprocessConfig(threshold=0.9))
    for name, output in (("small.tif", "small_labels.tif"), ("large.tif", "large_labels.ome.zarr")):
        written = sorted(p.name for p in out.iterdir())
        with pytest.raises(ValueError, match=rf"{output} exists from a run with threshold \S+ \(now 0.9\)"):
            run(client, stricter, [tmp_path / name], out)
        assert sorted(p.name for p in out.iterdir()) == written
    assert [e.skipped for e in run(client, bundle, [tmp_path / "large.tif"], out)] == [True]

    zarr.open_group(str(out / "large_labels.ome.zarr"), mode="r+").attrs.pop(dist.SETTINGS)  # an older version's
    with pytest.raises(ValueError, match=r"large_labels.ome.zarr exists: replace it with --overwrite"):
        run(client, bundle, [tmp_path / "large.tif"], out)
    events = run(client, stricter, [tmp_path / "small.tif", tmp_path / "large.tif"], out, overwrite=True)
    assert not any(e.skipped for e in events)
    assert dist.recorded_settings(out / "large_labels.ome.zarr")["postprocess"]["threshold"] == 0.9


def test_an_image_replaced_under_its_name_is_refused_not_skipped(client, bundle, tmp_path, capsys):
    """Whole files and images that go by blocks record their input's size and modification time, as predict's
    own outputs do: an image replaced since is refused, not skipped with the old image's labels (with or without
    workers)."""
    import os

    from napari_unet.cli import main
    from napari_unet.modelfile import save_model

    small, large = tmp_path / "small.tif", tmp_path / "large.tif"
    write_tiff(small, (make_cells((60, 50), seed=1)[0] * 1000).astype(np.uint16), "YX")
    write_tiff(large, (make_cells((150, 140), seed=7)[0] * 1000).astype(np.uint16), "YX")
    out = tmp_path / "out"
    run(client, bundle, [small, large], out)
    assert dist.recorded_settings(out / "large_labels.ome.zarr")["input"]["bytes"] == large.stat().st_size
    assert [e.skipped for e in run(client, bundle, [small, large], out)] == [True, True]
    for path, output in ((small, "small_labels.tif"), (large, "large_labels.ome.zarr")):
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # replaced: another time
        with pytest.raises(ValueError, match=rf"{output} was segmented from another version of .*{path.name}"):
            run(client, bundle, [path], out)
    model = save_model(tmp_path / "cells.model", bundle)
    command = ["predict", str(model), str(small), "--out", str(out), "--tile-size", str(TILE), "--device", "cpu"]
    assert main(command) == 2  # a single-process rerun over the workers' outputs refuses it too
    assert "small_labels.tif was segmented from another version of" in capsys.readouterr().err


def test_single_process_zarr_and_blocks_write_the_same_ngff_layout(client, bundle, tmp_path):
    """`predict --zarr` (`ome_zarr.write_ome_zarr`) and an image segmented block by block write one layout: zarr
    format 2, dimension_separator "/" (NGFF 0.4), chunk (y, x) in the file `0/y/x`, the same multiscales (only
    their chunk shapes differ: whole planes up to 1024 pixels, and blocks); and
    labels equal up to renumbering. `--zarr` wrote "." keys (`0/y.x`) before."""
    import json

    from napari_unet.cli import main
    from napari_unet.modelfile import save_model

    write_tiff(tmp_path / "cells.tif", (make_cells((150, 140), seed=7)[0] * 1000).astype(np.uint16), "YX")
    model = save_model(tmp_path / "cells.model", bundle)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers
    try:
        command = ["predict", str(model), str(tmp_path / "cells.tif"), "--tile-size", str(TILE), "--device", "cpu"]
        assert main([*command, "--out", str(tmp_path / "single"), "--zarr", "-q"]) == 0
    finally:
        torch.set_num_threads(threads)
    run(client, bundle, [tmp_path / "cells.tif"], tmp_path / "blocks", probabilities=False)
    stores = [tmp_path / out / "cells_labels.ome.zarr" for out in ("single", "blocks")]
    layouts = []
    for store in stores:
        meta = json.loads((store / "0" / ".zarray").read_text())
        chunks = {str(p.relative_to(store / "0")) for p in (store / "0").rglob("*") if p.is_file()}
        grid = [-(-n // c) for n, c in zip(meta["shape"], meta["chunks"])]
        written = {c for c in chunks if not c.startswith(".")}  # a chunk of zeros only (the fill value) is not
        assert written and written <= {f"{y}/{x}" for y in range(grid[0]) for x in range(grid[1])}
        multiscale = zarr.open_group(str(store), mode="r").attrs["multiscales"][0]
        layouts.append((meta["zarr_format"], meta["dimension_separator"], multiscale["axes"], multiscale["datasets"]))
    assert layouts[0] == layouts[1] and layouts[0][:2] == (2, "/")
    single, blocks = (np.asarray(read_input(store)[0]) for store in stores)
    assert np.array_equal(single, read_input(tmp_path / "single" / "cells_labels.tif")[0])
    assert single.max() > 0 and same_up_to_renumbering(blocks, single)


def corrupt_zarr(path: Path) -> Path:
    image = (make_cells((100, 100), seed=5)[0] * 1000).astype(np.uint16)
    dist.create_ome_zarr(path, image.shape, np.uint16, (50, 50), dist.ngff_attributes("x", "YX", None, None, False))
    zarr.open_array(str(path / "0"), mode="r+")[:] = image
    (path / "0" / "1" / "1").write_bytes(b"garbage")  # one chunk corrupt ("/" chunk keys)
    return path


def test_a_corrupt_input_is_named_and_checked_lazily_when_it_goes_by_blocks(client, bundle, tmp_path):
    """A corrupt chunk gives a ValueError naming the file (one line on the command line). `predict --workers`
    checks an input that goes by blocks without reading its values (a whole slide is not decompressed in the
    driver); the blocks' reading names it then."""
    from napari_unet.cli.predict import _check_input

    bad = corrupt_zarr(tmp_path / "bad.zarr")
    with pytest.raises(ValueError, match=r"bad.zarr: cannot be read \(RuntimeError"):
        _check_input(bad, None, bundle, None)  # single-process: every value is read and checked
    assert _check_input(bad, None, bundle, None, block_size=BLOCK) == "YX"  # by blocks: lazily, values unread
    with pytest.raises(ValueError, match="bad.zarr"):
        run(client, bundle, [bad], tmp_path / "out", block_size=40, margin=32)


def test_relative_paths_are_planned_as_absolute_ones(bundle, tmp_path, monkeypatch):
    """The audit's case: with --cluster a relative --out (and relative inputs) were resolved in each worker's
    working directory, and the run reported success: the plan now holds absolute paths."""
    monkeypatch.chdir(tmp_path)
    Path("in").mkdir()
    write_tiff(Path("in/small.tif"), (make_cells((40, 44), seed=1)[0] * 1000).astype(np.uint16), "YX")
    write_tiff(Path("in/large.tif"), (make_cells((100, 100), seed=2)[0] * 1000).astype(np.uint16), "YX")
    plan = dist.plan_batch(bundle, ["in/small.tif", "in/large.tif"], "out", block_size=BLOCK, tile_size=TILE)
    assert plan.out_dir == tmp_path / "out"
    (small, _, whole), (large, _, blocks) = plan.items
    assert whole is None and blocks is not None
    assert (small, large) == (tmp_path / "in/small.tif", tmp_path / "in/large.tif")
    paths = (blocks.source.path, blocks.labels, blocks.probs, blocks.progress)
    assert all(p.is_absolute() and p.is_relative_to(tmp_path) for p in paths)


def test_probabilities_asked_for_later_keep_the_complete_labels(client, bundle, big_zarr, reference, tmp_path):
    """The audit's case: a rerun with --probabilities of an image whose labels were complete recreated the labels
    (emptied) before computing them again, so that a stop midway lost them. Now only the probabilities are
    computed, and the labels are never touched: stopped after its first event, the rerun leaves them whole."""
    run(client, bundle, [big_zarr], tmp_path, probabilities=False)
    path = tmp_path / "big_labels.ome.zarr"
    labels = zarr.open_group(str(path), mode="r")["0"][:]
    attributes = dict(zarr.open_group(str(path), mode="r").attrs)
    stream = batch(client, bundle, [big_zarr], tmp_path)
    next(stream)
    stream.close()  # stopped: the other tasks are cancelled
    assert dist.is_complete(path) and dict(zarr.open_group(str(path), mode="r").attrs) == attributes
    assert np.array_equal(zarr.open_group(str(path), mode="r")["0"][:], labels)
    rest = run(client, bundle, [big_zarr], tmp_path, probabilities=True)  # the probabilities are finished
    assert len(rest) <= BLOCKS  # probability blocks only
    probs, again = read_outputs(tmp_path)
    assert np.array_equal(probs, reference[0]) and np.array_equal(again, labels)
    assert dist.is_complete(tmp_path / "big_probs.ome.zarr")
