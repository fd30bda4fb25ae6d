"""Object size in a model: rescaling before the network, results back at the image's size, "auto" estimation.

The network here is a hand-set U-Net of depth 1 that thresholds the normalised image at 0.5 (fg = sigmoid(
40 (x - 0.5))), so the tests know exactly what it segments: bright disks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_unet import modelfile
from napari_unet.metrics import instance_scores
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle, load_model, save_model
from napari_unet.postprocess import PostprocessConfig
from napari_unet.scale import (
    busiest_window,
    check_diameter,
    check_rescalable,
    check_tta_size,
    choose_diameter,
    diameter_factor,
    estimate_diameter,
    median_diameter,
    resize_probs,
    scale_postprocess,
    scaled_shape,
)
from napari_unet.tiling import predict_tiled


def threshold_net() -> UNet:
    net = UNet(depth=1, base_channels=1, dropout=0.0)
    with torch.no_grad():
        for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)):
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
            conv.bias.zero_()
        net.head.weight.copy_(torch.tensor([[[[0.0]]], [[[40.0]]]]))
        net.head.bias.copy_(torch.tensor([0.0, -20.0]))
    return net


def disks(shape, radius, spacing, offset=0) -> np.ndarray:
    """Disks of `radius` on a grid of `spacing`, as instance labels."""
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    centres = [
        (y, x)
        for y in range(spacing // 2 + offset, shape[0] - radius, spacing)
        for x in range(spacing // 2 + offset, shape[1] - radius, spacing)
    ]
    for i, (y, x) in enumerate(centres, 1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = i
    return labels


def bundle(diameter: float | None = 20.0) -> ModelBundle:
    return ModelBundle(threshold_net(), postprocess=PostprocessConfig(min_size=4), object_diameter=diameter)


@pytest.mark.parametrize("radius", [6, 20])
def test_auto_estimates_the_median_diameter_of_the_objects(radius):
    truth = disks((300, 300), radius, 4 * radius)
    image = (truth > 0).astype(np.float32) * 200 + 10
    estimate = bundle().estimate_diameter(image, device="cpu")
    assert estimate == pytest.approx(median_diameter(truth), rel=0.15)


def test_estimate_is_none_without_objects_and_auto_then_keeps_the_scale():
    image = np.full((120, 120), 5.0, np.float32)
    model = bundle()
    assert model.estimate_diameter(image, device="cpu") is None
    assert model.scale_factor(image, "auto", device="cpu") == 1.0


def network_inputs(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the images a ModelBundle runs its network on (`predict_tiled`'s input), in call order:
    the threshold network finds the same disks at any scale, so only this shows the scale it was run at."""
    shapes = []

    def spy(net, image, *args, **kwargs):
        shapes.append(tuple(np.shape(image)))
        return predict_tiled(net, image, *args, **kwargs)

    monkeypatch.setattr(modelfile, "predict_tiled", spy)
    return shapes


@pytest.mark.parametrize("diameter", [10.0, 40.0, "auto"])
def test_rescaled_segmentation_comes_back_at_the_image_size_with_the_same_objects(diameter, monkeypatch):
    truth = disks((200, 230), 12, 50)
    image = (truth > 0).astype(np.float32) * 100
    model = bundle()
    factor = model.scale_factor(image, diameter, device="cpu")
    objects = median_diameter(truth) if diameter == "auto" else diameter
    assert factor == pytest.approx(20.0 / objects, rel=0.15)  # model diameter / object diameter
    seen = network_inputs(monkeypatch)
    labels = model.segment(image, diameter=diameter, device="cpu")
    assert seen[-1] == scaled_shape(image.shape, factor) != image.shape  # the network saw the image rescaled
    assert labels.shape == image.shape and labels.dtype == np.int32
    scores = instance_scores(labels, truth)
    assert scores["ap50"] == 1.0 and scores["map"] > 0.8


def test_predict_with_a_diameter_resizes_probabilities_back(monkeypatch):
    image = (disks((96, 120), 8, 32) > 0).astype(np.float32)
    seen = network_inputs(monkeypatch)
    probs = bundle().predict(image, diameter=40, device="cpu")
    assert seen == [(48, 60)]  # x 20 / 40
    assert probs.shape == (2, 96, 120)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert np.mean((probs[1] > 0.5) == (image > 0.5)) > 0.97


def test_scale_factor_rules():
    image = np.zeros((64, 64), np.float32)
    assert bundle().scale_factor(image, 40.0) == 0.5
    assert bundle().scale_factor(image, None) == 1.0
    assert bundle(None).scale_factor(image, "auto") == 1.0
    with pytest.raises(ValueError, match="no object diameter"):
        bundle(None).scale_factor(image, 30.0)
    with pytest.raises(ValueError, match="'auto' or None"):
        bundle().scale_factor(image, "big")
    with pytest.raises(ValueError, match="out of range.*2.5 to 160"):
        bundle().scale_factor(image, 1.0)
    with pytest.raises(ValueError, match="> 0"):
        bundle().scale_factor(image, -3.0)


