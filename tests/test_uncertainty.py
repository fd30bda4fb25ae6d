"""Where to annotate next: test-time-augmentation disagreement and suggested regions."""

from __future__ import annotations

import numpy as np
import pytest

import napari_unet.uncertainty as uncertainty_module
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle
from napari_unet.uncertainty import suggest_regions, tta_uncertainty


def test_a_model_that_answers_the_same_in_every_orientation_is_certain(monkeypatch):
    def symmetric(net, image, *args, **kwargs):  # foreground probability = the (normalised) image itself
        fg = np.clip(image[0], 0, 1)
        return np.stack([1 - fg, fg])

    monkeypatch.setattr(uncertainty_module, "predict_tiled", symmetric)
    image = np.random.default_rng(0).random((40, 56)).astype(np.float32)
    mean, spread = tta_uncertainty(ModelBundle(UNet(depth=2, base_channels=4)), image)
    assert mean.shape == spread.shape == image.shape
    assert np.allclose(spread, 0, atol=1e-6)


def test_disagreeing_transforms_are_uncertain_and_results_come_back_at_the_image_size(monkeypatch):
    calls = []

    def left_half(net, image, *args, **kwargs):  # calls the left half foreground whatever the orientation
        calls.append(image.shape)
        fg = np.zeros(image.shape[-2:], np.float32)
        fg[:, : image.shape[-1] // 2] = 1
        return np.stack([1 - fg, fg])

    monkeypatch.setattr(uncertainty_module, "predict_tiled", left_half)
    image = np.zeros((64, 64), np.float32)
    mean, spread = tta_uncertainty(ModelBundle(UNet(depth=2, base_channels=4)), image, factor=0.5, transforms=4)
    assert len(calls) == 4 and calls[0] == (1, 32, 32)
    assert spread.shape == (64, 64) and spread.max() == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="4 .*or 8"):
        tta_uncertainty(ModelBundle(UNet(depth=2, base_channels=4)), image, transforms=3)


def test_a_real_network_gives_values_in_range():
    image = np.random.default_rng(1).random((48, 48)).astype(np.float32)
    mean, spread = tta_uncertainty(ModelBundle(UNet(depth=2, base_channels=4)), image, device="cpu")
    assert 0 <= mean.min() and mean.max() <= 1 and 0 <= spread.min() and spread.max() <= 1


def test_suggested_regions_are_the_most_uncertain_disjoint_boxes_away_from_annotations():
    rng = np.random.default_rng(0)
    uncertainty = rng.random((200, 200)) * 0.1
    uncertainty[20:40, 20:40] = 1.0  # most uncertain
    uncertainty[150:170, 100:120] = 0.8
    uncertainty[100:120, 150:170] = 0.9
    boxes = suggest_regions(uncertainty, count=3, size=30)
    assert len(boxes) == 3
    centres = [((y0 + y1) / 2, (x0 + x1) / 2) for y0, x0, y1, x1 in boxes]
    assert centres[0] == pytest.approx((30, 30), abs=6)
    assert centres[1] == pytest.approx((110, 160), abs=6)
    assert centres[2] == pytest.approx((160, 110), abs=6)
    for i, a in enumerate(boxes):
        assert 0 <= a[0] < a[2] <= 200 and 0 <= a[1] < a[3] <= 200 and a[2] - a[0] == 30
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]  # disjoint
    annotated = np.zeros((200, 200), bool)
    annotated[25:35, 25:35] = True
    boxes = suggest_regions(uncertainty, count=1, size=30, annotated=annotated)
    y0, x0, y1, x1 = boxes[0]
    assert not annotated[y0:y1, x0:x1].any()
    assert suggest_regions(np.zeros((50, 50)), count=3, size=10) == []  # nothing uncertain: nothing suggested
    noise = np.full((50, 50), 1.3e-5)  # a black image's float noise: suggested boxes there before
    assert suggest_regions(noise, count=3, size=10) == []
    noise[20:22, 20:22] = 1.0  # 4 pixels of real disagreement: a box around them (mean 0.04)
    assert len(suggest_regions(noise, count=3, size=10)) == 1


def test_a_black_image_gets_no_suggestion():
    """The model answers the same in every orientation of a black image (up to float noise): nothing to suggest."""
    from napari_unet.jobs.finetune import suggest_annotation
    from napari_unet.modelfile import load_model

    nuclei = load_model("builtin:nuclei")  # its orientations differ by ~1e-5 on a black image
    assert suggest_annotation(nuclei, np.zeros((1, 64, 64), np.float32), device="cpu") == []
