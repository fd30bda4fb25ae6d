"""Built-in models by name: listing, resolving (a local model folder of the same name wins), describing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_unet import builtin
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle, load_model, save_model


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A package folder of built-in models holding a tiny `nuclei` model (diameter 20) and a broken entry."""
    folder = tmp_path / "builtin_models"
    save_model(
        folder / "nuclei",
        ModelBundle(
            UNet(depth=2, base_channels=2),
            object_diameter=20.0,
            metadata={
                "description": "tiny test model",
                "citations": ["Someone 2019"],
                "license": "CC0",
                "training_data": {"set-a": ["1.png", "2.png"], "set-b": ["3.png"]},
            },
        ),
    )
    (folder / "not_a_model").mkdir()
    monkeypatch.setattr(builtin, "BUILTIN_DIR", folder)
    monkeypatch.chdir(tmp_path)
    return folder


def test_names_list_only_model_folders(shipped):
    assert builtin.names() == ["nuclei"]


def test_load_model_by_name(shipped):
    bundle = load_model("nuclei")
    assert bundle.object_diameter == 20.0 and bundle.net.config.depth == 2
    assert builtin.resolve("builtin:nuclei") == shipped / "nuclei"


def test_a_local_model_folder_of_the_same_name_wins_and_builtin_prefix_still_reaches_the_builtin(shipped, tmp_path):
    save_model(tmp_path / "nuclei", ModelBundle(UNet(depth=3, base_channels=2)))
    assert builtin.shadowed("nuclei")
    assert load_model("nuclei").net.config.depth == 3
    assert load_model("builtin:nuclei").net.config.depth == 2


def test_a_local_folder_that_is_not_a_model_does_not_hide_the_builtin(shipped, tmp_path):
    (tmp_path / "nuclei").mkdir()
    assert not builtin.shadowed("nuclei")
    assert load_model("nuclei").net.config.depth == 2


def test_unknown_names_say_what_exists(shipped):
    with pytest.raises(ValueError, match="not a napari-unet model folder.*nor a built-in model \\(nuclei\\)"):
        load_model("cyto")
    with pytest.raises(ValueError, match="no built-in model named 'cyto'.*nuclei"):
        load_model("builtin:cyto")


def test_describe_reads_the_config_without_loading_weights(shipped):
    info = builtin.describe("nuclei")
    assert info["object_diameter"] == 20.0 and info["description"] == "tiny test model"
    assert info["training_data"] == {"set-a": 2, "set-b": 1}
    assert info["citations"] == ["Someone 2019"] and info["weights_bytes"] > 0
    assert "depth 2" in info["architecture"]
    json.dumps(info)


def test_the_shipped_nuclei_model_loads_with_its_object_diameter():
    if "nuclei" not in builtin.names():
        pytest.skip("the built-in nuclei model's weights are not in this checkout (src/napari_unet/builtin_models)")
    bundle = load_model("nuclei")
    assert bundle.object_diameter and bundle.net.config.in_channels == 1
    assert builtin.describe("nuclei")["weights_bytes"] <= 20e6


def test_the_shipped_nuclei_model_segments_rgb_images_as_their_luminance(tmp_path):
    """An RGB image (H&E, brightfield) needs no channel choice with the built-in model: `predict nuclei` on an RGB
    PNG gives the labels of its luminance (the channel choice saved with the model, `ChannelChoice(grey=True)`)."""
    if "nuclei" not in builtin.names():
        pytest.skip("the built-in nuclei model's weights are not in this checkout (src/napari_unet/builtin_models)")
    from PIL import Image

    from napari_unet.channels import ChannelChoice
    from napari_unet.cli import main
    from napari_unet.io import read_image
    from napari_unet.synthetic import make_cells

    image, _ = make_cells((160, 160), seed=3)
    grey = np.clip(255 * (image - image.min()) / np.ptp(image), 0, 255)
    rgb = np.stack([grey * 0.9, grey * 0.5, grey], axis=-1).astype(np.uint8)  # purple-ish nuclei
    Image.fromarray(rgb).save(tmp_path / "stain.png")
    bundle = load_model("nuclei")
    assert bundle.channels == ChannelChoice(grey=True)
    assert main(["predict", "nuclei", str(tmp_path / "stain.png"), "--out", str(tmp_path / "out")]) == 0
    labels = read_image(tmp_path / "out" / "stain_labels.tif")[0]
    luminance, axes = ChannelChoice(grey=True).apply(read_image(tmp_path / "stain.png")[0], "CYX")
    assert axes == "YX"
    expected = bundle.segment(np.asarray(luminance), diameter="auto", device="cpu")
    np.testing.assert_array_equal(labels, expected)
    assert labels.max() > 0
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)  # as imageio reads PNGs
    np.testing.assert_array_equal(bundle.segment(rgba, diameter="auto", device="cpu"), expected)  # alpha dropped
