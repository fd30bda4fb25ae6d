"""`napari-unet evaluate`: which ground truth it scores and how it pairs predictions with their truth, run
in-process through `main([...])` on tiny files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def two_cells() -> np.ndarray:
    labels = np.zeros((16, 16), np.int32)
    labels[2:6, 2:6], labels[8:12, 8:12] = 1, 2
    return labels


def write(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)


@pytest.mark.parametrize(("dtype", "reserved"), [(np.uint16, 65535), (np.int16, -1), (np.uint32, 2**32 - 1)])
def test_ground_truth_with_not_annotated_pixels_is_refused(tmp_path, capsys, dtype, reserved):
    """The "not annotated" value of label files (-1, the maximum of uint16 and wider: `targets.reserved_value`),
    which training leaves out, was scored as one more object (65535) or refused as a negative id (-1)."""
    write(tmp_path / "pred" / "a_labels.tif", two_cells())
    truth = two_cells().astype(dtype)
    truth[14:, :] = reserved  # 32 pixels left unannotated
    write(tmp_path / "truth" / "a.tif", truth)
    for kind in ("instances", "isbi", "pixels"):
        code, out, err = run(capsys, "evaluate", tmp_path / "pred", tmp_path / "truth", "--kind", kind)
        assert code == 2 and out == ""
        assert f"a.tif marks 32 pixel(s) 'not annotated' ({reserved}, the reserved value of" in err


def test_a_mask_whose_only_value_is_the_maximum_is_scored(tmp_path, capsys):
    """0/65535 is a mask of cells (what img_as_uint makes of a mask), not an image with nothing annotated."""
    write(tmp_path / "pred" / "a_labels.tif", two_cells())
    write(tmp_path / "truth" / "a.tif", np.where(two_cells() > 0, 65535, 0).astype(np.uint16))
    code, out, _ = run(capsys, "evaluate", tmp_path / "pred", tmp_path / "truth", "--json")
    assert code == 0 and json.loads(out)["ap50"] == 1.0


def test_folders_of_one_file_pair_by_name(tmp_path, capsys):
    """Two folders of one file each were paired whatever their names: a prediction scored against another
    image's truth without a word. Folders pair by name, whatever they hold; two files given as such still pair
    whatever their names."""
    write(tmp_path / "pred" / "x_labels.tif", two_cells())
    write(tmp_path / "truth" / "y.tif", two_cells())
    for pred, truth in ((tmp_path / "pred", tmp_path / "truth"), (tmp_path / "pred", tmp_path / "truth" / "y.tif")):
        code, out, err = run(capsys, "evaluate", pred, truth)
        assert code == 2 and out == ""
        assert "x_labels.tif (predictions) and y.tif (ground truth) have different base names, 'x' and 'y'" in err
    code, out, _ = run(capsys, "evaluate", tmp_path / "pred" / "x_labels.tif", tmp_path / "truth" / "y.tif", "--json")
    assert code == 0 and json.loads(out)["ap50"] == 1.0
    (tmp_path / "truth" / "y.tif").rename(tmp_path / "truth" / "x.tif")
    code, out, _ = run(capsys, "evaluate", tmp_path / "pred", tmp_path / "truth", "--json")
    assert code == 0 and list(json.loads(out)["images"]) == ["x_labels.tif"]