def test_diameter_factor_and_check_diameter_are_the_rules_of_a_given_size():
    assert diameter_factor(20.0, 40.0) == 0.5 and diameter_factor(20.0, np.float32(10.0)) == 2.0
    for bad in (True, 0, -1.0, "12"):
        with pytest.raises(ValueError, match="> 0"):
            diameter_factor(20.0, bad)
    assert check_diameter(None) is None and check_diameter(17) == 17.0
    for bad in (0, -2.0, True, "17"):
        with pytest.raises(ValueError, match="object_diameter"):
            check_diameter(bad)


def test_estimate_diameter_converges_on_the_objects_whatever_the_segmenter_scale():
    """A segmenter that thresholds the window (no network): the estimate is the disks' diameter in the image,
    starting from a model diameter twice or half as large; an empty image gives None."""
    truth = disks((300, 300), 10, 40)
    image = (truth > 0).astype(np.float32)
    windows = []

    def threshold(window):
        windows.append(window.shape)
        return ndimage.label(window > 0.5)[0]

    for model_diameter in (10.0, 40.0):
        estimate = estimate_diameter(image, model_diameter, threshold)
        assert estimate == pytest.approx(median_diameter(truth), rel=0.1)
    assert all(max(shape) <= 2 * 256 for shape in windows)  # a window about ESTIMATE_SIDE at the model's scale
    assert estimate_diameter(np.zeros((100, 100), np.float32), 20.0, threshold) is None


def test_estimate_diameter_is_not_fooled_by_objects_cut_into_pieces_of_the_model_size():
    """A segmenter that, like a network on texture, cuts every object wider than 1.5 model diameters (at the
    model's scale) into squares of the model's diameter: at the scale where the 40-px disks are cut into 20-px
    pieces it "finds" objects of exactly the model's size (a fixed point of rescaling by what was found), but the
    neighbouring scales disagree there and agree where the disks are whole, so the estimate is the disks'."""
    model_diameter = 20.0
    truth = disks((400, 400), 20, 56)
    image = (truth > 0).astype(np.float32)

    def fragmenting(window):
        labels = ndimage.label(window > 0.5)[0]
        rows, cols = np.indices(labels.shape) // int(model_diameter)
        pieces = labels * 10_000 + rows * 100 + cols
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(labels.max() + 1))
        too_big = 2 * np.sqrt(sizes / np.pi) > 1.5 * model_diameter
        cut = np.where(too_big[labels] & (labels > 0), pieces, labels * 10_000)
        return np.unique(cut, return_inverse=True)[1].reshape(labels.shape)

    estimate = estimate_diameter(image, model_diameter, fragmenting)
    assert estimate == pytest.approx(median_diameter(truth), rel=0.15)


def test_choose_diameter_keeps_the_candidate_its_neighbours_confirm():
    """Measured on a DSB image with 34-px nuclei: the built-in model found fragments of 2.9 px at 4x and 1.9 px
    at 8x (the earlier iterative estimate converged there); the scales around 0.5x agree on ~37 px."""
    factors = (0.25, 0.5, 1.0, 2.0, 4.0)
    assert choose_diameter([40.6, 37.4, 16.3, 2.9, 1.9], factors, 20.0) == pytest.approx(37.4)
    assert choose_diameter([np.nan] * 5, factors, 20.0) is None
    assert choose_diameter([np.nan, np.nan, 30.0, np.nan, np.nan], factors, 20.0) == 30.0  # nothing to confirm it
    assert choose_diameter([400.0, 200.0, np.nan, np.nan, np.nan], factors, 20.0) == 160.0  # clipped to 8x


def test_rescaling_a_huge_lazy_plane_is_refused_before_reading_it():
    da = pytest.importorskip("dask.array")
    huge = da.zeros((20000, 20000), dtype=np.uint16, chunks=1000)
    with pytest.raises(ValueError, match="lazy.*GiB.*without rescaling"):
        bundle().predict(huge, diameter=10.0, device="cpu")
    check_rescalable(np.zeros((100, 100), np.float32), 8.0)  # small planes pass


def test_test_time_augmentation_of_a_huge_lazy_plane_is_refused_before_reading_it():
    """TTA reads the plane whole and holds its probabilities in memory at the plane's size: a whole slide would
    not fit, even shrunk before the network."""
    da = pytest.importorskip("dask.array")
    huge = da.zeros((20000, 20000), dtype=np.uint16, chunks=1000)
    with pytest.raises(ValueError, match="test-time augmentation.*lazy.*GiB.*without test-time augmentation"):
        bundle(None).predict(huge, tta=True, device="cpu")
    large = da.zeros((15800, 15800), dtype=np.uint16, chunks=1000)  # shrinking it (x0.9) would fit in memory
    with pytest.raises(ValueError, match="test-time augmentation"):  # its probabilities in 8 orientations not
        bundle(9.0).predict(large, diameter=10.0, tta=True, device="cpu")
    with pytest.raises(ValueError, match="test-time augmentation"):  # the probabilities come back at full size
        check_tta_size(da.zeros((16000, 16000), dtype=np.uint16, chunks=1000), 0.5)
    check_tta_size(np.zeros((200, 200), np.float32), 4.0)  # small planes pass
    probs = bundle(None).predict(np.zeros((40, 40), np.float32), tta=True, device="cpu")
    assert probs.shape == (2, 40, 40)


