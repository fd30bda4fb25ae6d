"""A model folder is saved again without losing what else it holds, and never over another program's folder;
a save that cannot be written says so in one line and keeps the previous model."""

from __future__ import annotations

import json
import os

import pytest
import torch

from napari_unet.cli import main
from napari_unet.io import default_mode
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle, load_model, save_model
from napari_unet.modelfolder import is_napari_unet_model


def bundle(seed: int = 0) -> ModelBundle:
    torch.manual_seed(seed)
    return ModelBundle(UNet(depth=2, base_channels=4, dropout=0.0))


def test_saving_again_keeps_the_folders_other_files(tmp_path):
    """`train --resume` and `--overwrite` saved a new folder in place of the old one: notes and results the
    user kept in it were gone."""
    folder = save_model(tmp_path / "cells.model", bundle(0))
    (folder / "NOTES.txt").write_text("trained on the March images")
    (folder / "predictions").mkdir()
    (folder / "predictions" / "a_labels.tif").write_bytes(b"labels")
    save_model(folder, bundle(1), training_state={"step": 3})
    assert (folder / "NOTES.txt").read_text() == "trained on the March images"
    assert (folder / "predictions" / "a_labels.tif").read_bytes() == b"labels"
    assert torch.equal(load_model(folder).net.state_dict()["head.weight"], bundle(1).net.state_dict()["head.weight"])
    save_model(folder, bundle(2))  # no training state this time: the old one does not survive as a stale file
    assert not (folder / "training_state.pt").exists() and (folder / "NOTES.txt").exists()


def test_a_save_that_fails_keeps_the_previous_model_and_the_other_files(tmp_path, monkeypatch):
    """A full disk (or a file size limit) raised torch's RuntimeError / safetensors' error: a traceback, exit 1."""
    import safetensors.torch

    folder = save_model(tmp_path / "cells.model", bundle(0))
    (folder / "NOTES.txt").write_text("notes")
    before = (folder / "weights.safetensors").read_bytes()

    def full_disk(*_args, **_kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 17984 vs 17876")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="could not write the model to .*the previous one is kept"):
        save_model(folder, bundle(1))
    assert (folder / "weights.safetensors").read_bytes() == before and (folder / "NOTES.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.model"], "no temporary left"


def test_weights_get_the_umasks_permissions(tmp_path):
    """safetensors writes owner-only files: colleagues could read the config but not load the weights."""
    folder = save_model(tmp_path / "m", bundle())
    for name in ("config.json", "weights.safetensors"):
        assert (folder / name).stat().st_mode & 0o777 == default_mode(), name


def test_train_never_replaces_another_programs_folder(tmp_path, capsys):
    """A Hugging Face checkpoint has config.json and weights.safetensors too: `--overwrite` deleted its other
    files."""
    foreign = tmp_path / "hf_model"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (foreign / "weights.safetensors").write_bytes(b"\0" * 16)
    (foreign / "tokenizer.json").write_text("{}")
    assert not is_napari_unet_model(foreign)
    for extra in ([], ["--overwrite"]):
        assert main(["train", str(tmp_path / "images"), str(tmp_path / "labels"), "--out", str(foreign), *extra]) == 2
        assert "not a napari-unet model" in capsys.readouterr().err
    assert sorted(os.listdir(foreign)) == ["config.json", "tokenizer.json", "weights.safetensors"]
    assert is_napari_unet_model(save_model(tmp_path / "ours", bundle()))


def test_a_full_disk_is_an_error_before_the_labels_are_written_into_a_memory_map(tmp_path, monkeypatch):
    """predict's labels are a sparse memory-mapped TIFF: on a full disk the first write into a page killed the
    process with SIGBUS (exit 135, no message). Its space is allocated when it is created now."""
    import errno

    from napari_unet import pipeline

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(OSError, match="No space left"):
        pipeline._create_tiff(tmp_path / "a_labels.tif", (64, 64), "int32", "YX")

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    assert pipeline._create_tiff(tmp_path / "b_labels.tif", (64, 64), "int32", "YX").shape == (64, 64)


def test_annotations_of_two_images_of_one_name_autosaved_in_the_same_second_stay_apart(tmp_path, monkeypatch):
    """a/cells.tif and b/cells.tif in read-only folders: both went to <root>/annotations/cells-<second>.tif."""
    import numpy as np

    from napari_unet.plugin import _autosave

    (tmp_path / "a file").write_text("")  # a side-car path under a file: cannot be written, as a read-only folder
    monkeypatch.setattr(_autosave, "sidecar_path", lambda image: tmp_path / "a file" / "cells.tif.unet-labels.tif")
    monkeypatch.setattr(_autosave.time, "strftime", lambda *_args: "20261201-120000")
    images = [tmp_path / name / "cells.tif" for name in ("a", "b")]
    saved = [
        _autosave.save_annotations(np.full((8, 8), i + 1, np.uint16), tmp_path / "root", p, "cells")
        for i, p in enumerate(images)
    ]
    assert saved[0] != saved[1]
    for value, image in enumerate(images, start=1):
        assert (_autosave.load_annotations(_autosave.find_annotations(image, tmp_path / "root")) == value).all()


def test_a_model_is_not_saved_over_a_file(tmp_path):
    """Save model... onto an existing file replaced it with a model folder (and said "Model saved"): refused,
    the file kept."""
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt is a file: a model is saved as a folder"):
        save_model(tmp_path / "notes.txt", bundle())
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
