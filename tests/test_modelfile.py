"""Model folders: round trip, atomic replacement, clear errors for corrupted or foreign files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle, Normalization, is_model_folder, load_model, save_model
from napari_unet.postprocess import PostprocessConfig


def bundle() -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(
        UNet(depth=3, base_channels=4, in_channels=2, batch_norm=True),
        Normalization(2.0, 99.0),
        PostprocessConfig(threshold=0.4, min_size=7),
        {"iterations": 12, "seed": 3},
    )


def test_round_trip_rebuilds_the_same_model(tmp_path):
    original = bundle()
    folder = save_model(tmp_path / "model", original)
    assert is_model_folder(folder)
    loaded = load_model(folder)
    assert loaded.net.config == original.net.config
    assert loaded.normalization == original.normalization and loaded.postprocess == original.postprocess
    assert loaded.metadata["iterations"] == 12 and "torch_version" in loaded.metadata
    for (name, a), (_, b) in zip(original.net.state_dict().items(), loaded.net.state_dict().items()):
        assert torch.equal(a, b), name
    image = np.random.default_rng(0).random((2, 40, 40)).astype(np.float32) * 1000
    np.testing.assert_allclose(loaded.predict(image, device="cpu"), original.predict(image, device="cpu"), atol=1e-6)


def test_predict_normalises_with_percentiles():
    model = bundle()
    image = np.random.default_rng(1).random((2, 50, 60)).astype(np.float32)
    np.testing.assert_allclose(
        model.predict(image * 50 + 7, device="cpu"), model.predict(image, device="cpu"), atol=1e-4
    )
    labels = model.segment(image, device="cpu")
    assert labels.shape == (50, 60) and labels.dtype == np.int32


def test_network_input_keeps_a_lazy_plane_lazy_at_scale_1_and_reads_checks_and_rescales_it_otherwise():
    import dask.array as da

    model = bundle()
    image = np.random.default_rng(2).random((2, 40, 60)).astype(np.float32) * 100 + 5
    lazy = da.from_array(image, chunks=(2, 20, 20))
    plane, preprocess = model.network_input(lazy, 1.0, check=True)
    assert plane is lazy  # read window by window later
    np.testing.assert_allclose(preprocess(image[:, :8, :8]), model.preprocessor(image)(image[:, :8, :8]))
    plane, preprocess = model.network_input(lazy, 0.5)
    assert isinstance(plane, np.ndarray) and plane.shape == (2, 20, 30)
    # the percentiles are those of the plane as given, not of the rescaled one
    np.testing.assert_allclose(preprocess(image[:, :8, :8]), model.preprocessor(image)(image[:, :8, :8]))
    assert model.network_input(lazy, 1.0, tta=True)[0].shape == (2, 40, 60)
    broken = image.copy()
    broken[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        model.network_input(da.from_array(broken, chunks=(2, 20, 20)), 0.5, check=True)
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        model.network_input(broken, 1.0, check=True)


def test_saving_over_an_existing_model_replaces_it_whole(tmp_path):
    save_model(tmp_path / "m", bundle())
    other = ModelBundle(UNet(depth=2, base_channels=2))
    save_model(tmp_path / "m", other)
    assert load_model(tmp_path / "m").net.config.depth == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging leftovers


def test_a_file_inside_the_folder_is_accepted(tmp_path):
    folder = save_model(tmp_path / "m", bundle())
    assert load_model(folder / "config.json").net.config.depth == 3


def _nan_weights(folder):
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "weights.safetensors")
    for name in [name for name, value in state.items() if value.is_floating_point()][:2]:
        state[name].view(-1)[0] = float("nan")
    save_file(state, folder / "weights.safetensors")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "weights.safetensors").write_bytes(b"garbage"), "corrupted"),
        (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda f: (f / "config.json").write_text(json.dumps({"format": "keras"})), "not a napari-unet model config"),
        (lambda f: (f / "weights.safetensors").unlink(), "not a napari-unet model folder"),
        (
            lambda f: (f / "config.json").write_text(
                json.dumps({**json.loads((f / "config.json").read_text()), "unet": {"depth": 4}})
            ),
            "do not match its config.json",
        ),
        (
            lambda f: (f / "config.json").write_text(
                json.dumps({**json.loads((f / "config.json").read_text()), "format_version": 99})
            ),
            "newer napari-unet",
        ),
        (_nan_weights, r"not finite numbers \(NaN or infinity, in \S+ and 1 more\)"),
    ],
    ids=["weights", "json", "foreign", "missing", "mismatch", "newer", "nan"],
)
def test_damaged_folders_give_clear_errors(tmp_path, damage, message):
    folder = save_model(tmp_path / "m", bundle())
    damage(folder)
    with pytest.raises(ValueError, match=message):
        load_model(folder)


def test_weights_file_runs_no_code(tmp_path):
    """safetensors holds tensors only: a pickle payload in its place is rejected, never executed."""
    folder = save_model(tmp_path / "m", bundle())
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("boom",))

    torch.save({"x": Payload()}, folder / "weights.safetensors")
    with pytest.raises(ValueError, match="corrupted"):
        load_model(folder)
    assert not marker.exists()


def test_a_folder_saved_before_the_config_convention_still_loads(tmp_path):
    """A config.json as version 0.1.0 wrote it: earlier post-processing keys only, the training config of the
    time (w0 10, sigma 5, 400 iterations, no growth calibration) with its augmentation ranges as JSON lists."""
    from napari_unet.augment import AugmentConfig
    from napari_unet.training import TrainConfig

    folder = save_model(tmp_path / "old", bundle())
    old_training = {
        "iterations": 400,
        "optimizer": "adam",
        "learning_rate": 0.001,
        "momentum": 0.99,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "tile_size": 252,
        "batch_size": 1,
        "w0": 10.0,
        "sigma": 5.0,
        "border": 1,
        "augment": {"elastic_grid": 3, "elastic_sigma": 10.0, "contrast": [0.75, 1.33], "gamma": [0.75, 1.33]},
        "validate_every": 100,
        "checkpoint_every": 100,
        "seed": 0,
        "time_budget": None,
    }
    (folder / "config.json").write_text(
        json.dumps(
            {
                "format": "napari-unet-model",
                "format_version": 1,
                "unet": {
                    "in_channels": 2,
                    "num_classes": 2,
                    "depth": 3,
                    "base_channels": 4,
                    "padding": "valid",
                    "batch_norm": True,
                    "dropout": 0.5,
                    "convs_per_level": 2,
                },
                "normalization": {"low": 2.0, "high": 99.0},
                "postprocess": {"threshold": 0.4, "min_size": 7, "fill_holes": True},
                "metadata": {"iterations": 12, "training": old_training},
            }
        )
    )
    loaded = load_model(folder)
    assert loaded.postprocess == PostprocessConfig(threshold=0.4, min_size=7)
    assert loaded.normalization == Normalization(2.0, 99.0)
    training = TrainConfig.from_dict(loaded.metadata["training"])
    assert (training.w0, training.sigma, training.iterations, training.calibrate_growth) == (10.0, 5.0, 400, True)
    assert training.augment == AugmentConfig()  # the lists came back as the tuples of the defaults


def test_inversion_turns_a_bright_background_dark_and_is_saved(tmp_path):
    from napari_unet.model import UNet
    from napari_unet.modelfile import ModelBundle, Normalization, load_model, save_model

    rng = np.random.default_rng(0)
    brightfield = 200 - 150 * (rng.random((64, 64)) > 0.9) + rng.normal(0, 2, (64, 64))  # dark objects
    fluorescence = 255 - brightfield
    auto = ModelBundle(UNet(depth=2, base_channels=4), Normalization(invert="auto"))
    plain = ModelBundle(UNet(depth=2, base_channels=4))
    for image in (brightfield, fluorescence):
        out = auto.preprocessor(image[None])(image[None].astype(np.float32))
        assert np.median(out) < 0.5  # both come out with a dark background
    bright = plain.preprocessor(brightfield[None])(brightfield[None].astype(np.float32))
    flipped = auto.preprocessor(brightfield[None])(brightfield[None].astype(np.float32))
    np.testing.assert_allclose(flipped, 1 - bright, atol=1e-4)
    np.testing.assert_allclose(Normalization(invert="auto").apply_polarity(bright), flipped, atol=1e-4)
    assert Normalization(invert=True).flips(np.array([0.1])).all()
    saved = load_model(save_model(tmp_path / "m", auto))
    assert saved.normalization.invert == "auto"
    assert load_model(save_model(tmp_path / "p", plain)).normalization.invert is False
    with pytest.raises(ValueError, match="invert"):
        Normalization(invert="yes")


def test_a_model_folder_is_recognised_without_importing_torch(tmp_path):
    """napari asks the reader about every dropped path: telling a model folder must not import torch."""
    save_model(tmp_path / "ours", ModelBundle(UNet(depth=2, base_channels=4)))
    other = tmp_path / "checkpoint"  # another program's folder with files of the same names
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    (other / "weights.safetensors").write_bytes(b"")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"format": "napari-unet-')
    (broken / "weights.safetensors").write_bytes(b"")
    script = (
        "import sys\n"
        "from napari_unet.modelfolder import config_format, is_napari_unet_model\n"
        "print([is_napari_unet_model(sys.argv[1] + '/' + name) for name in ('ours', 'checkpoint', 'broken')])\n"
        "try:\n"
        "    config_format(sys.argv[1] + '/broken')\n"
        "except ValueError:\n"
        "    print('not JSON')\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:3] == ["[True, False, False]", "not JSON", "False"], result.stdout


def test_auto_polarity_inverts_a_bright_background_where_dark_objects_cover_most_of_the_image():
    """Dense dark nuclei on a bright background (histology): the median is dark, the most common value (the
    background) bright; "auto" inverts it in prediction and in training alike (it was seen with dark nuclei)."""
    from napari_unet.modelfile import Normalization

    rng = np.random.default_rng(0)
    image = np.full((120, 120), 200.0, np.float32)
    image[:, :72] = 60.0 + rng.normal(0, 12, (120, 72))  # 60 % dark nuclei, spread values; background one level
    image[:, 72:] += rng.normal(0, 1, (120, 48))
    bundle = ModelBundle(UNet(depth=2, base_channels=4), Normalization(invert="auto"))
    normalised = np.asarray(bundle.preprocessor(image, "YX")(image)).reshape(image.shape)
    assert np.median(normalised[:, 72:]) < 0.1 and np.median(normalised[:, :72]) > 0.7  # inverted: bright nuclei
    lo, hi = np.percentile(image, [1.0, 99.8])
    trained = bundle.normalization.apply_polarity(((image - lo) / (hi - lo))[None])[0]
    np.testing.assert_allclose(trained, normalised, atol=1e-5)
    assert not Normalization(invert="auto").flips(((image[:, :72] - lo) / (hi - lo)).reshape(1, -1))[0]


@pytest.mark.parametrize("invert", [False, True, "auto"])
def test_predictions_do_not_depend_on_the_images_units(invert):
    """An image scaled by 1e-8 (a float image in other units) is seen as the image, also inverted; with
    "auto" its polarity is decided as the image's (a bright background: inverted)."""
    from napari_unet.synthetic import make_cells

    torch.manual_seed(0)
    model = ModelBundle(UNet(depth=2, base_channels=4), Normalization(invert=invert))
    image = 1.0 - make_cells((48, 48), seed=4)[0]  # dark cells on a bright background
    expected = model.predict(image, diameter=None, device="cpu")
    np.testing.assert_allclose(model.predict(image * 1e-8, diameter=None, device="cpu"), expected, atol=1e-5)
    auto = model.preprocessor(image[None])(image[None])
    np.testing.assert_allclose(model.preprocessor(image[None] * 1e-8)(image[None] * 1e-8), auto, atol=1e-5)


