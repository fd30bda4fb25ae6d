"""The uncertainty's checks and memory: refused before the work when too large for memory, NaN counted as `predict`
counts them, one prediction held at a time and the same values as the standard deviation of the stacked maps."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

import napari_unet.uncertainty as uncertainty_module
from napari_unet import scale
from napari_unet.jobs.finetune import suggest_annotation
from napari_unet.jobs.segment import stream_uncertainty
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle
from napari_unet.tiling import dihedral_transforms, predict_tiled, transform, untransform
from napari_unet.uncertainty import tta_uncertainty


def tiny_bundle(object_diameter: float | None = None) -> ModelBundle:
    """An untrained depth-2 U-Net (seeded): its answers differ from one orientation to another."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = UNet(depth=2, base_channels=4, dropout=0.0)
    return ModelBundle(net, object_diameter=object_diameter)


def column_ramp(net, image, *args, **kwargs) -> np.ndarray:
    """A stand-in for `predict_tiled` that depends on the orientation: foreground = image x a left-to-right ramp."""
    probs = np.empty((2, *image.shape[-2:]), np.float32)
    np.multiply(np.clip(image[0], 0, 1), np.linspace(0, 1, image.shape[-1], dtype=np.float32), out=probs[1])
    np.subtract(1, probs[1], out=probs[0])
    return probs


@pytest.mark.parametrize(("transforms", "factor"), [(4, 1.0), (8, 1.0), (4, 0.75)])
def test_the_uncertainty_is_twice_the_standard_deviation_of_the_stacked_transforms(transforms, factor):
    bundle = tiny_bundle()
    image = np.random.default_rng(2).random((44, 52)).astype(np.float32)
    mean, spread = tta_uncertainty(bundle, image, factor=factor, transforms=transforms, device="cpu")

    normalised = scale.rescale_image(bundle.preprocessor(image[None], "CYX")(image[None]), factor)
    chosen = [(k, flip) for k, flip in dihedral_transforms() if transforms == 8 or k in (0, 2)]
    stacked = np.stack(
        [
            untransform(
                predict_tiled(bundle.net, np.ascontiguousarray(transform(normalised, k, flip)), device="cpu"), k, flip
            )[1]
            for k, flip in chosen
        ]
    )
    expected_mean, expected_spread = stacked.mean(axis=0), 2.0 * stacked.std(axis=0)
    if factor != 1.0:
        expected_mean = uncertainty_module.resize(expected_mean, image.shape, order=1, preserve_range=True)
        expected_spread = uncertainty_module.resize(expected_spread, image.shape, order=1, preserve_range=True)
    assert expected_spread.max() > 0.01, "the transforms disagree: the comparison means something"
    np.testing.assert_allclose(mean, expected_mean, atol=1e-6)
    np.testing.assert_allclose(spread, np.clip(expected_spread, 0, 1), atol=1e-6)


def test_the_uncertainty_holds_one_prediction_at_a_time(monkeypatch):
    """Each transform's (classes, H, W) probabilities were kept until all were stacked: the memory grew with the
    number of transforms (25 planes' worth for 8 of them, 13 for 4). Running sums hold the same whatever their
    number."""
    monkeypatch.setattr(uncertainty_module, "predict_tiled", column_ramp)
    bundle = tiny_bundle()
    image = np.random.default_rng(0).random((256, 256)).astype(np.float32)
    peaks = {}
    for transforms in (4, 8):
        tracemalloc.start()
        try:
            tta_uncertainty(bundle, image, transforms=transforms)
            peaks[transforms] = tracemalloc.get_traced_memory()[1] / image.nbytes
        finally:
            tracemalloc.stop()
    assert peaks[8] < peaks[4] + 1, f"peak memory in planes of the image: {peaks}"


def test_a_plane_too_large_for_the_uncertainty_is_refused_before_any_prediction(monkeypatch):
    calls = []
    monkeypatch.setattr(uncertainty_module, "predict_tiled", lambda *args, **kwargs: calls.append(1))
    monkeypatch.setattr(scale, "MAX_RESCALE_BYTES", 64 * 64 * 8 - 1)  # less than one (2, 64, 64) float32 array
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    with pytest.raises(ValueError, match=r"the uncertainty holds a plane of 64x64 px .*crop"):
        tta_uncertainty(tiny_bundle(), image, transforms=4)
    with pytest.raises(ValueError, match="the uncertainty holds"):
        suggest_annotation(tiny_bundle(), image[None], device="cpu")
    assert not calls


def test_the_segment_docks_uncertainty_refuses_a_large_lazy_stack_before_reading_it(monkeypatch):
    """'Also show the uncertainty' read each plane whole and held 4 probability maps of it, with no size check."""
    da = pytest.importorskip("dask.array")

    class Stack:  # the docks' Planes: 3 lazy (1, 64, 64) planes
        data = da.random.random((3, 1, 64, 64), chunks=(1, 1, 32, 32)).astype(np.float32)
        shape, planes = (64, 64), [(0,), (1,), (2,)]

        def plane(self, index):
            return self.data[index]

    monkeypatch.setattr(scale, "MAX_RESCALE_BYTES", 64 * 64 * 8 - 1)
    with pytest.raises(ValueError, match="the uncertainty holds a lazy .*plane of 64x64 px"):
        next(stream_uncertainty(tiny_bundle(), Stack(), 1.0, torch.device("cpu")))


@pytest.mark.parametrize("object_diameter", [None, 20.0])
def test_nan_in_the_image_is_counted_as_predict_counts_it(object_diameter):
    """The image was normalised with NaN percentiles first, and the error said every value was NaN."""
    bundle = tiny_bundle(object_diameter)
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    image[3, 3] = np.nan
    with pytest.raises(ValueError) as expected:
        bundle.predict(image, device="cpu")
    assert "1 NaN or infinite values out of 4096" in str(expected.value)
    with pytest.raises(ValueError) as error:
        tta_uncertainty(bundle, image, transforms=4, device="cpu")
    assert str(error.value) == str(expected.value)
    with pytest.raises(ValueError) as error:
        suggest_annotation(bundle, image[None], device="cpu")
    assert str(error.value) == str(expected.value)
