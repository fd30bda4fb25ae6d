"""What a first use of the command line gets wrong, from a user audit: inputs that used to give silently wrong
results (a binary mask or an image given as ground truth, images and labels swapped), held-out data listed as
training data, outputs checked only after the work, and messages that pointed the wrong way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from napari_unet import builtin
from napari_unet.cli import main
from napari_unet.io import read_label_image, read_labels, write_tiff
from napari_unet.model import UNet, UNetConfig
from napari_unet.modelfile import ModelBundle, save_model
from napari_unet.synthetic import make_cells
from napari_unet.train_config import UNTIL_BUDGET
from napari_unet.validation import DtypeError, check_labels


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def grey_png(path: Path, image: np.ndarray, mode: str = "L") -> Path:
    """`image` in [0, 1] as an 8-bit PNG: grey ("L"), or grey stored as RGBA (R = G = B, opaque; DSB 2018's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    if mode == "RGBA":
        grey = np.stack([grey, grey, grey, np.full_like(grey, 255)], -1)
    Image.fromarray(grey, mode).save(path)
    return path


def tiff(path: Path, array: np.ndarray, axes: str = "YX") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tiff(path, array, axes)
    return path


def tiny_model(folder: Path, metadata: dict | None = None) -> Path:
    torch.manual_seed(0)
    bundle = ModelBundle(UNet(UNetConfig(depth=2, base_channels=4)), metadata=metadata or {})
    return save_model(folder / "tiny.model", bundle)


@pytest.fixture
def cells() -> tuple[np.ndarray, np.ndarray]:
    """9 nuclei in 8 separate groups (two touch)."""
    return make_cells((128, 128), seed=0, clustering=0.0)


# ---------------------------------------------------------------------------------- evaluate: what truth is


def test_a_binary_mask_as_truth_is_scored_by_its_connected_components_with_a_note(cells, tmp_path, capsys):
    """Fiji's usual 0/255 mask used to be scored as one object (AP50 0, exit code 0, no word)."""
    _, labels = cells
    mask = labels > 0
    components, count = ndimage.label(mask)  # 4-connected, as a bool prediction is split
    assert count > 2
    tiff(tmp_path / "pred" / "a_labels.tif", components.astype(np.uint16))
    grey_png(tmp_path / "truth" / "a.png", mask.astype(float))
    code, stdout, err = run(capsys, "evaluate", tmp_path / "pred", tmp_path / "truth", "--json")
    assert code == 0, err
    scores = json.loads(stdout)
    assert scores["n_true"] == count and scores["ap50"] == 1.0
    notes = [line for line in err.splitlines() if "binary mask" in line]
    assert len(notes) == 1 and "a.png" in notes[0] and "connected components" in notes[0]


def test_a_binary_mask_as_prediction_is_split_like_a_bool_one(cells, tmp_path, capsys):
    _, labels = cells
    mask = labels > 0
    grey_png(tmp_path / "pred" / "a.png", mask.astype(float))
    tiff(tmp_path / "truth" / "a.tif", ndimage.label(mask)[0].astype(np.uint16))
    code, stdout, err = run(capsys, "evaluate", tmp_path / "pred", tmp_path / "truth", "--json")
    assert code == 0 and json.loads(stdout)["ap50"] == 1.0 and "binary mask" in err


def test_real_instance_labels_are_scored_as_they_are(cells, tmp_path, capsys):
    _, labels = cells
    tiff(tmp_path / "pred" / "a.tif", labels.astype(np.uint16))
    tiff(tmp_path / "truth" / "a.tif", labels.astype(np.uint16))
    code, stdout, err = run(capsys, "evaluate", tmp_path / "pred", tmp_path / "truth", "--json")
    assert code == 0 and json.loads(stdout)["n_true"] == labels.max() and "note" not in err


def test_isbi_truth_stays_a_mask(cells, tmp_path, capsys):
    """--kind isbi and pixels take masks as truth: no note, no relabelling."""
    _, labels = cells
    tiff(tmp_path / "pred" / "a.tif", (labels > 0).astype(np.uint8))
    grey_png(tmp_path / "truth" / "a.png", (labels > 0).astype(float))
    for kind in ("isbi", "pixels"):
        code, _, err = run(capsys, "evaluate", tmp_path / "pred", tmp_path / "truth", "--kind", kind)
        assert code == 0 and "binary mask" not in err


@pytest.mark.parametrize("swapped", ["truth", "pred"])
def test_intensity_images_given_as_labels_are_refused(cells, tmp_path, capsys, swapped):
    """`evaluate results images` used to score an image's grey values as 174 objects, exit code 0."""
    image, labels = cells
    tiff(tmp_path / "labels" / "a.tif", labels.astype(np.uint16))
    grey_png(tmp_path / "images" / "a.png", image)
    pred, truth = (tmp_path / "labels", tmp_path / "images")
    if swapped == "pred":
        pred, truth = truth, pred
    code, _, err = run(capsys, "evaluate", pred, truth)
    assert code == 2 and "does not look like instance labels" in err and "a.png" in err
    assert ("ground truth" if swapped == "truth" else "prediction") in err
    assert len(err.strip().splitlines()) == 1


def test_colour_truth_says_labels_are_not_colour(cells, tmp_path, capsys):
    """An RGB TIFF truth was reported as a shape mismatch; an RGB PNG truth is refused as it is read."""
    _, labels = cells
    tiff(tmp_path / "pred" / "a.tif", labels.astype(np.uint16))
    colour = np.stack([labels * 20 % 255, labels * 50 % 255, labels * 90 % 255]).astype(np.uint8)
    tiff(tmp_path / "truth" / "a.tif", colour, "CYX")
    code, _, err = run(capsys, "evaluate", tmp_path / "pred", tmp_path / "truth")
    assert code == 2 and "colour" in err and "has shape" not in err
    Image.fromarray(np.moveaxis(colour, 0, -1)).save(tmp_path / "rgb.png")
    code, _, err = run(capsys, "evaluate", tmp_path / "pred" / "a.tif", tmp_path / "rgb.png")
    assert code == 2 and "colour" in err


@pytest.mark.parametrize(("values", "said"), [(0.5, "not whole numbers"), (0.0, "whole numbers")])
def test_float_truth_gets_a_hint_for_ground_truth(cells, tmp_path, capsys, values, said):
    """A float truth was told to post-process its probabilities: right for a prediction, not for ground truth."""
    _, labels = cells
    tiff(tmp_path / "pred.tif", labels.astype(np.uint16))
    tiff(tmp_path / "truth.tif", labels.astype(np.float32) + values)
    code, _, err = run(capsys, "evaluate", tmp_path / "pred.tif", tmp_path / "truth.tif")
    assert code == 2 and said in err and "integer array" in err
    assert "probs_to_labels" not in err and "post-process" not in err
    assert ("astype" in err) == (values == 0.0)


def test_float_labels_with_fractions_are_not_told_to_truncate(tmp_path, capsys):
    with pytest.raises(DtypeError, match="not whole numbers") as refused:
        check_labels(np.array([[0.0, 1.5], [2.0, 0.0]]))
    assert "astype" not in str(refused.value)
    with pytest.raises(DtypeError, match=r"whole numbers: convert with \.astype"):
        check_labels(np.array([[0.0, 1.0], [2.0, 0.0]]))
    path = tiff(tmp_path / "labels.tif", np.array([[0.0, 1.5], [2.0, 0.0]], np.float32))
    code, _, err = run(capsys, "weights", path, "--out", tmp_path / "w.tif")
    assert code == 2 and "not whole numbers" in err and "astype" not in err


# -------------------------------------------------------------------------------- labels with colour or alpha


def test_label_pngs_with_alpha_or_colour_are_refused(cells, tmp_path):
    image, labels = cells
    with pytest.raises(ValueError, match="one 2-D plane.*alpha"):
        read_label_image(grey_png(tmp_path / "rgba.png", image, "RGBA"))
    Image.fromarray(np.stack([labels * 20 % 255] * 2 + [labels * 0], -1).astype(np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="one 2-D plane.*colour"):
        read_labels(tmp_path / "rgb.png")
    grey = grey_png(tmp_path / "grey.png", (labels > 0).astype(float))
    assert read_label_image(grey)[1] == "YX"
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "ids16.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "ids16.png"), labels)


def test_train_with_images_and_labels_swapped_is_refused(cells, tmp_path, capsys):
    """`train LABELS IMAGES` used to train (exit code 0) on the grey RGBA images read as labels."""
    image, labels = cells
    grey_png(tmp_path / "images" / "a.png", image, "RGBA")
    tiff(tmp_path / "labels" / "a.tif", labels.astype(np.uint16))
    args = ["--out", tmp_path / "m", "--iterations", 1, "--depth", 2, "--base-channels", 4, "--device", "cpu", "-q"]
    code, _, err = run(capsys, "train", tmp_path / "labels", tmp_path / "images", *args)
    assert code == 2 and "a.png" in err and "swapped" in err
    assert not (tmp_path / "m").exists()


def test_the_real_label_pngs_still_read(shared_data):
    for folder in sorted(shared_data.glob("*/*/labels")):
        for path in sorted(folder.glob("*.png"))[:3]:
            labels = read_labels(path)
            assert labels.ndim == 2 and labels.dtype.kind in "iu", path


# ------------------------------------------------------------------------------------------------ models


def test_models_lists_held_out_sets_as_held_out(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "builtin_models"
    training_data = {
        "set-a": ["1.png", "2.png"],
        "held_out_set_a": ["3.png"],
        "held_out_other": ["4.png", "5.png", "6.png"],
        "skipped_without_nuclei": ["7.png"],
    }
    save_model(
        folder / "nuclei",
        ModelBundle(UNet(depth=2, base_channels=2), metadata={"description": "d", "training_data": training_data}),
    )
    monkeypatch.setattr(builtin, "BUILTIN_DIR", folder)
    info = builtin.describe("nuclei")
    assert info["training_data"] == {"set-a": 2}
    assert info["held_out"] == {"set_a": 1, "other": 3}
    code, stdout, _ = run(capsys, "models")
    trained = next(line for line in stdout.splitlines() if "trained on:" in line)
    held = next(line for line in stdout.splitlines() if "held out" in line)
    assert code == 0 and "held_out" not in trained and "set-a (2 images)" in trained
    assert "set_a (1 images)" in held and "other (3 images)" in held


# ---------------------------------------------------------------------------- outputs checked before the work


def refuse_writes(monkeypatch) -> None:
    """Make every folder look read-only to `check_writable_folder` (tests run as root, where chmod does not)."""
    import napari_unet.validation as validation

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(validation.tempfile, "TemporaryFile", read_only)


def measure_args(tmp_path: Path, out: Path) -> list:
    return ["measure", tiff(tmp_path / "in" / "a.tif", make_cells((48, 48), seed=1)[1].astype(np.uint16)), "--out", out]


def rois_args(tmp_path: Path, out: Path) -> list:
    pytest.importorskip("roifile")
    return ["rois", tiff(tmp_path / "in" / "a.tif", make_cells((48, 48), seed=1)[1].astype(np.uint16)), "--out", out]


def export_args(tmp_path: Path, out: Path) -> list:
    return ["export", tiny_model(tmp_path / "in"), "--format", "torchscript", "--out", out]


@pytest.mark.parametrize(
    ("make_args", "name", "work"),
    [
        (measure_args, "t.csv", "napari_unet.measure.measure_planes"),
        (rois_args, "t.zip", "napari_unet.roi.write_rois"),
        (export_args, "m.pt", "napari_unet.export.export_model"),
    ],
    ids=["measure", "rois", "export"],
)
def test_an_unwritable_out_is_refused_before_the_work(tmp_path, monkeypatch, capsys, make_args, name, work):
    args = make_args(tmp_path, tmp_path / "ro" / name)
    (tmp_path / "ro").mkdir()
    module, function = work.rsplit(".", 1)

    def never(*args, **kwargs):
        raise AssertionError(f"{function} ran before --out was checked")

    monkeypatch.setattr(module + "." + function, never)
    refuse_writes(monkeypatch)
    code, _, err = run(capsys, *args)
    assert code == 2 and f"--out {tmp_path / 'ro' / name}" in err and "is not writable (Permission denied)" in err
    assert len(err.strip().splitlines()) == 1 and ".tmp" not in err
    monkeypatch.undo()
    (tmp_path / "file").write_bytes(b"")
    code, _, err = run(capsys, *args[:-1], tmp_path / "file" / name)
    assert code == 2 and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1


def test_measure_writes_only_csv(tmp_path, capsys):
    victim = grey_png(tmp_path / "victim.png", np.eye(8))
    before = victim.read_bytes()
    code, _, err = run(capsys, *measure_args(tmp_path, victim), "--overwrite")
    assert code == 2 and ".csv" in err and victim.read_bytes() == before
    assert run(capsys, *measure_args(tmp_path, tmp_path / "table.CSV"))[0] == 0


# ---------------------------------------------------------------------------------- info and the progress bar


def test_info_summarises_long_metadata_and_json_keeps_it(tmp_path, capsys):
    hashes = [f"{n:016x}" for n in range(5000)]
    files = [f"{n:064x}.png" for n in range(300)]
    metadata = {
        "data_hashes": hashes,
        "training_data": {"set-a": files, "held_out_set_a": files[:30]},
        "training": {"iterations": UNTIL_BUDGET, "time_budget": 1200.0, "optimizer": "adam"},
    }
    model = tiny_model(tmp_path, metadata)
    code, stdout, _ = run(capsys, "info", model)
    assert code == 0 and max(len(line) for line in stdout.splitlines()) <= 300
    assert "5000 items" in stdout and hashes[0] in stdout and hashes[-1] not in stdout
    assert "300 items" in stdout
    assert str(UNTIL_BUDGET) not in stdout and "until the time budget" in stdout
    code, stdout, _ = run(capsys, "info", model, "--json")
    assert json.loads(stdout)["metadata"]["data_hashes"] == hashes


@pytest.mark.parametrize("with_tqdm", [True, False])
def test_a_time_budget_progress_bar_shows_rounded_seconds(monkeypatch, capsys, with_tqdm):
    import sys

    from napari_unet.cli.progress import Progress

    if not with_tqdm:
        monkeypatch.setitem(sys.modules, "tqdm", None)
    with Progress(20.0, "training", "s") as bar:
        bar.update(16.741448978003064, loss="0.1234")
    err = capsys.readouterr().err
    assert "16.741448978003064" not in err and "16.7/20 s" in err
