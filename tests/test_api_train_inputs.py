"""What the Python API takes: a training sample's image as raw intensities or normalised (the trainer shows the
network what the model will see when it segments), only `Sample`s as samples, and the package's exported names
as the objects they name."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.batches import prepare_sample
from napari_unet.io import normalize_percentile
from napari_unet.model import UNet
from napari_unet.modelfile import Normalization
from napari_unet.synthetic import make_cells
from napari_unet.training import Sample, TrainConfig, Trainer, preset


@pytest.fixture(scope="module")
def cells() -> tuple[np.ndarray, np.ndarray]:
    return make_cells((96, 112), seed=0)


def camera(image: np.ndarray) -> np.ndarray:
    """`image` as a 12-bit camera records it: an offset of 100, up to 4095."""
    return np.round(100 + image * 3995).astype(np.uint16)


def prepared(image: np.ndarray, labels: np.ndarray, **kwargs) -> np.ndarray:
    return prepare_sample(Sample(image, labels, **kwargs), "sample", 1, Normalization(), TrainConfig()).image[0]


def test_raw_intensities_are_normalised_as_the_model_normalises_the_images_it_segments(cells):
    image, labels = cells
    raw = camera(image)
    np.testing.assert_allclose(prepared(raw, labels), normalize_percentile(raw), atol=1e-6)
    np.testing.assert_allclose(prepared(raw, labels), prepared(normalize_percentile(raw), labels), atol=1e-6)
    offset = raw.astype(np.int64) + 2**31  # int64 counts: normalised in float64, as at prediction
    np.testing.assert_allclose(prepared(offset, labels), normalize_percentile(raw), atol=1e-6)


def test_a_raw_image_trains_as_its_normalised_version(cells):
    image, labels = cells
    raw = camera(image)
    losses = []
    for sample_image in (raw, normalize_percentile(raw)):
        net_config, config = preset("fast", iterations=3, tile_size=60, calibrate_growth=False)
        torch.manual_seed(0)
        trainer = Trainer(
            UNet(replace(net_config, depth=3, base_channels=4)), config, [Sample(sample_image, labels)], [], "cpu"
        )
        losses.append([event.loss for event in trainer.run() if event.kind == "step"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


def test_normalised_images_and_their_crops_are_used_as_they_are(cells):
    image, labels = cells
    normalised = normalize_percentile(camera(image))
    np.testing.assert_array_equal(prepared(normalised, labels), normalised)
    windows = [(slice(y, y + 32), slice(x, x + 32)) for y in range(0, 64, 8) for x in range(0, 80, 8)]
    crop = min(windows, key=lambda window: np.percentile(normalised[window], 99.8))  # the dimmest
    assert np.percentile(normalised[crop], 99.8) < 0.8  # its own percentiles would stretch it
    np.testing.assert_array_equal(prepared(normalised[crop], labels[crop]), normalised[crop])
    both = np.stack([camera(image), normalised])  # a raw channel beside a normalised one: each as it needs
    out = prepare_sample(Sample(both, labels), "sample", 2, Normalization(), TrainConfig()).image
    np.testing.assert_allclose(out, [normalised, normalised], atol=1e-6)
    np.testing.assert_array_equal(both[1], normalised)  # the sample's array is not written


def test_the_guesses_the_range_cannot_settle_are_said(cells):
    """A float image beyond the normalised range is normalised by its own percentiles, and a dim float image in
    it (divided by its dtype's maximum) is used as it is: both said, naming the sample; a normalised image, or a
    raw integer one, trains without a word."""
    import warnings

    image, labels = cells
    raw = camera(image)
    with pytest.warns(UserWarning, match=r"sample: channel\(s\) \[0\] lie beyond the normalised range"):
        prepared(raw.astype(np.float32), labels)
    with pytest.warns(UserWarning, match=r"sample: channel\(s\) \[0\] span only \[0\.0"):
        prepared(raw / 65535.0, labels)  # skimage's img_as_float of a 12-bit image in 16 bits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepared(raw, labels)
        prepared(normalize_percentile(raw), labels)


def test_oriented_samples_are_used_as_they_are(cells):
    image, labels = cells
    raw = camera(image).astype(np.float32)
    np.testing.assert_array_equal(prepared(raw, labels, oriented=True), raw)


def test_an_image_whose_percentiles_coincide_is_normalised_once_as_at_prediction(cells):
    _, labels = cells
    image = np.full(labels.shape, 100, np.uint16)
    image[:3, :3] = 1000  # 0.09% of the pixels: the 1st and 99.8th percentiles are both 100
    normalised = normalize_percentile(image)  # the model's division by 1e-6 of the value (io.normalization_range)
    np.testing.assert_allclose(prepared(image, labels), normalised, rtol=1e-6)
    np.testing.assert_array_equal(prepared(normalised, labels), normalised)  # not divided again
    constant = prepared(np.full(labels.shape, 1000.0), labels)
    np.testing.assert_array_equal(constant, 0.0)


def test_samples_that_are_not_sample_are_refused_naming_sample(cells):
    image, labels = cells
    net_config, config = preset("fast", iterations=1, tile_size=60)
    model = UNet(replace(net_config, depth=3, base_channels=4))
    with pytest.raises(TypeError, match=r"napari_unet\.Sample\(image, labels\), got tuple"):
        Trainer(model, config, [(image, labels)], device="cpu")
    with pytest.raises(TypeError, match="validation sample 0.*Sample"):
        Trainer(model, config, [Sample(image, labels)], [(image, labels)], device="cpu")


@pytest.mark.parametrize("first", ["submodules", "exports"])
def test_every_exported_name_works_and_the_augment_submodule_stays_a_module_whatever_is_imported_first(first):
    """The submodule `napari_unet.augment` shares its name with the exported function: whatever is imported
    first, every exported name is usable (classes and functions: callable; `augment` computes a sample) and
    the submodule's attributes stay reachable (`napari_unet.augment.AugmentConfig`, `import ... as m`)."""
    code = f"""
import importlib
import numpy as np
import napari_unet

def submodules():
    global napari_unet
    for module in sorted(set(napari_unet._EXPORTS.values())):
        importlib.import_module("napari_unet." + module)
    import napari_unet.augment
    from napari_unet.augment import AugmentConfig

def exports():
    return {{name: getattr(napari_unet, name) for name in napari_unet.__all__}}

{"submodules(); found = exports()" if first == "submodules" else "found = exports(); submodules()"}
from napari_unet import augment
import napari_unet.augment as submodule
from napari_unet.augment import AugmentConfig
found = {{**found, **exports(), "from-import augment": augment}}
print(sorted(name for name, value in found.items() if not callable(value)))
image, target, weights = np.zeros((32, 32)), np.zeros((32, 32), np.uint8), np.ones((32, 32))
for function in (found["augment"], augment, napari_unet.augment):
    print([a.shape for a in function(image, target, weights, np.random.default_rng(0))])
print(napari_unet.augment.AugmentConfig is submodule.AugmentConfig is AugmentConfig is napari_unet.AugmentConfig)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:5] == ["[]", *["[(32, 32), (32, 32), (32, 32)]"] * 3, "True"]
