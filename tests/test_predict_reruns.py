"""`predict` run again on the same folder: results in the input folder, an interrupted run continued, other
settings refused, measurements.csv complete after a rerun, and every unreadable input named in one error.

A tiny untrained network with `--threshold 0` (the whole image is one object) keeps each run under a second.
"""

from __future__ import annotations

import csv
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet import modelfile
from napari_unet.cli import main
from napari_unet.cli._signals import Interrupted
from napari_unet.io import read_image, write_tiff
from napari_unet.pipeline import read_settings
from napari_unet.synthetic import make_cells


def tiny_model(folder: Path, seed: int = 0) -> Path:
    """An untrained 1-channel network saved as a model folder (seconds to run, no training)."""
    from napari_unet.model import UNet, UNetConfig
    from napari_unet.modelfile import ModelBundle, save_model

    torch.manual_seed(seed)
    return save_model(folder / f"tiny{seed}.model", ModelBundle(UNet(UNetConfig(depth=2, base_channels=4))))


def images(folder: Path, n: int, first: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        write_tiff(folder / f"im{i}.tif", (make_cells((40, 44), seed=i)[0] * 1000).astype(np.uint16), "YX")
    return folder


def predict(capsys, model: Path, source: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    """`predict MODEL SOURCE --out OUT` on the CPU with `extra` options (`--threshold 0` unless they give one):
    (exit code, stdout, stderr)."""
    threshold = [] if "--threshold" in extra else ["--threshold", "0"]
    code = main(["predict", str(model), str(source), "--out", str(out), "--device", "cpu", *threshold, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def segmented(monkeypatch) -> list[int]:
    """Counts the planes segmented (calls of the post-processing) from here on."""
    calls: list[int] = []
    original = modelfile.probs_to_labels

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(modelfile, "probs_to_labels", counted)
    return calls


def interrupt_at(monkeypatch, plane: int) -> None:
    """Ctrl-C during the post-processing of the `plane`-th plane (1-based) from here on."""
    original, calls = modelfile.probs_to_labels, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == plane:
            raise Interrupted(signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(modelfile, "probs_to_labels", interrupted)


def table_images(path: Path) -> list[str]:
    with open(path, newline="") as file:
        return [row["image"] for row in csv.DictReader(file)]


def test_predicting_into_the_input_folder_works_again(tmp_path, capsys, segmented):
    """The audit's case: the second `predict same --out same` read its own outputs as inputs and refused them
    ("same/a.png and same/a_labels.tif would both be written ..."), even with --overwrite."""
    model, same = tiny_model(tmp_path), images(tmp_path / "same", 2)
    assert predict(capsys, model, same, same, "--probabilities", "--zarr")[0] == 0
    assert len(segmented) == 2
    code, _, err = predict(capsys, model, same, same, "--probabilities", "--zarr")
    assert code == 0, err
    assert len(segmented) == 2  # nothing segmented again: the outputs are complete
    code, _, err = predict(capsys, model, same, same, "--probabilities", "--zarr")
    assert code == 0, err
    assert "skipped 6 files that are predict's outputs of other inputs" in err
    assert "2 image(s) already segmented" in err and "--overwrite" in err
    assert predict(capsys, model, same, same, "--probabilities", "--zarr", "--overwrite")[0] == 0
    assert len(segmented) == 4  # --overwrite segments them again
    assert sorted(p.name for p in same.iterdir()) == sorted(
        f"im{i}{suffix}" for i in range(2) for suffix in (".tif", "_labels.tif", "_probs.tif", "_labels.ome.zarr")
    )


def test_a_users_labels_file_without_its_image_is_still_an_input(tmp_path, capsys):
    model, folder = tiny_model(tmp_path), images(tmp_path / "in", 1)
    shutil.copy(folder / "im0.tif", folder / "im0_labels.tif")  # predict's output of im0.tif: not an input
    shutil.copy(folder / "im0.tif", folder / "x_labels.tif")  # no x.* beside it: an image to segment
    code, _, err = predict(capsys, model, folder, tmp_path / "out")
    assert code == 0, err
    assert "skipped 1 file that is predict's output of another input: im0_labels.tif" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im0_labels.tif", "x_labels.tif"]


def test_an_interrupted_predict_continues_where_it_stopped(tmp_path, capsys, monkeypatch):
    model, folder = tiny_model(tmp_path), images(tmp_path / "in", 3)
    whole = tmp_path / "whole"
    assert predict(capsys, model, folder, whole, "--probabilities")[0] == 0
    out = tmp_path / "out"
    interrupt_at(monkeypatch, 3)
    code, _, err = predict(capsys, model, folder, out, "--probabilities")
    assert code == 130
    assert "2 of 3 image(s) finished" in err and "run the same command again" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "im0_labels.tif",
        "im0_probs.tif",
        "im1_labels.tif",
        "im1_probs.tif",
    ]
    monkeypatch.undo()
    calls = []
    original = modelfile.probs_to_labels
    monkeypatch.setattr(modelfile, "probs_to_labels", lambda *a, **k: calls.append(1) or original(*a, **k))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, stdout, err = predict(capsys, model, folder, out, "--probabilities")
    assert code == 0, err
    assert len(calls) == 1  # only the third image
    assert "2 image(s) already segmented" in err and "--overwrite segments them again" in err
    assert "segmented 1 image(s)" in stdout and "2 skipped" in stdout
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in before.items())  # kept as they were
    for name in ("im0", "im1", "im2"):
        for kind in ("labels", "probs"):
            np.testing.assert_array_equal(
                read_image(out / f"{name}_{kind}.tif")[0], read_image(whole / f"{name}_{kind}.tif")[0]
            )


def test_a_rerun_with_other_settings_is_refused_naming_the_difference(tmp_path, capsys):
    model, folder = tiny_model(tmp_path), images(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert predict(capsys, model, folder, out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = predict(capsys, model, folder, out, "--threshold", "0.3")
    assert code == 2
    assert "im0_labels.tif exists" in err and "threshold 0.0 (now 0.3)" in err and "--overwrite" in err
    other = tiny_model(tmp_path, seed=1)
    code, _, err = predict(capsys, other, folder, out)
    assert code == 2 and "im0_labels.tif exists" in err and "tiny0.model" in err and "tiny1.model" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing replaced
    assert predict(capsys, other, folder, out, "--overwrite")[0] == 0
    assert read_settings(out / "im0_labels.tif")["model"] == str(other)


def test_outputs_record_the_settings_and_a_foreign_file_is_refused(tmp_path, capsys):
    model, folder = tiny_model(tmp_path), images(tmp_path / "in", 2)
    out = tmp_path / "out"
    write_tiff(out / "im1_labels.tif", np.ones((40, 44), np.int32), "YX")  # not written by predict
    code, _, err = predict(capsys, model, folder, out)
    assert code == 2 and "im1_labels.tif exists: replace it with --overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["im1_labels.tif"]  # refused before any work
    assert predict(capsys, model, folder, out, "--overwrite")[0] == 0
    recorded = read_settings(out / "im1_labels.tif")
    assert recorded["postprocess"]["threshold"] == 0.0 and recorded["tta"] is False


def test_measurements_survive_an_interrupt_and_a_rerun_completes_them(tmp_path, capsys, monkeypatch):
    model, folder = tiny_model(tmp_path), images(tmp_path / "in", 3)
    whole = tmp_path / "whole"
    assert predict(capsys, model, folder, whole, "--measure")[0] == 0
    out = tmp_path / "out"
    interrupt_at(monkeypatch, 3)
    code, _, err = predict(capsys, model, folder, out, "--measure")
    assert code == 130 and "measurements.csv" in err and "2 of 3" in err
    assert table_images(out / "measurements.csv") == ["im0", "im1"]  # the finished images' rows
    monkeypatch.undo()
    assert predict(capsys, model, folder, out, "--measure")[0] == 0
    assert (out / "measurements.csv").read_bytes() == (whole / "measurements.csv").read_bytes()
    images(folder, 1, first=3)  # one new image in the folder: the others skipped, the table holds all
    code, _, err = predict(capsys, model, folder, out, "--measure")
    assert code == 0, err
    assert table_images(out / "measurements.csv") == ["im0", "im1", "im2", "im3"]
    code, _, err = predict(capsys, model, folder / "im1.tif", out, "--measure")  # a subset: the table would lose rows
    assert code == 2 and "holds the measurements of 3 image(s) this run does not segment (im0, im2, im3)" in err
    assert table_images(out / "measurements.csv") == ["im0", "im1", "im2", "im3"]


def test_a_rerun_adds_the_extras_of_finished_images(tmp_path, capsys, segmented):
    pytest.importorskip("roifile")
    model, folder = tiny_model(tmp_path), images(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert predict(capsys, model, folder, out)[0] == 0
    assert predict(capsys, model, folder, out, "--rois", "--zarr")[0] == 0
    assert len(segmented) == 2  # the labels were kept; their ROIs and OME-Zarr copies written from them
    assert {"im0_rois.zip", "im1_rois.zip", "im0_labels.ome.zarr", "im1_labels.ome.zarr"} <= {
        p.name for p in out.iterdir()
    }


def test_every_unreadable_input_is_named_in_one_error(tmp_path, capsys):
    model, folder = tiny_model(tmp_path), images(tmp_path / "in", 1)
    (folder / "corrupt.tif").write_bytes(b"\x00garbage" * 9)
    (folder / "empty.tif").write_bytes(b"")
    code, _, err = predict(capsys, model, folder, tmp_path / "out", "-q")
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("napari-unet: error: 2 of 3 inputs cannot be segmented")
    assert any("corrupt.tif" in line for line in lines[1:]) and any("empty.tif" in line for line in lines[1:])
    assert len(lines) == 3 and not (tmp_path / "out").exists()
    for i in range(11):
        (folder / f"bad{i:02d}.png").write_bytes(b"")
    code, _, err = predict(capsys, model, folder, tmp_path / "out", "-q")
    lines = err.strip().splitlines()
    assert code == 2 and "13 of 14 inputs" in lines[0]
    assert len(lines) == 12 and lines[-1].strip() == "and 3 more"


def test_a_table_that_no_earlier_run_wrote_is_still_refused(tmp_path, capsys, monkeypatch):
    model, folder = tiny_model(tmp_path), images(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "measurements.csv").write_text("kept")
    code, _, err = predict(capsys, model, folder, out, "--measure")
    assert code == 2 and "measurements.csv exists: replace it with --overwrite" in err
    assert (out / "measurements.csv").read_text() == "kept"
    (out / "measurements.csv").unlink()
    interrupt_at(monkeypatch, 1)  # nothing finished: no table
    code, _, err = predict(capsys, model, folder, out, "--measure")
    assert code == 130 and "0 of 2 image(s) finished" in err and list(out.iterdir()) == []


def test_an_image_replaced_under_the_same_name_is_not_skipped_as_done(tmp_path, capsys):
    """A rerun skipped an image replaced by another of the same name (even of another size) as "already done",
    leaving the old image's labels: the outputs record the input's size and modification time now."""
    import os

    model, source, out = tiny_model(tmp_path), images(tmp_path / "in", 2), tmp_path / "out"
    assert predict(capsys, model, source, out)[0] == 0
    write_tiff(source / "im1.tif", (make_cells((52, 60), seed=9)[0] * 1000).astype(np.uint16), "YX")
    code, _, err = predict(capsys, model, source, out)
    assert code == 2 and "im1_labels.tif was segmented from another version of" in err
    code, _, _ = predict(capsys, model, source, out, "--overwrite")
    assert code == 0 and read_image(out / "im1_labels.tif")[0].shape == (52, 60)
    os.utime(source / "im0.tif")  # touched, not changed: refused too (a copy without its time is another file)
    assert predict(capsys, model, source, out)[0] == 2


def test_predict_never_replaces_a_table_or_labels_it_did_not_write(tmp_path, capsys):
    """A rerun with --measure overwrote a measurements.csv that no --measure run wrote there (the user's own
    `measure` table); predicting into a folder of images beside their x_labels.tif annotations advised
    --overwrite, which replaced the annotations with predictions."""
    model, source, out = tiny_model(tmp_path), images(tmp_path / "in", 1), tmp_path / "out"
    assert predict(capsys, model, source, out)[0] == 0
    (out / "measurements.csv").write_text("my,own,table\n")
    code, _, err = predict(capsys, model, source, out, "--measure")
    assert code == 2 and "measurements.csv" in err and (out / "measurements.csv").read_text() == "my,own,table\n"
    (out / "measurements.csv").unlink()
    assert predict(capsys, model, source, out, "--measure")[0] == 0
    assert predict(capsys, model, source, out, "--measure")[0] == 0  # its own table: rewritten by a rerun

    beside = images(tmp_path / "beside", 1)
    truth = np.zeros((40, 44), np.uint16)
    truth[5:15, 5:15] = 1
    write_tiff(beside / "im0_labels.tif", truth, "YX")
    for extra in ([], ["--overwrite"]):
        code, _, err = predict(capsys, model, beside, beside, *extra)
        assert code == 2 and "was not written by napari-unet predict" in err
    np.testing.assert_array_equal(read_image(beside / "im0_labels.tif")[0], truth)
