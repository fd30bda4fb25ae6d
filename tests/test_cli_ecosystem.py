"""The command line's ecosystem commands: measure, rois, export, predict --measure/--rois, pixel sizes, and RGB
and two-channel images through train -> predict -> measure (tiny networks, 3 iterations)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_unet.cli import main
from napari_unet.io import default_mode, read_image, write_tiff
from napari_unet.measure import measure
from napari_unet.metadata import PixelSize, read_pixel_size, tiff_calibration
from napari_unet.modelfile import load_model
from napari_unet.pipeline import read_input
from napari_unet.synthetic import make_cells

TINY = ["--depth", "2", "--base-channels", "4", "--tile-size", "44", "--device", "cpu", "-q"]


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def he_like(grey: np.ndarray) -> np.ndarray:
    """An H&E-looking RGB image (H, W, 3) uint8: pink background, purple cells."""
    pink, purple = np.array([235, 180, 215]), np.array([90, 40, 140])
    t = np.clip(grey, 0, 1)[..., None]
    return ((1 - t) * pink + t * purple).astype(np.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """rgb/ (H&E-like PNGs), two/ (nucleus + cytoplasm TIFFs with a pixel size), labels/ (uint16 ids)."""
    root = tmp_path_factory.mktemp("eco")
    for name in ("rgb", "two", "labels"):
        (root / name).mkdir()
    for i in range(3):
        image, labels = make_cells((72, 80), seed=30 + i)
        Image.fromarray(he_like(image)).save(root / "rgb" / f"0{i}.png")
        nucleus = (image * 3000).astype(np.uint16)
        cytoplasm = (np.roll(image, 2, axis=0) * 1500 + 200).astype(np.uint16)
        calibration, metadata = tiff_calibration(PixelSize(0.5, 0.5, "um"), imagej=True)
        tifffile.imwrite(
            root / "two" / f"0{i}.tif",
            np.stack([nucleus, cytoplasm]),
            imagej=True,
            metadata={"axes": "CYX", **metadata},
            **calibration,
        )
        write_tiff(root / "labels" / f"0{i}.tif", labels.astype(np.uint16), "YX")
    return root


@pytest.mark.parametrize("kind", ["rgb", "two"])
def test_train_predict_measure_multichannel(folders, kind, tmp_path, capsys):
    model = tmp_path / f"{kind}.model"
    code, _, err = run(capsys, "train", folders / kind, folders / "labels", "--out", model, "--iterations", "3", *TINY)
    assert code == 0, err
    assert load_model(model).net.config.in_channels == (3 if kind == "rgb" else 2)
    code, out, _ = run(capsys, "info", model)
    assert f"input: {3 if kind == 'rgb' else 2} channels: all channels" in out
    out_dir = tmp_path / "out"
    code, stdout, err = run(
        capsys,
        "predict",
        model,
        folders / kind,
        "--out",
        out_dir,
        "--measure",
        "--rois",
        "--threshold",
        "0.01",
        "--min-size",
        "0",
        "--device",
        "cpu",
        "-q",
    )  # objects, even untrained
    assert code == 0, err
    labels, axes = read_image(out_dir / "00_labels.tif")
    assert axes == "YX" and labels.shape == (72, 80)
    pandas = pytest.importorskip("pandas")
    table = pandas.read_csv(out_dir / "measurements.csv", dtype={"image": str})
    assert len(table) > 0 and set(table["image"]) <= {"00", "01", "02"}
    channels = 3 if kind == "rgb" else 2
    assert {f"intensity_mean_c{c}" for c in range(channels)} <= set(table.columns)
    if kind == "two":  # the pixel size of the input is carried into the labels and the table
        assert read_pixel_size(out_dir / "00_labels.tif") == PixelSize(0.5, 0.5, "um")
        np.testing.assert_allclose(table["area_um2"], table["area"] * 0.25)
        code, _, err = run(
            capsys,
            "predict",
            model,
            folders / kind / "00.tif",
            "--out",
            tmp_path / "z",
            "--zarr",
            "--threshold",
            "0.01",
            "--device",
            "cpu",
            "-q",
        )
        assert code == 0, err
        zarr_labels, zarr_axes = read_input(tmp_path / "z" / "00_labels.ome.zarr")
        assert zarr_axes == "YX"
        np.testing.assert_array_equal(np.asarray(zarr_labels), read_image(tmp_path / "z" / "00_labels.tif")[0])
        assert read_pixel_size(tmp_path / "z" / "00_labels.ome.zarr") == PixelSize(0.5, 0.5, "um")
    assert labels.max() > 0 and (out_dir / "00_rois.zip").is_file()


def test_grey_conversion_is_saved_with_the_model_and_reused(folders, tmp_path, capsys):
    model = tmp_path / "grey.model"
    code, _, err = run(
        capsys, "train", folders / "rgb", folders / "labels", "--out", model, "--iterations", "3", "--grey", *TINY
    )
    assert code == 0, err
    bundle = load_model(model)
    assert bundle.net.config.in_channels == 1 and bundle.channels.grey
    code, _, err = run(
        capsys, "predict", model, folders / "rgb" / "00.png", "--out", tmp_path / "o", "--device", "cpu", "-q"
    )
    assert code == 0, err  # the RGB input is converted to grey as in training, without options
    code, _, err = run(
        capsys,
        "predict",
        model,
        folders / "rgb" / "00.png",
        "--out",
        tmp_path / "o",
        "--channels",
        "0,1",
        "--device",
        "cpu",
        "-q",
        "--overwrite",
    )
    assert code == 2 and "the model expects 1 channel(s)" in err and "--grey" in err


def test_channels_pick_one_channel_of_two(folders, tmp_path, capsys):
    model = tmp_path / "nucleus.model"
    code, _, err = run(
        capsys,
        "train",
        folders / "two",
        folders / "labels",
        "--out",
        model,
        "--iterations",
        "3",
        "--channels",
        "0",
        *TINY,
    )
    assert code == 0, err
    assert load_model(model).net.config.in_channels == 1 and load_model(model).channels.channels == (0,)
    code, _, err = run(
        capsys, "train", folders / "two", folders / "labels", "--out", tmp_path / "x", "--channels", "0,5", *TINY
    )
    assert code == 2 and "channel 5" in err and "2 channel(s)" in err


def test_measure_command_matches_the_library(folders, tmp_path, capsys):
    pandas = pytest.importorskip("pandas")
    code, stdout, _ = run(capsys, "measure", folders / "labels", folders / "two", "--out", tmp_path / "t.csv")
    assert code == 0 and "physical units: um" in stdout
    table = pandas.read_csv(tmp_path / "t.csv", dtype={"image": str})
    image, _ = read_image(folders / "two" / "01.tif")
    labels, _ = read_image(folders / "labels" / "01.tif")
    expected = measure(labels, image, PixelSize(0.5, 0.5, "um"))
    rows = table[table["image"] == "01"]
    np.testing.assert_array_equal(rows["label"], expected["label"])
    for column in ("area", "centroid_y", "perimeter", "solidity", "intensity_mean_c1", "area_um2", "perimeter_um"):
        np.testing.assert_allclose(rows[column], expected[column], rtol=1e-12)
    code, stdout, _ = run(
        capsys,
        "measure",
        folders / "labels" / "00.tif",
        "--out",
        tmp_path / "p.csv",
        "--pixel-size",
        "0.2",
        "0.4",
        "--unit",
        "nm",
    )
    assert code == 0
    table = pandas.read_csv(tmp_path / "p.csv", dtype={"image": str})
    assert "area_nm2" in table and "perimeter_nm" not in table and "intensity_mean" not in table


def test_rois_command_round_trip(folders, tmp_path, capsys):
    code, stdout, _ = run(capsys, "rois", folders / "labels" / "00.tif", "--out", tmp_path / "cells.zip")
    assert code == 0 and "ROIs" in stdout
    code, _, err = run(capsys, "rois", tmp_path / "cells.zip", "--out", tmp_path / "back.tif")
    assert code == 2 and "--like" in err
    code, _, _ = run(
        capsys, "rois", tmp_path / "cells.zip", "--like", folders / "two" / "00.tif", "--out", tmp_path / "back.tif"
    )
    assert code == 0
    original, _ = read_image(folders / "labels" / "00.tif")
    back, axes = read_image(tmp_path / "back.tif")
    assert axes == "YX" and back.shape == original.shape
    for value in np.unique(original[original > 0]):
        a, b = original == value, back == value
        assert (a & b).sum() / (a | b).sum() >= 0.95


def test_export_command_writes_each_format(folders, tmp_path, capsys):
    model = tmp_path / "m.model"
    assert run(capsys, "train", folders / "two", folders / "labels", "--out", model, "--iterations", "2", *TINY)[0] == 0
    code, stdout, _ = run(capsys, "export", model, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 0 and "H, W = " in stdout and (tmp_path / "m.onnx").is_file()
    assert "input size -16 (the file refuses other sizes)" in stdout  # depth 2: halo 8
    code, stdout, _ = run(
        capsys,
        "export",
        model,
        "--format",
        "bioimageio",
        "--out",
        tmp_path / "m.zip",
        "--author",
        "Ada",
        "--training-data-licence",
        "CC-BY-4.0",
    )
    assert code == 0 and (tmp_path / "m.zip").is_file() and "not recorded" not in stdout
    assert "H, W = 18 + n * 2; output of the input's size, whose outer 8 px" in stdout
    code, _, err = run(
        capsys, "export", model, "--format", "torchscript", "--out", tmp_path / "m.pt", "--author", "Ada"
    )
    assert code == 2 and "bioimageio package" in err


def test_measure_rois_and_export_never_replace_an_input_and_replace_an_output_only_when_asked(
    folders, tmp_path, capsys, monkeypatch
):
    labels = folders / "labels" / "00.tif"
    before = labels.read_bytes()
    for args in (["measure", labels, "--out", labels], ["rois", tmp_path / "x.zip", "--like", labels, "--out", labels]):
        code, _, err = run(capsys, *args, "--overwrite")
        assert code == 2 and "would replace the input" in err
    assert labels.read_bytes() == before
    table, rois = tmp_path / "t.csv", tmp_path / "cells.zip"
    for args, out in ((["measure", labels], table), (["rois", labels], rois)):
        out.write_text("kept")
        code, _, err = run(capsys, *args, "--out", out)
        assert code == 2 and "exists" in err and "--overwrite" in err and out.read_text() == "kept"
        assert run(capsys, *args, "--out", out, "--overwrite")[0] == 0 and out.read_bytes() != b"kept"
    model = tmp_path / "m.model"
    assert run(capsys, "train", folders / "two", folders / "labels", "--out", model, "--iterations", "1", *TINY)[0] == 0
    package = tmp_path / "m.bioimageio"
    export = ["export", model, "--format", "bioimageio", "--out", package]
    assert run(capsys, *export)[0] == 0 and (package / "rdf.yaml").is_file()
    code, _, err = run(capsys, *export)
    assert code == 2 and "--overwrite" in err
    assert run(capsys, *export, "--overwrite")[0] == 0 and (package / "rdf.yaml").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside it
    assert oct(table.stat().st_mode & 0o777) == oct(default_mode())  # not the temporary's owner-only mode
    for out in (model, model / "weights.safetensors"):
        code, _, err = run(capsys, "export", model, "--format", "onnx", "--out", out, "--overwrite")
        assert code == 2 and "would replace the model" in err
    monkeypatch.chdir(tmp_path)  # "nuclei" here is a new package, not the built-in model it is made from
    assert run(capsys, "export", "nuclei", "--format", "bioimageio", "--out", "nuclei")[0] == 0
    assert (tmp_path / "nuclei" / "rdf.yaml").is_file()


def test_tables_rois_and_exports_are_written_whole_or_not_at_all(folders, tmp_path, monkeypatch):
    """A write that fails half-way (here: the ROI zip's second entry, the CSV's third row, the package's copy)
    leaves the earlier file as it was and no temporary beside it."""
    import csv

    import roifile

    from napari_unet import export as export_module
    from napari_unet.measure import write_csv
    from napari_unet.roi import write_rois

    labels, _ = read_image(folders / "labels" / "00.tif")
    table, rois = tmp_path / "t.csv", tmp_path / "cells.zip"
    for path in (table, rois):
        path.write_text("earlier")

    class Broken(Exception):
        pass

    def failing(real, after):
        calls = []

        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) > after:
                raise Broken
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(roifile.ImagejRoi, "tobytes", failing(roifile.ImagejRoi.tobytes, 1))
    with pytest.raises(Broken):
        write_rois(rois, labels)

    real_writer = csv.writer

    class Writer:
        def __init__(self, file):
            self.writerow = failing(real_writer(file).writerow, 2)

    monkeypatch.setattr(csv, "writer", Writer)
    with pytest.raises(Broken):
        write_csv({"label": np.arange(5), "area": np.ones(5)}, table)
    assert table.read_text() == rois.read_text() == "earlier"

    package = tmp_path / "p.bioimageio"
    package.mkdir()
    (package / "rdf.yaml").write_text("earlier")
    monkeypatch.setattr(export_module.shutil, "copytree", failing(export_module.shutil.copytree, 0))
    with pytest.raises(Broken):
        export_module._write_output(tmp_path, package, as_zip=False)
    assert (package / "rdf.yaml").read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.zip", "p.bioimageio", "t.csv"]
    # an export killed between its two renames left the earlier package aside: the next one puts it back first
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    package.rename(tmp_path / f".p.bioimageio.{int(dead.stdout)}.old.tmp")
    with pytest.raises(Broken):
        export_module._write_output(tmp_path, package, as_zip=False)
    assert (package / "rdf.yaml").read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.zip", "p.bioimageio", "t.csv"]


@pytest.mark.parametrize("command", ["measure", "rois", "export"])
def test_new_commands_have_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert "examples:" in capsys.readouterr().out


def test_export_help_says_that_only_the_files_output_is_smaller(capsys):
    """The help said every export's output is (N, classes, H - 2 halo, W - 2 halo); the package's has the input's
    size."""
    assert main(["export", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "The ONNX and TorchScript files' output is (N, classes, H - 2 halo, W - 2 halo)" in text
    assert "the package's output has the input's size" in text


def test_measure_and_rois_take_a_binary_mask_as_its_connected_components(tmp_path, capsys):
    """A Fiji 0/255 mask is one value over many regions: each region is an object (one row, one ROI), as
    `evaluate` scores it, not one object of id 255 (whose ROI would keep only the largest piece)."""
    from napari_unet.metrics import components

    labels = make_cells((72, 80), seed=31)[1]
    mask = np.where(labels > 0, 255, 0).astype(np.uint8)
    objects = int(components(mask > 0).max())
    write_tiff(tmp_path / "mask.tif", mask, "YX")
    code, stdout, err = run(capsys, "measure", tmp_path / "mask.tif", "--out", tmp_path / "t.csv")
    assert code == 0 and f"measured {objects} objects" in stdout and "connected components" in err
    assert len((tmp_path / "t.csv").read_text().splitlines()) == objects + 1
    pytest.importorskip("roifile")
    code, stdout, err = run(capsys, "rois", tmp_path / "mask.tif", "--out", tmp_path / "r.zip")
    assert code == 0 and f"{objects} ROIs" in stdout and "connected components" in err