def test_an_empty_image_is_refused_with_its_shape():
    model = ModelBundle(UNet(depth=2, base_channels=4), object_diameter=20.0)
    for call in (model.predict, model.segment):
        for diameter in (None, "auto"):
            with pytest.raises(ValueError, match=r"the image is empty: shape \(0, 10\)"):
                call(np.zeros((0, 10), np.float32), diameter=diameter, device="cpu")


def test_a_memory_mapped_complex_image_is_refused_by_name(tmp_path):
    """`segment` on a complex TIFF read by `read_image` (memory-mapped) failed with numpy's "a must be an array
    of real numbers"; the kind of numbers is checked for every image, lazy or not."""
    import tifffile

    from napari_unet.io import read_image
    from napari_unet.validation import DtypeError

    tifffile.imwrite(tmp_path / "c.tif", (np.random.default_rng(0).random((64, 64)) * (1 + 1j)).astype(np.complex64))
    image, _ = read_image(tmp_path / "c.tif")
    assert isinstance(image, np.memmap)
    bundle = ModelBundle(UNet(depth=2, base_channels=4))
    with pytest.raises(DtypeError, match="complex"):
        bundle.segment(image, diameter=None)


def test_load_model_chooses_its_device_as_everything_else_does(tmp_path):
    """`load_model(..., device="auto")` said the weights file was corrupted, and `device="cuda"` without CUDA
    that the weights did not match config.json: the device goes through `device.select_device` first."""
    from napari_unet.device import select_device

    folder = save_model(tmp_path / "model", bundle())
    for device in ("auto", "cpu", torch.device("cpu")):
        loaded = load_model(folder, device=device)
        assert next(loaded.net.parameters()).device.type == select_device(device).type
    with pytest.raises(ValueError, match="device must be one of"):
        load_model(folder, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here"):
            load_model(folder, device="cuda")
