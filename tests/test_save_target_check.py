"""A model is saved to a new folder, an empty one or a napari-unet model folder; never over a folder of the user's
data. One check (`modelfolder.check_save_target`) for `napari-unet train --out` and the docks' Save model…."""

from __future__ import annotations

import json

import pytest

from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle, save_model
from napari_unet.modelfolder import check_save_target, is_napari_unet_model


def bundle() -> ModelBundle:
    return ModelBundle(UNet(depth=2, base_channels=4))


def data_folder(tmp_path):
    """An experiment's folder: the user's own config.json and weights.safetensors (another program's), notes."""
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"microscope": "LSM 980", "exposure_ms": 40}))
    (folder / "weights.safetensors").write_bytes(b"another program's weights")
    (folder / "notes.txt").write_text("keep me")
    return folder


def test_a_model_may_be_saved_to_a_new_or_empty_folder_or_over_a_napari_unet_model(tmp_path):
    assert check_save_target(tmp_path / "new") is False
    (tmp_path / "empty").mkdir()
    assert check_save_target(tmp_path / "empty") is False
    assert check_save_target(save_model(tmp_path / "model", bundle())) is True


def notes_folder(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    return tmp_path / "notes"


def a_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    return tmp_path / "file.txt"


@pytest.mark.parametrize(
    ("make", "message"),
    [(data_folder, "not a napari-unet model's"), (notes_folder, "not a model folder"), (a_file, "not a model folder")],
)
def test_a_folder_that_holds_something_else_is_refused_by_name(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=f"--out .*{message}.*choose a new path"):
        check_save_target(path, f"--out {path}")


def test_save_model_in_the_docks_never_replaces_the_users_data(tmp_path, monkeypatch):
    """The docks' Save model… wrote config.json and weights.safetensors over the user's files of those names (the
    CLI refused the folder). Now it is refused with a message, and saving to a new folder or over the session's
    own model folder works as before."""
    from napari_unet.plugin import _state

    errors = []
    monkeypatch.setattr(_state, "show_error", errors.append)
    monkeypatch.setattr(_state, "show_info", lambda _message: None)
    session = _state.Session()
    session.set_model(bundle())
    folder = data_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    assert session.save_model(folder) is None
    assert errors and "not a napari-unet model's" in errors[-1] and str(folder) in errors[-1]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    (folder / "config.json").unlink()  # no model files, but the user's notes: refused too
    assert session.save_model(folder) is None and "not a model folder" in errors[-1]
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "weights.safetensors"]

    saved = session.save_model(tmp_path / "model")
    assert saved == tmp_path / "model" and is_napari_unet_model(saved) and session.model_path == saved
    (saved / "results.csv").write_text("score\n0.9\n")
    assert session.save_model(saved) == saved and (saved / "results.csv").is_file()  # saved over: kept
