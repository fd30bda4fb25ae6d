"""`predict --rois --zarr`: a rerun writes again the extras made from other labels (never keeps stale ones), and
a 2-D image stored as 5-D OME-Zarr (T = C = Z = 1) gets its ROIs.

A tiny untrained network keeps each run under a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import main
from napari_unet.io import write_tiff
from napari_unet.model import UNet, UNetConfig
from napari_unet.modelfile import ModelBundle, save_model
from napari_unet.ome_zarr import read_zarr, write_ome_zarr
from napari_unet.synthetic import make_cells

roifile = pytest.importorskip("roifile")


def tiny_model(folder: Path) -> Path:
    torch.manual_seed(0)
    return save_model(folder / "tiny.model", ModelBundle(UNet(UNetConfig(depth=2, base_channels=4))))


def predict(model: Path, source: Path, out: Path, *extra: str) -> int:
    return main(["predict", str(model), str(source), "--out", str(out), "--device", "cpu", "-q", *extra])


def extras_objects(out: Path, name: str) -> tuple[int, int, int]:
    """Objects in (the labels TIFF, the --zarr store, the --rois zip) of the image `name`."""
    from napari_unet.roi import read_rois

    labels = tifffile.imread(out / f"{name}_labels.tif")
    stored = np.asarray(read_zarr(out / f"{name}_labels.ome.zarr")[0])
    rois = read_rois(out / f"{name}_rois.zip", labels.shape)
    return tuple(len(np.unique(x[x > 0])) for x in (labels, stored, rois))


def test_a_rerun_writes_again_the_extras_of_labels_changed_since(tmp_path, capsys):
    """The audit's case: --zarr --rois; then --threshold 0.3 --overwrite without them (new labels); then
    --threshold 0.3 --zarr --rois skipped the image and kept the extras of the first labels (58 objects against
    the labels' 37)."""
    model, folder, out = tiny_model(tmp_path), tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write_tiff(folder / "a.tif", (make_cells((128, 128), seed=2)[0] * 1000).astype(np.uint16), "YX")
    assert predict(model, folder, out, "--threshold", "0.55", "--zarr", "--rois") == 0
    first = extras_objects(out, "a")
    assert first[0] > 1 and len(set(first)) == 1
    assert predict(model, folder, out, "--threshold", "0.7", "--overwrite") == 0  # new labels, extras untouched
    assert predict(model, folder, out, "--threshold", "0.7", "--zarr", "--rois") == 0  # skipped: labels done
    now = extras_objects(out, "a")
    assert now[0] != first[0]  # other labels
    assert len(set(now)) == 1  # the extras are theirs
    written = {p: p.stat().st_mtime_ns for p in (out / "a_rois.zip", out / "a_labels.ome.zarr" / ".zattrs")}
    assert predict(model, folder, out, "--threshold", "0.7", "--zarr", "--rois") == 0
    assert {p: p.stat().st_mtime_ns for p in written} == written  # made from these labels: kept
    (out / ".a_rois.zip.napari-unet").unlink()  # an ROI zip that records nothing (an earlier version's): rewritten
    assert predict(model, folder, out, "--threshold", "0.7", "--rois") == 0
    assert (out / ".a_rois.zip.napari-unet").is_file()


def test_a_rerun_rewrites_the_extras_an_earlier_version_wrote_without_a_record(tmp_path, capsys):
    """The review's case: extras an earlier predict wrote (no `EXTRAS_RECORD`, no hidden record beside the zip)
    beside labels that record these settings were refused as another program's, and only --overwrite (segmenting
    everything again) got past them: they are now written again from the labels."""
    from napari_unet.roi import write_rois

    model, folder, out = tiny_model(tmp_path), tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    write_tiff(folder / "a.tif", (make_cells((128, 128), seed=2)[0] * 1000).astype(np.uint16), "YX")
    assert predict(model, folder, out, "--threshold", "0.55") == 0
    labels = tifffile.imread(out / "a_labels.tif")
    assert labels.max() > 1
    stale = np.where(labels == 1, 1, 0).astype(labels.dtype)  # one object: not these labels
    write_ome_zarr(out / "a_labels.ome.zarr", stale, "YX")
    write_rois(out / "a_rois.zip", stale)
    assert predict(model, folder, out, "--threshold", "0.55", "--zarr", "--rois") == 0
    assert len(set(extras_objects(out, "a"))) == 1  # made from the labels
    assert read_zarr(out / "a_labels.ome.zarr")[0].shape == labels.shape
    assert (out / ".a_rois.zip.napari-unet").is_file()
    import shutil

    shutil.rmtree(out / "a_labels.ome.zarr")
    (out / "a_labels.ome.zarr").write_text("not a store")  # what no rewrite replaces: refused before any work
    assert predict(model, folder, out, "--threshold", "0.55", "--zarr") == 2
    assert "a_labels.ome.zarr is a file" in capsys.readouterr().err


def test_rois_of_a_2d_image_stored_as_5d_ome_zarr(tmp_path):
    """The audit's case: a single plane saved as standard 5-D OME-Zarr (T = C = Z = 1) was refused by --rois as
    a time series of stacks: the axes were counted, not those longer than 1."""
    model, out = tiny_model(tmp_path), tmp_path / "out"
    plane = (make_cells((128, 128), seed=2)[0] * 1000).astype(np.uint16)
    store = write_ome_zarr(tmp_path / "one.ome.zarr", plane[None, None, None], "TZCYX")
    assert read_zarr(store)[1] == "TZCYX"
    assert predict(model, store, out, "--threshold", "0.55", "--rois") == 0
    labels = tifffile.imread(out / "one_labels.tif")
    assert labels.max() > 1
    from napari_unet.roi import read_rois

    rois = read_rois(out / "one_rois.zip", plane.shape)
    assert len(np.unique(rois[rois > 0])) == len(np.unique(labels[labels > 0]))  # one ROI per object
    assert predict(model, store, out, "--threshold", "0.55", "--rois") == 0  # a rerun (skipped) too
    time_series = tmp_path / "ts.ome.zarr"  # T and Z longer than 1: still refused
    write_ome_zarr(time_series, np.stack([np.stack([plane, plane])] * 2)[:, :, None], "TZCYX")
    assert predict(model, time_series, tmp_path / "out2", "--rois") == 2


def test_rois_of_a_time_series_stored_as_5d_ome_zarr(tmp_path):
    """The review's case: a time series (T = 3, Z = C = 1) in 5-D OME-Zarr passed `_check_rois`, was segmented,
    then failed writing its ROI zip (only the leading axes of length 1 were dropped, not Z): one zip, 3 positions."""
    from napari_unet.roi import read_rois

    model, out = tiny_model(tmp_path), tmp_path / "out"
    planes = np.stack([(make_cells((96, 96), seed=s)[0] * 1000).astype(np.uint16) for s in range(3)])
    store = write_ome_zarr(tmp_path / "ts.ome.zarr", planes[:, None, None], "TZCYX")
    assert predict(model, store, out, "--threshold", "0.55", "--rois") == 0
    labels = tifffile.imread(out / "ts_labels.tif").reshape(3, 96, 96)
    assert all(plane.max() > 0 for plane in labels)
    rois = read_rois(out / "ts_rois.zip", labels.shape)
    assert rois.shape == labels.shape
    assert [len(np.unique(r[r > 0])) for r in rois] == [len(np.unique(p[p > 0])) for p in labels]
