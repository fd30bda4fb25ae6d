"""The Python API and the jobs, cases found by a read-only audit (session 13): each was a traceback, a wrong
message or lost data before; now it works or says what was expected."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.model import UNet, UNetConfig
from napari_unet.modelfile import ModelBundle
from napari_unet.synthetic import make_cells


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    """An untrained tiny network (seeded: its foreground probabilities span 0.5 to 0.97 on `make_cells`, not
    symmetric under flips) that knows an object size of 20 px (as the built-in model does)."""
    torch.manual_seed(0)
    return ModelBundle(UNet(UNetConfig(depth=2, base_channels=4)), object_diameter=20.0)


def test_a_2d_zarr_array_is_segmented_window_by_window(tiny, tmp_path):
    zarr = pytest.importorskip("zarr")
    image = make_cells((64, 64), seed=1)[0].astype(np.float32)
    array = zarr.open_array(str(tmp_path / "plane.zarr"), mode="w", shape=image.shape, dtype="f4", chunks=(32, 32))
    array[:] = image
    probs = tiny.predict(image, diameter=None, device="cpu")
    np.testing.assert_allclose(tiny.predict(array, diameter=None, device="cpu"), probs, rtol=0, atol=1e-6)
    flipped = tiny.predict(image[::-1, ::-1].copy(), diameter=None, device="cpu")
    # an image read turned by 180 degrees would show: the network is not symmetric under the turn
    assert np.abs(flipped - probs).max() > 0.1 and np.abs(flipped[:, ::-1, ::-1] - probs).max() > 0.1
    np.testing.assert_array_equal(
        tiny.segment(array, diameter=None, device="cpu"), tiny.segment(image, diameter=None, device="cpu")
    )


def test_segment_applies_the_models_channel_choice_to_rgb_and_refuses_stacks(tiny):
    from napari_unet.channels import ChannelChoice

    grey = ModelBundle(tiny.net, channels=ChannelChoice(grey=True))
    image = make_cells((64, 64), seed=1)[0].astype(np.float32)
    # seeds at the median probability: labels that show what the network saw (at 0.5: one object, everywhere)
    median = float(np.median(grey.predict(image, diameter=None, device="cpu")[1]))
    kwargs = {"diameter": None, "device": "cpu", "postprocess": replace(grey.postprocess, threshold=median)}
    plain = grey.segment(image, **kwargs)
    assert plain.max() > 1 and 0.2 < np.mean(plain > 0) < 0.8
    rgb_last = np.stack([image] * 3, axis=-1)  # (H, W, 3), as scikit-image and imageio read RGB
    np.testing.assert_array_equal(grey.segment(rgb_last, **kwargs), plain)
    np.testing.assert_array_equal(grey.segment(rgb_last, axes="YXC", **kwargs), plain)
    np.testing.assert_array_equal(grey.segment(image, axes="YX", **kwargs), plain)
    with pytest.raises(ValueError, match="segment takes one plane.*'ZYX'"):
        grey.segment(np.stack([image] * 6), diameter=None, device="cpu")


def test_nan_with_the_automatic_diameter_is_a_clear_error(tiny):
    image = make_cells((64, 64), seed=1)[0].astype(np.float32)
    image[10:20, 10:20] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        tiny.segment(image, device="cpu")


def test_a_batch_of_no_tiles_is_refused(tiny):
    with pytest.raises(ValueError, match="batch_size must be a whole number of tiles >= 1, got 0"):
        tiny.predict(np.zeros((32, 32), np.float32) + np.eye(32, dtype=np.float32), diameter=None, batch_size=0)


def test_few_shot_refuses_cells_far_outside_the_models_size_and_counts_nan_in_the_image_as_given(tiny):
    from napari_unet.fewshot import prepare

    image, labels = make_cells((64, 64), seed=2)
    dots = np.zeros((64, 64), np.int32)
    dots[10, 10], dots[30, 30], dots[50, 50] = 1, 2, 3  # 1-px "cells": a 17x blow-up of the image
    with pytest.raises(ValueError, match="the painted cells are 1.13 px across"):
        prepare(tiny, image, dots)
    one_nan = image.astype(np.float32)
    one_nan[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"\b1 NaN or infinite"):
        prepare(tiny, one_nan, labels)


def test_the_training_job_counts_nan_in_the_image_as_given_and_refuses_an_empty_region(tiny, tmp_path):
    from napari_unet.jobs.finetune import TrainingJob, annotated_planes, run_training
    from napari_unet.modelfile import Normalization
    from napari_unet.plugin._layers import PlaneStack
    from napari_unet.training import preset

    image, labels = make_cells((64, 64), seed=2)
    one_nan = image.astype(np.float32)
    one_nan[3, 4] = np.nan
    images, kept, masks = annotated_planes(PlaneStack(one_nan, None, ()), labels)
    _, config = preset("fast", iterations=1, tile_size=44)
    job = TrainingJob(images, kept, masks, tiny.net, config, Normalization(), None, "cpu", tmp_path / "m")
    with pytest.raises(ValueError, match=r"\b1 NaN or infinite"):
        next(run_training(job))
    with pytest.raises(ValueError, match="the annotated region is empty"):
        annotated_planes(PlaneStack(image, None, ()), labels, region=np.zeros((64, 64), bool))


def test_ome_zarr_axes_are_checked_before_anything_is_written(tmp_path):
    from napari_unet.ome_zarr import write_ome_zarr

    for axes, message in (("TZYX", "names 4 dimensions"), ("YXT", "canonical order"), ("TQX", "unknown letters")):
        with pytest.raises(ValueError, match=message):
            write_ome_zarr(tmp_path / "out.ome.zarr", np.zeros((2, 8, 8), np.float32), axes)
    assert list(tmp_path.iterdir()) == []


def test_annotations_of_images_of_one_name_keep_their_own_side_cars(tmp_path):
    from napari_unet.pipeline import list_files
    from napari_unet.plugin import _autosave

    root, folder = tmp_path / "root", tmp_path / "d"
    folder.mkdir()
    a, b = np.ones((32, 32), np.uint16), np.full((48, 48), 2, np.uint16)
    first = _autosave.save_annotations(a, root, folder / "cells.tif", "cells")
    second = _autosave.save_annotations(b, root, folder / "cells.ome.tif", "cells")
    assert first != second and first.parent == second.parent == folder
    np.testing.assert_array_equal(_autosave.load_annotations(_autosave.find_annotations(folder / "cells.tif", root)), a)
    np.testing.assert_array_equal(
        _autosave.load_annotations(_autosave.find_annotations(folder / "cells.ome.tif", root)), b
    )
    movie = np.arange(2 * 3 * 16 * 16, dtype=np.uint16).reshape(2, 3, 16, 16)  # (T, Z, H, W) annotations
    saved = _autosave.save_annotations(movie, root, folder / "movie.tif", "movie")
    np.testing.assert_array_equal(_autosave.load_annotations(saved), movie)
    (folder / "cells.tif").write_bytes(b"")
    assert list_files(folder, annotations=False) == [folder / "cells.tif"]  # the side-cars are not images
    legacy = folder / "old.unet-labels.tif"  # saved by an earlier version
    _autosave.write_tiff(legacy, a, "YX")
    assert _autosave.find_annotations(folder / "old.tif", root) == legacy
