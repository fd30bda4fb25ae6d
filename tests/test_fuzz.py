"""Fuzzing the readers and the model-folder loader with hypothesis: random bytes, truncations, flipped bytes and
random JSON never end in anything but a clear ValueError / OSError (or a valid result), and never run code.
"""

from __future__ import annotations

import io as stdio
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_unet.io import read_image, read_labels, write_tiff
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle, load_model, save_model

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CLEAR = (ValueError, OSError)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of small valid files: TIFFs of several dtypes and layouts, a PNG, a JPEG."""
    folder = tmp_path_factory.mktemp("valid")
    rng = np.random.default_rng(0)
    write_tiff(folder / "u16.tif", rng.integers(0, 9, (12, 10), dtype=np.uint16), "YX")
    write_tiff(folder / "f32.tif", rng.random((2, 12, 10), dtype=np.float32), "CYX")
    write_tiff(folder / "i32.tif", rng.integers(-1, 5, (12, 10), dtype=np.int32), "YX")
    write_tiff(folder / "zlib.tif", rng.integers(0, 9, (3, 12, 10), dtype=np.uint8), "ZYX", compression="zlib")
    Image.fromarray(rng.integers(0, 255, (12, 10), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(folder / "rgb.jpg")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> dict[str, bytes]:
    folder = save_model(
        tmp_path_factory.mktemp("model") / "m",
        ModelBundle(UNet(depth=2, base_channels=2)),
        training_state={"iteration": 1},
    )
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def read_all_ways(path: Path) -> None:
    """read_image and read_labels: either a result, or a clear error."""
    for reader in (read_image, read_labels):
        try:
            result = reader(path)
        except CLEAR as error:
            assert str(error)
        else:
            array = np.asarray(result[0] if isinstance(result, tuple) else result)
            assert array.ndim >= 2


SUFFIXES = (".tif", ".png", ".jpg")


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_are_a_clear_error(tmp_path, data, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(data)
    read_all_ways(path)


@FUZZ
@given(
    name=st.sampled_from(["u16.tif", "f32.tif", "i32.tif", "zlib.tif", "grey.png", "rgb.jpg"]),
    fraction=st.floats(0.0, 1.0),
)
def test_truncated_files_are_a_clear_error(tmp_path, samples, name, fraction):
    data = samples[name]
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * fraction)])
    read_all_ways(path)


@FUZZ
@given(
    name=st.sampled_from(["u16.tif", "f32.tif", "i32.tif", "zlib.tif", "grey.png"]),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_corrupted_bytes_are_a_clear_error(tmp_path, samples, name, flips):
    data = bytearray(samples[name])
    for position, value in flips:
        data[position % len(data)] = value
    path = tmp_path / name
    path.write_bytes(bytes(data))
    read_all_ways(path)


# ----------------------------------------------------------------------------------------------- models


def write_model(folder: Path, files: dict[str, bytes]) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def load_clearly(folder: Path) -> None:
    try:
        bundle = load_model(folder)
    except ValueError as error:
        assert str(folder) in str(error) or "config" in str(error)
    else:
        assert isinstance(bundle.net, UNet)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
FIELDS = ("in_channels", "num_classes", "depth", "base_channels", "padding", "batch_norm", "dropout", "convs_per_level")


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_config_bytes(tmp_path, model_bytes, data):
    load_clearly(write_model(tmp_path / "m", {**model_bytes, "config.json": data}))


@FUZZ
@given(
    section=st.sampled_from(["unet", "normalization", "postprocess", "metadata", "format_version", "format"]),
    value=JSON,
)
def test_random_json_in_each_config_section(tmp_path, model_bytes, section, value):
    config = json.loads(model_bytes["config.json"])
    config[section] = value
    load_clearly(write_model(tmp_path / "m", {**model_bytes, "config.json": json.dumps(config).encode()}))


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS), JSON, min_size=1, max_size=3))
def test_random_values_of_the_network_fields(tmp_path, model_bytes, changes):
    config = json.loads(model_bytes["config.json"])
    config["unet"].update(changes)
    load_clearly(write_model(tmp_path / "m", {**model_bytes, "config.json": json.dumps(config).encode()}))


@FUZZ
@given(fraction=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6))
def test_truncated_or_corrupted_weights(tmp_path, model_bytes, fraction, flips):
    data = bytearray(model_bytes["weights.safetensors"])
    data = data[: max(1, int(len(data) * fraction))]
    for position, value in flips:
        data[position % len(data)] = value
    load_clearly(write_model(tmp_path / "m", {**model_bytes, "weights.safetensors": bytes(data)}))


class Exploit:
    """A pickle that would create a file if it were ever unpickled by a full (not weights-only) loader."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_hostile_training_state_runs_no_code(tmp_path, model_bytes):
    import torch

    from napari_unet.synthetic import make_cells
    from napari_unet.training import Sample, Trainer

    folder = write_model(tmp_path / "m", model_bytes)
    marker = tmp_path / "pwned"
    buffer = stdio.BytesIO()
    torch.save({"iteration": Exploit(marker)}, buffer, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    (folder / "training_state.pt").write_bytes(buffer.getvalue())
    config = json.loads(model_bytes["config.json"])
    config["metadata"]["training"] = {"iterations": 2, "tile_size": 44}
    (folder / "config.json").write_text(json.dumps(config))
    image, labels = make_cells((48, 48), seed=0)
    with pytest.raises(ValueError, match="training state"):
        Trainer.resume(folder, [Sample(image, labels)], device="cpu")
    assert not marker.exists()


@FUZZ
@given(data=st.binary(max_size=256))
def test_an_unreadable_autosave_index_is_kept_aside(tmp_path, data):
    from napari_unet.plugin import _autosave

    root = tmp_path / "root"
    shutil.rmtree(root, ignore_errors=True)
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "index.json").write_bytes(data)
    found = _autosave.find_annotations(tmp_path / "image.tif", root)
    assert found is None
    kept = [p for p in (root / "annotations").iterdir() if p.name.startswith("index.json.unreadable")]
    index = root / "annotations" / "index.json"
    if kept:  # unreadable: moved aside unchanged, never overwritten
        assert kept[0].read_bytes() == data
    else:  # readable: left as it was
        assert index.read_bytes() == data
