"""Channel choice: picking channels and grey conversion, saved with the model; old model folders still load."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest

from napari_unet.channels import ChannelChoice, parse_channels
from napari_unet.model import UNet
from napari_unet.modelfile import CONFIG_FILE, ModelBundle, load_model, save_model


def test_grey_of_rgb_is_skimage_rgb2gray():
    from skimage.color import rgb2gray

    rgb = np.random.default_rng(0).random((3, 16, 20)).astype(np.float32)
    grey, axes = ChannelChoice(grey=True).apply(rgb, "CYX")
    assert axes == "YX"
    np.testing.assert_allclose(grey, rgb2gray(np.moveaxis(rgb, 0, -1)), atol=1e-6)


def test_pick_order_and_mean_on_stacks_and_dask():
    image = np.arange(2 * 4 * 3 * 5, dtype=np.float32).reshape(2, 4, 3, 5)  # (Z, C, Y, X)
    picked, axes = ChannelChoice((3, 1)).apply(image, "ZCYX")
    assert axes == "ZCYX" and np.array_equal(picked, image[:, [3, 1]])
    one, axes = ChannelChoice((2,)).apply(image, "ZCYX")
    assert axes == "ZYX" and np.array_equal(one, image[:, 2])
    mean, axes = ChannelChoice((0, 1), grey=True).apply(da.from_array(image), "ZCYX")
    assert axes == "ZYX" and isinstance(mean, da.Array)
    np.testing.assert_allclose(mean.compute(), image[:, :2].mean(axis=1))


def test_identity_and_single_channel_images():
    grey = np.ones((4, 4))
    assert ChannelChoice().apply(grey, "YX")[0] is grey
    assert ChannelChoice(grey=True).apply(grey, "YX")[1] == "YX"
    with pytest.raises(ValueError, match="one channel"):
        ChannelChoice((0, 1)).apply(grey, "YX")
    with pytest.raises(ValueError, match="channel 3 was asked for but the image has 3"):
        ChannelChoice((3,)).apply(np.ones((3, 4, 4)), "CYX")
    with pytest.raises(ValueError, match="distinct"):
        ChannelChoice((1, 1))
    assert parse_channels("0, 2") == (0, 2)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_channels("red")


def test_the_choice_is_saved_and_checked(tmp_path):
    bundle = ModelBundle(UNet(depth=2, base_channels=4), channels=ChannelChoice((0, 2), grey=True))
    folder = save_model(tmp_path / "m", bundle)
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["input"] == {"in_channels": 1, "channels": [0, 2], "grey": True}
    loaded = load_model(folder)
    assert loaded.channels == bundle.channels
    image, axes = loaded.prepare(np.ones((3, 20, 20)), "CYX")
    assert axes == "YX"
    with pytest.raises(ValueError, match=r"expects 1 channel\(s\) \(1 channel: grey.*--channels 0 / the Channels"):
        loaded.prepare(np.ones((3, 20, 20)), "CYX", choice=ChannelChoice((0, 1)))


def test_model_folders_without_an_input_entry_load_as_before(tmp_path):
    folder = save_model(tmp_path / "old", ModelBundle(UNet(in_channels=2, depth=2, base_channels=4)))
    config = json.loads((folder / CONFIG_FILE).read_text())
    del config["input"]
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    loaded = load_model(folder)
    assert loaded.channels == ChannelChoice() and loaded.net.config.in_channels == 2
    assert loaded.prepare(np.ones((2, 20, 20)), "CYX")[1] == "CYX"
    with pytest.raises(ValueError, match="expects 2 channel.*use an image with 2 channels, or a model trained on 1-"):
        loaded.prepare(np.ones((20, 20)), "YX")
    with pytest.raises(ValueError, match=r"gives 3 .*choose 2 channels \(e.g. --channels 0,1 "):
        loaded.prepare(np.ones((3, 20, 20)), "CYX")
