"""Few-shot fine-tuning: the painted image at the model's scale, the loss region, the tuned copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_unet.fewshot as fewshot
from napari_unet.fewshot import FewShotConfig, few_shot_trainer, prepare
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle


def two_touching_cells():
    yy, xx = np.indices((120, 160))
    labels = np.zeros((120, 160), np.int32)
    labels[(yy - 60) ** 2 + (xx - 60) ** 2 <= 15**2] = 1
    labels[((yy - 60) ** 2 + (xx - 89) ** 2 <= 15**2) & (labels == 0)] = 2
    image = (labels > 0).astype(np.float32) + np.random.default_rng(0).normal(0, 0.05, labels.shape)
    return image.astype(np.float32), labels


def bundle(diameter=None):
    return ModelBundle(UNet(depth=2, base_channels=4), metadata={"name": "test"}, object_diameter=diameter)


def test_the_painted_image_is_rescaled_to_the_models_object_size():
    image, labels = two_touching_cells()
    painted = np.where(labels == 1, 1, 0)
    prepared = prepare(bundle(diameter=15.0), image, painted, config=FewShotConfig(exclude_unpainted=False))
    assert prepared.diameter == pytest.approx(30, rel=0.05)
    assert prepared.factor == pytest.approx(0.5, rel=0.05)
    cell = prepared.sample.labels == 1
    assert 2 * np.sqrt(cell.sum() / np.pi) == pytest.approx(15, rel=0.1)


def test_unpainted_cells_the_model_sees_are_left_out_of_the_loss(monkeypatch):
    image, labels = two_touching_cells()
    painted = np.where(labels == 1, 1, 0)

    def sees_both_cells(net, normalised, *args, **kwargs):  # a model that finds both cells
        fg = (labels > 0).astype(np.float32)
        return np.stack([1 - fg, fg])

    monkeypatch.setattr(fewshot, "predict_tiled", sees_both_cells)
    config = FewShotConfig(margin=1.0)
    with_exclusion = prepare(bundle(), image, painted, config=config).sample
    plain = prepare(bundle(), image, painted, config=FewShotConfig(margin=1.0, exclude_unpainted=False)).sample
    # the same crop: the painted cell's neighbourhood; compare the masks on the unpainted cell's pixels
    assert with_exclusion.labels.shape == plain.labels.shape
    offset = np.argwhere(with_exclusion.labels == 1).min(axis=0) - np.argwhere(painted == 1).min(axis=0)
    other = np.zeros(with_exclusion.labels.shape, bool)
    ys, xs = np.nonzero(labels == 2)
    other[ys + offset[0], xs + offset[1]] = True
    assert plain.mask[other].all()  # the plain margin would teach the unpainted cell as background
    # the unpainted cell beyond the thin ring (0.15 diameters) around the painted one is left out
    from scipy import ndimage

    far = ndimage.distance_transform_edt(with_exclusion.labels != 1) > 4.5
    assert not with_exclusion.mask[other & far].any()
    assert with_exclusion.mask[other & ~far].all()  # the ring next to the painted cell still teaches
    assert with_exclusion.mask[with_exclusion.labels == 1].all()  # the painted cell stays
    background = ~other & (with_exclusion.labels == 0) & plain.mask
    assert with_exclusion.mask[background].mean() > 0.9  # and so does the background around it


def test_fine_tuning_trains_a_copy_and_records_where_it_came_from():
    image, labels = two_touching_cells()
    start = bundle(diameter=30.0)
    before = {k: v.clone() for k, v in start.net.state_dict().items()}
    trainer = few_shot_trainer(
        start, image, np.where(labels == 1, 1, 0), config=FewShotConfig(seconds=None, iterations=3), device="cpu"
    )
    events = list(trainer.run())
    assert events[-1].kind == "done" and trainer.iteration == 3
    assert all(torch.equal(before[k], v) for k, v in start.net.state_dict().items())
    tuned = trainer.bundle()
    assert any(not torch.equal(before[k], v) for k, v in tuned.net.state_dict().items())
    assert tuned.metadata["fine_tuned_from"] == "test"
    assert tuned.object_diameter == 30.0
    assert tuned.metadata["annotated_diameter"] == pytest.approx(30, rel=0.05)


def test_freezing_the_encoder_keeps_its_weights():
    image, labels = two_touching_cells()
    start = bundle()
    trainer = few_shot_trainer(
        start,
        image,
        np.where(labels == 1, 1, 0),
        device="cpu",
        config=FewShotConfig(seconds=None, iterations=2, freeze_encoder=True),
    )
    list(trainer.run())
    tuned = trainer.bundle().net
    for name, value in start.net.encoder.state_dict().items():
        assert torch.equal(value, tuned.encoder.state_dict()[name])


def test_nothing_painted_is_a_clear_error():
    image, _ = two_touching_cells()
    with pytest.raises(ValueError, match="paint at least one cell"):
        prepare(bundle(), image, np.zeros(image.shape, np.int32))
    with pytest.raises(ValueError, match="must be > 0"):
        FewShotConfig(seconds=0)


def test_painted_ids_above_2_31_are_renumbered_not_wrapped():
    image, labels = two_touching_cells()
    painted = np.where(labels == 1, np.int64(2**31 + 5), 0)
    sample = prepare(bundle(), image, painted, config=FewShotConfig(exclude_unpainted=False)).sample
    assert sample.labels.dtype == np.int32 and sample.labels.min() == 0 and set(np.unique(sample.labels)) == {0, 1}


def test_the_windows_are_the_starting_models_unless_the_recipe_says():
    image, labels = two_touching_cells()
    painted = np.where(labels == 1, 1, 0)
    start = ModelBundle(UNet(depth=2, base_channels=4), metadata={"training": {"tile_size": 124}})
    default = few_shot_trainer(start, image, painted, config=FewShotConfig(seconds=None, iterations=1), device="cpu")
    assert default.config.tile_size == 124
    smaller = few_shot_trainer(
        start, image, painted, config=FewShotConfig(seconds=None, iterations=1, tile_size=92), device="cpu"
    )
    assert smaller.config.tile_size == 92 and smaller.tile == start.net.valid_input_size(92)
    with pytest.raises(ValueError, match="tile_size"):
        FewShotConfig(tile_size=0)


def test_a_model_saved_by_a_newer_version_can_be_fine_tuned():
    """Its recorded training holds a setting this version does not know: fine-tuning failed in the worker with
    "unknown TrainConfig keys"; the settings it knows are used, the others left out."""
    image, labels = two_touching_cells()
    start = ModelBundle(
        UNet(depth=2, base_channels=4), metadata={"training": {"tile_size": 124, "a_setting_of_2027": True}}
    )
    trainer = few_shot_trainer(start, image, labels, config=FewShotConfig(seconds=None, iterations=1), device="cpu")
    assert trainer.config.tile_size == 124


def test_the_polarity_is_the_whole_images_not_the_crops():
    """A bright-background image (inverted by "auto") whose painted cells lie in a dense cluster of dark nuclei:
    the crop around them has a dark median and background, so the trainer, deciding on the crop, trained on the
    image un-inverted while inference inverts it (dsb2018-other #110 fell from IoU 0.52 to 0.27 so)."""
    from napari_unet.batches import prepare_sample
    from napari_unet.modelfile import Normalization
    from napari_unet.training import TrainConfig

    yy, xx = np.indices((600, 600))
    labels = np.zeros((600, 600), np.int32)
    for k, (cy, cx) in enumerate([(y, x) for y in range(20, 180, 16) for x in range(20, 180, 16)], 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 7**2] = k  # a dense corner of dark nuclei
    image = np.where(labels > 0, 0.1, 0.9).astype(np.float32) + np.random.default_rng(0).normal(0, 0.02, (600, 600))
    painted = np.where(np.isin(labels, [45, 46, 55, 56]), labels, 0)
    start = ModelBundle(UNet(depth=2, base_channels=4), Normalization(invert="auto"))
    prepared = prepare(start, image.astype(np.float32), painted, config=FewShotConfig(exclude_unpainted=False))
    assert prepared.sample.oriented
    seen = prepare_sample(prepared.sample, "sample", 1, start.normalization, TrainConfig()).image[0]
    inference = start.preprocessor(image[None])(image[None])[0]  # what segment() feeds the network
    assert seen[prepared.sample.labels > 0].mean() > 0.8 and inference[painted > 0].mean() > 0.8  # bright nuclei
    crop = Normalization(invert="auto").apply_polarity(prepared.sample.image)  # the crop's own decision
    assert crop[0][prepared.sample.labels > 0].mean() < 0.2  # which is the other one


def test_not_annotated_pixels_are_left_out_and_cells_painted_with_one_id_are_told_apart():
    image, labels = two_touching_cells()
    apart = np.where(labels == 2, 0, labels)
    apart[60:75, 120:135] = 3  # a third cell, away from the first
    one_id = (apart > 0).astype(np.uint16)  # all painted with label 1, as napari's brush keeps it
    config = FewShotConfig(exclude_unpainted=False)
    start = bundle(diameter=None)
    by_id = prepare(start, image, apart, config=config)
    same = prepare(start, image, one_id, config=config)
    assert same.diameter == pytest.approx(by_id.diameter) and len(np.unique(same.sample.labels)) == 3
    for dtype, unannotated in ((np.uint16, 65535), (np.int32, -1)):
        marked = apart.astype(dtype)
        marked[40:80, 78:100] = unannotated  # "not annotated" beside cell 1: no cell, no loss
        prepared = prepare(start, image, marked, config=config)
        assert prepared.sample.labels.max() == 3 and prepared.diameter == pytest.approx(by_id.diameter)
        assert prepared.sample.mask.sum() < by_id.sample.mask.sum()  # the marked block is out of the loss
