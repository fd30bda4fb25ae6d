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
from napari_unet.modelfile import ModelBundle, is_napari_unet_model, load_model, save_model


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
        assert "of another program" in capsys.readouterr().err
    assert sorted(os.listdir(foreign)) == ["config.json", "tokenizer.json", "weights.safetensors"]
    assert is_napari_unet_model(save_model(tmp_path / "ours", bundle()))