def test_object_diameter_round_trips_and_old_folders_have_none(tmp_path):
    folder = save_model(tmp_path / "m", bundle(17.5))
    assert json.loads((folder / "config.json").read_text())["object_diameter"] == 17.5
    assert load_model(folder).object_diameter == 17.5
    old = save_model(tmp_path / "old", bundle(None))
    assert "object_diameter" not in json.loads((old / "config.json").read_text())
    assert load_model(old).object_diameter is None
    config = json.loads((old / "config.json").read_text())
    config["metadata"]["object_diameter"] = 20.0  # what a training run's metadata may hold
    (old / "config.json").write_text(json.dumps(config))
    loaded = load_model(old)
    assert loaded.object_diameter == 20.0 and "object_diameter" not in loaded.metadata
    config["object_diameter"] = -1
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="invalid configuration.*object_diameter"):
        load_model(old)


def test_scale_postprocess_scales_lengths_and_areas():
    config = PostprocessConfig(min_size=16, watershed_h=2.0, grow_distance=5.0, border_width=1)
    half = scale_postprocess(config, 0.5)
    assert (half.min_size, half.watershed_h, half.grow_distance, half.border_width) == (4, 1.0, 2.5, 1)
    double = scale_postprocess(config, 2.0)
    assert (double.min_size, double.watershed_h, double.grow_distance, double.border_width) == (64, 4.0, 10.0, 2)
    assert scale_postprocess(config, 1.0) is config
    assert scale_postprocess(PostprocessConfig(border_width=0), 3.0).border_width == 0


def test_resize_probs_keeps_classes_and_range():
    probs = np.random.default_rng(0).random((2, 30, 40)).astype(np.float32)
    out = resize_probs(probs, (61, 79))
    assert out.shape == (2, 61, 79) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert resize_probs(probs, (30, 40)) is probs


def test_busiest_window_finds_the_objects():
    image = np.zeros((300, 300), np.float32)
    image[220:280, 10:70] = disks((60, 60), 8, 20) > 0
    rows, cols = busiest_window(image, 100)
    assert rows.start <= 220 and rows.stop >= 280 and cols.start <= 10 and cols.stop >= 70
    assert busiest_window(image[:50, :60], 100) == (slice(0, 50), slice(0, 60))


def test_a_lazy_plane_small_enough_is_rescaled_like_the_same_array_in_memory():
    da = pytest.importorskip("dask.array")
    truth = disks((180, 200), 12, 50)
    image = (truth > 0).astype(np.float32) * 100
    lazy = da.from_array(image, chunks=64)
    model = bundle()
    np.testing.assert_array_equal(
        model.segment(lazy, diameter=40.0, device="cpu"), model.segment(image, diameter=40.0, device="cpu")
    )
    assert model.estimate_diameter(lazy, device="cpu") == model.estimate_diameter(image, device="cpu")


def test_numpy_numbers_are_object_diameters_stored_as_floats():
    """`ModelBundle(net, object_diameter=np.float32(15))` was refused while `diameter_factor` took numpy numbers."""
    for value in (np.float32(15), np.int64(15), np.float64(15.0)):
        assert check_diameter(value) == 15.0 and type(check_diameter(value)) is float
        found = bundle(value).object_diameter
        assert found == 15.0 and type(found) is float
    for bad in (np.bool_(True), np.float32(0), np.float64("nan"), np.complex64(3)):
        with pytest.raises(ValueError, match="object_diameter"):
            check_diameter(bad)
        with pytest.raises(ValueError, match="> 0"):
            diameter_factor(20.0, bad)


def test_auto_diameter_errors_name_the_image_given_not_a_window_of_it():
    """With "auto", a YXC image was described by its estimation window's shape as read (C, H, W), and a NaN at
    (100, 100) was reported as "some in the window at y 0, x 0"."""
    image = disks((300, 300), 10, 40).astype(np.float32)
    with pytest.raises(ValueError, match=r"has shape \(256, 64, 1\)"):
        bundle().estimate_diameter(np.zeros((256, 64, 1), np.float32))
    image[100, 100] = np.nan
    image[250, 20] = np.inf
    for run in (bundle().estimate_diameter, bundle().predict, bundle().segment):
        with pytest.raises(ValueError, match=r"image has 2 NaN or infinite values out of 90000"):
            run(image)
    da = pytest.importorskip("dask.array")
    with pytest.raises(ValueError, match=r"image has 2 NaN or infinite values out of 90000"):
        bundle().segment(da.from_array(image, chunks=64))
