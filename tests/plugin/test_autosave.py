"""Autosave: an unreadable annotation index is kept aside, never overwritten, and a new one is started."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_unet.plugin._autosave import INDEX_FILE, find_annotations, save_annotations


def test_an_unreadable_index_is_kept_aside_and_a_new_one_started(tmp_path):
    root, images = tmp_path / "autosave", tmp_path / "images"
    images.mkdir()
    (images / "a.tif").write_bytes(b"")
    folder = root / "annotations"
    folder.mkdir(parents=True)
    damaged = '{"/data/earlier.tif": "/autosave/annotations/earlier.unet-labels.tif", '  # cut off mid-write
    (folder / INDEX_FILE).write_text(damaged)
    with pytest.warns(UserWarning, match="could not be read"):
        saved = save_annotations(np.ones((8, 8), np.int32), root, images / "a.tif", "a")
    kept = list(folder.glob(f"{INDEX_FILE}.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == damaged  # what it recorded is still there
    assert json.loads((folder / INDEX_FILE).read_text()) == {str((images / "a.tif").resolve()): str(saved.resolve())}
    saved.unlink()  # without the side-car file, the new index still finds nothing stale
    assert find_annotations(images / "a.tif", root) is None


def test_finding_annotations_with_an_unreadable_index_offers_nothing_and_keeps_the_file(tmp_path):
    folder = tmp_path / "annotations"
    folder.mkdir()
    (folder / INDEX_FILE).write_text("[1, 2")
    with pytest.warns(UserWarning, match="kept as index.json.corrupt-"):
        assert find_annotations(tmp_path / "cells.tif", tmp_path) is None
    assert not (folder / INDEX_FILE).exists() and len(list(folder.glob("index.json.corrupt-*"))) == 1
