"""The bad-input catalogue (issue 10): files, images, labels, model folders and options, through the command line.

Each case builds its own inputs in `tmp_path`, runs `napari-unet ...` in-process and asserts
- the documented outcome: exit code 2 with one "napari-unet: error: ..." line that says what was expected and what
  was found (never a traceback), or exit code 0 where docs/formats.md and docs/cli.md say the input is accepted;
- that nothing on disk changed that should not have: every file under the case's folder, the shared data and the
  shared model has the same bytes before and after (an accepted case may only add the files it documents).

Plugin docks: tests/plugin/test_dock_bad_input.py; signals and kill -9: tests/test_interrupts.py; fuzzing the
readers and the model loader: tests/test_fuzz.py; library checks: tests/test_validation.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.segmentation import find_boundaries

from napari_unet.cli import main
from napari_unet.io import read_image, write_tiff
from napari_unet.modelfile import load_model
from napari_unet.synthetic import make_cells

TINY = ["--depth", "2", "--base-channels", "4", "--tile-size", "44", "--device", "cpu", "-q"]
TRAIN = [*TINY, "--iterations", "2"]


def snapshot(*roots: Path) -> dict[str, str]:
    """{path: sha1 of its bytes} of every file under `roots` (hidden ones too)."""
    files = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file():
                files[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
    return files


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def tiff(path: Path, array: np.ndarray, axes: str = "YX") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tiff(path, array, axes)
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> tuple[Path, Path]:
    """(data, model): images/0{0,1}.png with labels/0{0,1}.tif, and a tiny model trained 2 steps on them."""
    data = tmp_path_factory.mktemp("data")
    for i in range(2):
        image, labels = make_cells((64, 64), seed=i)
        write_png(data / "images" / f"0{i}.png", image)
        tiff(data / "labels" / f"0{i}.tif", labels.astype(np.uint16))
    model = tmp_path_factory.mktemp("models") / "cells.model"
    assert main(["train", str(data / "images"), str(data / "labels"), "--out", str(model), *TRAIN]) == 0
    return data, model


def copy_model(model: Path, folder: Path, edit: Callable[[Path], None] | None = None) -> Path:
    copy = folder / "copy.model"
    shutil.copytree(model, copy)
    if edit is not None:
        edit(copy)
    return copy


def edit_config(**changes) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        for key, value in changes.items():
            if "." in key:
                section, name = key.split(".")
                config[section][name] = value
            else:
                config[key] = value
        (folder / "config.json").write_text(json.dumps(config))

    return edit


def _zip(path: Path) -> Path:
    """A zip archive of someone's data (no rdf.yaml) at `path`."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "mine")
    return path


def one_pair(
    folder: Path,
    labels: np.ndarray | None = None,
    image: np.ndarray | None = None,
    label_name: str = "a.tif",
    axes: str = "YX",
) -> tuple[Path, Path]:
    """images/a.png and labels/a.tif (labels: the synthetic cells, or `labels`) in `folder`."""
    cells_image, cells = make_cells((64, 64), seed=7)
    if image is None:
        write_png(folder / "images" / "a.png", cells_image)
    else:
        tiff(folder / "images" / "a.tif", image, axes)
    tiff(folder / "labels" / label_name, cells.astype(np.uint16) if labels is None else labels)
    return folder / "images", folder / "labels"


def nan_image() -> np.ndarray:
    image = make_cells((64, 64), seed=7)[0].astype(np.float32)
    image[3, 4] = np.nan
    return image


def cells_labels(dtype, shift: int = 0) -> np.ndarray:
    labels = make_cells((64, 64), seed=7)[1].astype(np.uint64)
    return np.where(labels > 0, labels + np.uint64(shift), 0).astype(dtype)


@dataclass
class Case:
    """argv(d, m, t) -> arguments; `code`, and `message` in stderr (errors) or stdout (accepted inputs)."""

    name: str
    argv: Callable[[Path, Path, Path], list]
    message: str
    code: int = 2
    allowed: Callable[[Path], list[Path]] = lambda t: []  # files an accepted case may write or change


def sparse(dtype) -> np.ndarray:
    labels = cells_labels(dtype)
    labels[:, 40:] = -1 if np.dtype(dtype).kind == "i" else np.iinfo(dtype).max
    return labels


def objects_left_of(column: int) -> int:
    """How many of the synthetic cells (`cells_labels`) have pixels left of `column`: the objects of `sparse`."""
    labels = cells_labels(np.uint16)[:, :column]
    return int(np.count_nonzero(np.unique(labels)))


CASES = [
    # -------------------------------------------------------------------------------------------- files
    Case(
        "predict: output would replace the input image",
        lambda d, m, t: [
            "predict",
            m,
            tiff(t / "same" / "cells_labels.tif", make_cells((48, 48), 1)[0]),
            "--out",
            t / "same",
            "--overwrite",
        ],
        "would replace the input",
    ),
    Case(
        "predict: --out is a file",
        lambda d, m, t: ["predict", m, d / "images", "--out", d / "images" / "00.png"],
        "is a file",
    ),
    Case(
        "predict: existing results without --overwrite",
        lambda d, m, t: [
            "predict",
            m,
            d / "images" / "00.png",
            "--out",
            tiff(t / "o" / "00_labels.tif", np.ones((4, 4), np.int32)).parent,
        ],
        "--overwrite",
    ),
    Case(
        "predict: --out under a file is not writable",
        lambda d, m, t: ["predict", m, d / "images", "--out", tiff(t / "f.tif", np.ones((4, 4), np.uint8)) / "o"],
        "not writable",
    ),
    Case(
        "predict: missing input",
        lambda d, m, t: ["predict", m, t / "nowhere.tif", "--out", t / "o"],
        "no input image file or folder",
    ),
    Case(
        "predict: folder without images",
        lambda d, m, t: ["predict", m, (t / "empty").mkdir() or t / "empty", "--out", t / "o"],
        "no input image files",
    ),
    Case(
        "predict: random bytes named .tif",
        lambda d, m, t: ["predict", m, (t / "x.tif").write_bytes(b"\x00garbage" * 9) and t / "x.tif", "--out", t / "o"],
        "cannot read",
    ),
    Case(
        "predict: empty .png",
        lambda d, m, t: ["predict", m, (t / "x.png").write_bytes(b"") or t / "x.png", "--out", t / "o"],
        "cannot read",
    ),
    Case(
        "predict: empty .tif",
        lambda d, m, t: ["predict", m, (t / "x.tif").write_bytes(b"") or t / "x.tif", "--out", t / "o"],
        "the file is empty (0 bytes)",
    ),
    Case(
        "predict: a PNG saved as .TIF",
        lambda d, m, t: ["predict", m, png_named(t / "x.TIF"), "--out", t / "o"],
        "x.TIF is a PNG file, not a TIFF: rename it to .png",
    ),
    Case(
        "predict: truncated TIFF",
        lambda d, m, t: ["predict", m, truncate(tiff(t / "x.tif", make_cells((64, 64), 2)[0]), 0.5), "--out", t / "o"],
        "x.tif: a TIFF of shape (64, 64) whose pixel data is cut short",
    ),
    Case(
        "predict: unknown suffix",
        lambda d, m, t: ["predict", m, (t / "x.bmp").write_bytes(b"BM") and t / "x.bmp", "--out", t / "o"],
        "unsupported suffix",
    ),
    Case(
        "predict: two inputs with one base name",
        lambda d, m, t: [
            "predict",
            m,
            d / "images" / "00.png",
            tiff(t / "00.tif", make_cells((48, 48), 1)[0]),
            "--out",
            t / "o",
        ],
        "would both be written",
    ),
    Case(
        "predict: an input named like an output elsewhere is accepted",
        lambda d, m, t: ["predict", m, tiff(t / "model_labels.tif", make_cells((48, 48), 1)[0]), "--out", t / "o"],
        "",
        code=0,
        allowed=lambda t: [t / "o" / "model_labels.tif"],
    ),
    # ------------------------------------------------------------------------------------------- images
    Case(
        "predict: one NaN pixel",
        lambda d, m, t: ["predict", m, tiff(t / "nan.tif", nan_image()), "--out", t / "o"],
        "1 NaN or infinite values",
    ),
    Case(
        "predict: infinite pixels",
        lambda d, m, t: [
            "predict",
            m,
            tiff(
                t / "inf.tif",
                np.where(nan_image() != nan_image(), np.inf, 1.0).astype(np.float32) + np.eye(64, dtype=np.float32),
            ),
            "--out",
            t / "o",
        ],
        "NaN or infinite",
    ),
    Case(
        "predict: a NaN in the second of three files (checked before the first is segmented)",
        lambda d, m, t: ["predict", m, d / "images" / "00.png", tiff(t / "zz.tif", nan_image()), "--out", t / "o"],
        "zz.tif",
    ),
    Case(
        "predict: constant image",
        lambda d, m, t: ["predict", m, tiff(t / "c.tif", np.full((48, 48), 7, np.uint16)), "--out", t / "o"],
        "constant",
    ),
    Case(
        "predict: complex image",
        lambda d, m, t: [
            "predict",
            m,
            tiff(t / "z.tif", (np.eye(48) * (1 + 1j)).astype(np.complex64)),
            "--out",
            t / "o",
        ],
        "real numbers",
    ),
    Case(
        "predict: RGB image for a 1-channel model",
        lambda d, m, t: ["predict", m, rgb_png(t / "rgb.png"), "--out", t / "o"],
        "channel",
    ),
    Case(
        "predict: 4-D zarr array without axes",
        lambda d, m, t: ["predict", m, zarr_array(t / "x.zarr", (2, 3, 40, 40)), "--out", t / "o"],
        "cannot guess the axes",
    ),
    Case(
        "predict: --axes that cannot describe a PNG",
        lambda d, m, t: ["predict", m, d / "images" / "00.png", "--out", t / "o", "--axes", "ZYX"],
        "axes 'ZYX' cannot describe 00.png: a grey .png image is stored as YX",
    ),
    Case(
        "predict: --axes of the wrong length",
        lambda d, m, t: (
            ["predict", m, tiff(t / "s.tif", np.zeros((3, 20, 20), np.uint16), "ZYX"), "--out", t / "o"]
            + ["--axes", "YX"]
        ),
        "names 2 dimensions",
    ),
    Case(
        "predict: --axes with unknown letters",
        lambda d, m, t: ["predict", m, d / "images" / "00.png", "--out", t / "o", "--axes", "QX"],
        "unknown letters",
    ),
    Case(
        "predict: uint32 image is accepted",
        lambda d, m, t: [
            "predict",
            m,
            tiff(t / "u32.tif", (make_cells((48, 48), 3)[0] * 1e6).astype(np.uint32)),
            "--out",
            t / "o",
        ],
        "segmented 1 image",
        code=0,
        allowed=lambda t: [t / "o" / "u32_labels.tif"],
    ),
    Case(
        "predict: int8 image is accepted",
        lambda d, m, t: [
            "predict",
            m,
            tiff(t / "i8.tif", (make_cells((48, 48), 3)[0] * 100 - 50).astype(np.int8)),
            "--out",
            t / "o",
        ],
        "segmented 1 image",
        code=0,
        allowed=lambda t: [t / "o" / "i8_labels.tif"],
    ),
    Case(
        "predict: existing results replaced with --overwrite",
        lambda d, m, t: [
            "predict",
            m,
            d / "images" / "00.png",
            "--overwrite",
            "--out",
            tiff(t / "o" / "00_labels.tif", np.ones((4, 4), np.int32)).parent,
        ],
        "segmented 1 image",
        code=0,
        allowed=lambda t: [t / "o" / "00_labels.tif"],
    ),
    # ------------------------------------------------------------------------------------------- options
    Case(
        "predict: --tile-size 0",
        lambda d, m, t: ["predict", m, d / "images", "--out", t / "o", "--tile-size", "0"],
        "expected an integer >= 1",
    ),
    Case(
        "predict: --threshold 1.5",
        lambda d, m, t: ["predict", m, d / "images", "--out", t / "o", "--threshold", "1.5"],
        "in [0, 1]",
    ),
    Case(
        "predict: --min-size -3",
        lambda d, m, t: ["predict", m, d / "images", "--out", t / "o", "--min-size", "-3"],
        "expected an integer >= 0",
    ),
    Case(
        "predict: --device tpu",
        lambda d, m, t: ["predict", m, d / "images", "--out", t / "o", "--device", "tpu"],
        "device must be",
    ),
    Case(
        "train: --iterations 0",
        lambda d, m, t: ["train", d / "images", d / "labels", "--out", t / "m", "--iterations", "0"],
        "expected an integer >= 1",
    ),
    Case(
        "train: --learning-rate nan",
        lambda d, m, t: ["train", d / "images", d / "labels", "--out", t / "m", "--learning-rate", "nan"],
        "expected a finite number > 0",
    ),
    Case(
        "train: --val-fraction 1",
        lambda d, m, t: ["train", d / "images", d / "labels", "--out", t / "m", "--val-fraction", "1"],
        "fraction in (0, 1)",
    ),
    Case(
        "train: --val-fraction with one image",
        lambda d, m, t: ["train", *one_pair(t), "--out", t / "m", "--val-fraction", "0.5", *TRAIN],
        "at least 2",
    ),
    Case(
        "train: --resume with a new --depth",
        lambda d, m, t: ["train", d / "images", d / "labels", "--out", m, "--resume", "--depth", "3"],
        "cannot change",
    ),
    Case(
        "train: --init with --depth",
        lambda d, m, t: ["train", d / "images", d / "labels", "--out", t / "m", "--init", m, "--depth", "3"],
        "new net",
    ),
    Case(
        "train: --out is the IMAGES folder",
        lambda d, m, t: ["train", d / "images", d / "labels", "--out", d / "images", "--overwrite"],
        "would replace the input",
    ),
    Case(
        "train: --out is the --init model",
        lambda d, m, t: ["train", d / "images", d / "labels", "--out", m, "--init", m, "--overwrite"],
        "would replace the input",
    ),
    Case(
        "train: --out holds a model, no --overwrite",
        lambda d, m, t: ["train", d / "images", d / "labels", "--out", m, *TRAIN],
        "--overwrite",
    ),
    Case(
        "train: --out under a file (fails before training)",
        lambda d, m, t: [
            "train",
            d / "images",
            d / "labels",
            "--out",
            tiff(t / "f.tif", np.ones((4, 4), np.uint8)) / "m",
            *TRAIN,
        ],
        "is a file, not a folder",
    ),
    Case(
        "train: --tune-postprocess without validation images",
        lambda d, m, t: ["train", d / "images", d / "labels", "--out", t / "m", "--tune-postprocess"],
        "needs validation images",
    ),
    # ------------------------------------------------------------------------------------------- labels
    Case(
        "train: float labels",
        lambda d, m, t: ["train", *one_pair(t, cells_labels(np.float32)), "--out", t / "m", *TRAIN],
        "must be integers",
    ),
    Case(
        "train: labels with the value -2",
        lambda d, m, t: ["train", *one_pair(t, cells_labels(np.int16) - 2), "--out", t / "m", *TRAIN],
        "found the value -2",
    ),
    Case(
        "train: labels of another size",
        lambda d, m, t: ["train", *one_pair(t, np.ones((30, 30), np.uint16)), "--out", t / "m", *TRAIN],
        "same size",
    ),
    Case("train: RGB labels", lambda d, m, t: ["train", *rgb_labels(t), "--out", t / "m", *TRAIN], "one 2-D plane"),
    Case(
        "train: every pixel 'not annotated'",
        lambda d, m, t: ["train", *one_pair(t, np.full((64, 64), -1, np.int16)), "--out", t / "m", *TRAIN],
        "annotations are empty",
    ),
    Case(
        "train: labels with no object at all",
        lambda d, m, t: ["train", *one_pair(t, np.zeros((64, 64), np.uint16)), "--out", t / "m", *TRAIN],
        "no object",
    ),
    Case(
        "train: --init a model with background-only corrections (a sparse mask) is accepted",
        lambda d, m, t: [
            "train",
            *one_pair(t, np.zeros((64, 64), np.uint16)),
            "--mask",
            tiff(t / "masks" / "a.tif", np.pad(np.ones((20, 20), np.uint8), 22)),
            "--init",
            m,
            "--out",
            t / "m",
            *TRAIN[4:],
        ],
        "trained 2 iterations",
        code=0,
        allowed=lambda t: [t / "m"],
    ),
    Case(
        "train: image with a NaN",
        lambda d, m, t: ["train", *one_pair(t, image=nan_image()), "--out", t / "m", *TRAIN],
        "NaN",
    ),
    Case(
        "train: a stack as a training image",
        lambda d, m, t: [
            "train",
            *one_pair(t, image=np.random.default_rng(1).random((5, 64, 64)).astype(np.float32), axes="ZYX"),
            "--out",
            t / "m",
            *TRAIN,
        ],
        "single 2-D planes",
    ),
    Case(
        "train: mask of another size",
        lambda d, m, t: [
            "train",
            *one_pair(t),
            "--mask",
            tiff(t / "masks" / "a.tif", np.ones((20, 20), np.uint8)),
            "--out",
            t / "m",
            *TRAIN,
        ],
        "same size",
    ),
    Case(
        "train: float mask",
        lambda d, m, t: [
            "train",
            *one_pair(t),
            "--mask",
            tiff(t / "masks" / "a.tif", np.ones((64, 64), np.float32)),
            "--out",
            t / "m",
            *TRAIN,
        ],
        "must be integers",
    ),
    Case(
        "train: sparse -1 in int16 labels is accepted",
        lambda d, m, t: ["train", *one_pair(t, sparse(np.int16)), "--out", t / "m", *TRAIN],
        "trained 2 iterations",
        code=0,
        allowed=lambda t: [t / "m"],
    ),
    Case(
        "train: sparse 65535 in uint16 labels is accepted",
        lambda d, m, t: ["train", *one_pair(t, sparse(np.uint16)), "--out", t / "m", *TRAIN],
        "trained 2 iterations",
        code=0,
        allowed=lambda t: [t / "m"],
    ),
    Case(
        "train: ids >= 2**31 (uint32) are accepted",
        lambda d, m, t: ["train", *one_pair(t, cells_labels(np.uint32, 2**31)), "--out", t / "m", *TRAIN],
        "trained 2 iterations",
        code=0,
        allowed=lambda t: [t / "m"],
    ),
    Case(
        "train: ids >= 2**63 (uint64) are accepted",
        lambda d, m, t: ["train", *one_pair(t, cells_labels(np.uint64, 2**63)), "--out", t / "m", *TRAIN],
        "trained 2 iterations",
        code=0,
        allowed=lambda t: [t / "m"],
    ),
    Case(
        "train: int8 labels are accepted",
        lambda d, m, t: ["train", *one_pair(t, cells_labels(np.int8)), "--out", t / "m", *TRAIN],
        "trained 2 iterations",
        code=0,
        allowed=lambda t: [t / "m"],
    ),
    Case(
        "train: bool labels are a binary mask",
        lambda d, m, t: ["train", *one_pair(t, cells_labels(np.int64) > 0), "--out", t / "m", *TRAIN],
        "trained 2 iterations",
        code=0,
        allowed=lambda t: [t / "m"],
    ),
    # ------------------------------------------------------------------------------------------ models
    Case(
        "predict: model folder missing",
        lambda d, m, t: ["predict", t / "no.model", d / "images", "--out", t / "o"],
        "not a napari-unet model folder",
    ),
    Case(
        "predict: config.json not JSON",
        lambda d, m, t: [
            "predict",
            copy_model(m, t, lambda f: (f / "config.json").write_bytes(b"{\xff")),
            d / "images",
            "--out",
            t / "o",
        ],
        "not valid JSON",
    ),
    Case(
        "predict: a foreign config.json",
        lambda d, m, t: ["predict", copy_model(m, t, edit_config(format="other")), d / "images", "--out", t / "o"],
        "not a napari-unet model",
    ),
    Case(
        "predict: a newer format",
        lambda d, m, t: ["predict", copy_model(m, t, edit_config(format_version=99)), d / "images", "--out", t / "o"],
        "newer",
    ),
    Case(
        "predict: format_version a string",
        lambda d, m, t: ["predict", copy_model(m, t, edit_config(format_version="1")), d / "images", "--out", t / "o"],
        "format_version",
    ),
    Case(
        "predict: a config that asks for a huge network",
        lambda d, m, t: [
            "predict",
            copy_model(m, t, edit_config(**{"unet.base_channels": 10**9})),
            d / "images",
            "--out",
            t / "o",
        ],
        "unet.base_channels must be an integer",
    ),
    Case(
        "predict: unet not an object",
        lambda d, m, t: ["predict", copy_model(m, t, edit_config(unet=[1, 2])), d / "images", "--out", t / "o"],
        "JSON object",
    ),
    Case(
        "predict: an unknown post-processing key",
        lambda d, m, t: [
            "predict",
            copy_model(m, t, edit_config(**{"postprocess.magic": 1})),
            d / "images",
            "--out",
            t / "o",
        ],
        "unknown",
    ),
    Case(
        "predict: truncated weights",
        lambda d, m, t: [
            "predict",
            copy_model(m, t, lambda f: truncate(f / "weights.safetensors", 0.5)),
            d / "images",
            "--out",
            t / "o",
        ],
        "corrupted",
    ),
    Case(
        "predict: weights of another network",
        lambda d, m, t: ["predict", copy_model(m, t, edit_config(**{"unet.depth": 3})), d / "images", "--out", t / "o"],
        "do not match",
    ),
    Case(
        "info: config.json is a list",
        lambda d, m, t: ["info", copy_model(m, t, lambda f: (f / "config.json").write_text("[1, 2]"))],
        "not a napari-unet model config",
    ),
    Case(
        "train --resume: a corrupted training state",
        lambda d, m, t: [
            "train",
            d / "images",
            d / "labels",
            "--resume",
            "--out",
            copy_model(m, t, lambda f: (f / "training_state.pt").write_bytes(b"PK\x03\x04junk")),
            "-q",
        ],
        "training state is corrupted",
    ),
    Case(
        "train --resume: a model without a training state (a built-in one copied)",
        lambda d, m, t: [
            "train",
            d / "images",
            d / "labels",
            "--resume",
            "--out",
            copy_model(m, t, lambda f: (f / "training_state.pt").unlink()),
            "-q",
        ],
        "fine-tune it with --init",
    ),
    # ----------------------------------------------------------------------------------------- evaluate
    Case(
        "evaluate: ids >= 2**31 score as any ids",
        lambda d, m, t: [
            "evaluate",
            tiff(t / "p" / "a.tif", cells_labels(np.uint32, 2**31)),
            tiff(t / "g" / "a.tif", cells_labels(np.uint32, 2**31)),
        ],
        "1.0000",
        code=0,
    ),
    Case(
        "evaluate: shapes differ",
        lambda d, m, t: [
            "evaluate",
            tiff(t / "p.tif", np.ones((8, 8), np.int32)),
            tiff(t / "g.tif", np.ones((9, 9), np.int32)),
        ],
        "has shape",
    ),
    Case(
        "evaluate: float ground truth",
        lambda d, m, t: [
            "evaluate",
            tiff(t / "p.tif", np.ones((8, 8), np.int32)),
            tiff(t / "g.tif", np.ones((8, 8), np.float32)),
        ],
        "integer array",
    ),
    Case(
        "evaluate: NaN probabilities (isbi)",
        lambda d, m, t: [
            "evaluate",
            tiff(t / "p.tif", np.full((8, 8), np.nan, np.float32)),
            tiff(t / "g.tif", np.ones((8, 8), np.uint8)),
            "--kind",
            "isbi",
        ],
        "finite",
    ),
    # ------------------------------------------------------------------------------------ weights, demo
    Case(
        "weights: --out is the labels file",
        lambda d, m, t: ["weights", tiff(t / "l.tif", cells_labels(np.uint16)), "--out", t / "l.tif", "--overwrite"],
        "would replace the input",
    ),
    Case(
        "weights: existing --out without --overwrite",
        lambda d, m, t: [
            "weights",
            tiff(t / "l.tif", cells_labels(np.uint16)),
            "--out",
            tiff(t / "w.tif", np.ones((4, 4), np.float32)),
        ],
        "--overwrite",
    ),
    Case(
        "weights: mask of another size",
        lambda d, m, t: [
            "weights",
            tiff(t / "l.tif", cells_labels(np.uint16)),
            "--mask",
            tiff(t / "k.tif", np.ones((5, 5), np.uint8)),
            "--out",
            t / "w.tif",
        ],
        "shape",
    ),
    Case(
        "weights: sparse -1 in int32 labels gets weight 0 there",
        lambda d, m, t: ["weights", tiff(t / "l.tif", sparse(np.int32)), "--out", t / "w.tif"],
        "written to",
        code=0,
        allowed=lambda t: [t / "w.tif"],
    ),
    Case(
        "demo: --out holds an earlier demo",
        lambda d, m, t: ["demo", "--out", copy_model(m, t).parent, "--iterations", "1", "-q"],
        "--overwrite",
    ),
    # ------------------------------------------------------------- found by the session-13 audit of the CLI
    Case(
        "predict: a boolean image is accepted (0 and 1)",
        lambda d, m, t: ["predict", m, bool_tiff(t / "b.tif"), "--out", t / "o"],
        "segmented 1 image",
        code=0,
        allowed=lambda t: [t / "o" / "b_labels.tif"],
    ),
    Case(
        "train: a boolean image is accepted (0 and 1)",
        lambda d, m, t: ["train", bool_tiff(t / "i" / "a.tif"), one_pair(t)[1] / "a.tif", "--out", t / "m", *TRAIN],
        "trained 2 iterations",
        code=0,
        allowed=lambda t: [t / "m"],
    ),
    Case(
        "train: labels in a palette PNG are its ids, not its colours",
        lambda d, m, t: ["train", one_pair(t)[0], palette_png(t / "p" / "a.png"), "--out", t / "m", *TRAIN],
        "trained 2 iterations",
        code=0,
        allowed=lambda t: [t / "m"],
    ),
    Case(
        "train: --resume with --validation-images but no --validation-labels",
        lambda d, m, t: [
            "train",
            d / "images",
            d / "labels",
            "--out",
            copy_model(m, t),
            "--resume",
            "--validation-images",
            d / "images",
        ],
        "give both --validation-images and --validation-labels",
    ),
    Case(
        "train: a dangling symbolic link beside --out is none of its business",
        lambda d, m, t: ["train", d / "images", d / "labels", "--out", dangling_beside(t) / "m", *TRAIN],
        "trained 2 iterations",
        code=0,
        allowed=lambda t: [t / "m"],
    ),
    Case(
        "measure: label ids of 3e9 are measured under their own ids",
        lambda d, m, t: ["measure", tiff(t / "l.tif", cells_labels(np.uint32, 3 * 10**9)), "--out", t / "m.csv"],
        "measured",
        code=0,
        allowed=lambda t: [t / "m.csv"],
    ),
    Case(
        "rois: label ids of 3e9 become ROIs named by their ids",
        lambda d, m, t: ["rois", tiff(t / "l.tif", cells_labels(np.uint32, 3 * 10**9)), "--out", t / "r.zip"],
        "ROIs ->",
        code=0,
        allowed=lambda t: [t / "r.zip"],
    ),
    Case(
        "measure: a predict --probabilities folder: the probability maps are skipped",
        lambda d, m, t: ["measure", results_with_probabilities(t / "res"), "--out", t / "m.csv"],
        "measured",
        code=0,
        allowed=lambda t: [t / "m.csv"],
    ),
    Case(
        "measure: float labels name the file",
        lambda d, m, t: ["measure", tiff(t / "res" / "floaty.tif", np.ones((8, 8), np.float32)), "--out", t / "m.csv"],
        "floaty.tif",
    ),
    Case(
        "rois: ROIs drawn on a larger image",
        lambda d, m, t: [
            "rois",
            far_rois(t / "far.zip"),
            "--like",
            tiff(t / "s.tif", np.ones((32, 32), np.uint8)),
            "--out",
            t / "l.tif",
        ],
        "lies outside the 32 x 32 image",
    ),
    Case(
        "predict: --axes that do not fit one of the files names it",
        lambda d, m, t: ["predict", m, d / "images" / "00.png", "--axes", "ZYX", "--out", t / "o"],
        "00.png",
    ),
    Case(
        "weights: --border 0 (the fast preset's) is accepted",
        lambda d, m, t: ["weights", tiff(t / "l.tif", cells_labels(np.uint16)), "--border", "0", "--out", t / "w.tif"],
        "written to",
        code=0,
        allowed=lambda t: [t / "w.tif"],
    ),
    Case(
        "weights: --w0 inf",
        lambda d, m, t: ["weights", tiff(t / "l.tif", cells_labels(np.uint16)), "--w0", "inf", "--out", t / "w.tif"],
        "expected a finite number >= 0",
    ),
    Case(
        "train: IMAGES and LABELS the same folder of images",
        lambda d, m, t: ["train", d / "images", d / "images", "--out", t / "m", *TRAIN],
        "no file in it is named as a label file",
    ),
    Case(
        "train: --mask pointing at the labels",
        lambda d, m, t: ["train", d / "images", d / "labels", "--mask", d / "labels", "--out", t / "m", *TRAIN],
        "would be both labels and the mask",
    ),
    Case(
        "train: JPEG labels",
        lambda d, m, t: ["train", one_pair(t)[0], jpeg_labels(t / "j" / "a.jpg"), "--out", t / "m", *TRAIN],
        "JPEG's lossy compression",
    ),
    Case(
        "train: an image whose mask annotates nothing is never drawn",
        lambda d, m, t: [
            "train",
            d / "images",
            d / "labels",
            "--mask",
            empty_mask_for_one(t / "masks"),
            "--out",
            t / "m",
            *TRAIN,
            "--iterations",
            "6",
        ],
        "trained 6 iterations",
        code=0,
        allowed=lambda t: [t / "m"],
    ),
    Case(
        "train: --resume with --val-fraction and validation files",
        lambda d, m, t: [
            "train",
            d / "images",
            d / "labels",
            "--out",
            copy_model(m, t),
            "--resume",
            "--val-fraction",
            "0.5",
            "--validation-images",
            d / "images",
            "--validation-labels",
            d / "labels",
        ],
        "either validation files or --val-fraction",
    ),
    Case(
        "train: --resume --tune-postprocess without validation images",
        lambda d, m, t: [
            "train",
            d / "images",
            d / "labels",
            "--out",
            copy_model(m, t),
            "--resume",
            "--tune-postprocess",
        ],
        "--tune-postprocess needs validation images",
    ),
    Case(
        "train: --init with a model of other channels",
        lambda d, m, t: [
            "train",
            d / "images",
            d / "labels",
            "--init",
            rgb_model(t),
            "--out",
            t / "m",
            *TRAIN[4:],  # the saved net's size, not --depth / --base-channels
        ],
        "give images with 3 channels, or train a new model (without --init)",
    ),
    Case(
        "train: --init with a model of other channels, --channels picking too few",
        lambda d, m, t: (
            ["train", *rgb_pair(t), "--init", two_channel_model(t), "--channels", "1", "--out", t / "m"] + TRAIN[4:]
        ),
        "--channels/--grey give 1 channel(s): pick 2, or leave them out (the model's own choice is then used: "
        "channel(s) 0, 2)",
    ),
    Case(
        "train: grey images for an --init model that picks channels 0 and 2",
        lambda d, m, t: (
            ["train", d / "images", d / "labels", "--init", two_channel_model(t), "--out", t / "m"] + TRAIN[4:]
        ),
        "00.png: the image has one channel (axes 'YX') but channels [0, 2] were asked for (the channel choice of "
        "--init",
    ),
    Case(
        "train --resume: RGB images for a grey model's run",
        lambda d, m, t: [
            "train",
            *rgb_pair(t),
            "--out",
            copy_model(m, t),
            "--resume",
            "-q",
        ],
        "the images give 3 channel(s) but the run saved in --out takes 1 channel: all channels of the image: give "
        "images with 1 channel(s), as the run was trained on",
    ),
    Case(
        "train: --init a grey model with RGB images",
        lambda d, m, t: [
            "train",
            *rgb_pair(t),
            "--init",
            m,
            "--out",
            t / "m",
        ],
        "--channels LIST or --grey",
    ),
    Case(
        "weights: --out named .png",
        lambda d, m, t: ["weights", tiff(t / "l.tif", cells_labels(np.uint16)), "--out", t / "w.png"],
        "name it .tif",
    ),
    # ------------------------------------------------------------------- measure, rois, evaluate, export
    Case(
        "measure: a grey image given as labels (LABELS and IMAGES swapped)",
        lambda d, m, t: (
            ["measure", tiff(t / "i.tif", grey_image()), tiff(t / "l.tif", cells_labels(np.uint16))]
            + ["--out", t / "m.csv"]
        ),
        "does not look like instance labels",
    ),
    Case(
        "rois: a grey image given as labels",
        lambda d, m, t: ["rois", tiff(t / "i.tif", grey_image()), "--out", t / "r.zip"],
        "the labels file i.tif does not look like instance labels",
    ),
    Case(
        "rois: labels to ROIs with --like an image of another size",
        lambda d, m, t: (
            ["rois", tiff(t / "l.tif", cells_labels(np.uint16)), "--like", tiff(t / "big.tif", np.ones((80, 96)))]
            + ["--out", t / "r.zip"]
        ),
        "l.tif is 64 x 64 but --like big.tif is 80 x 96",
    ),
    Case(
        "rois: labels to ROIs with --like an image of their size",
        lambda d, m, t: (
            ["rois", tiff(t / "l.tif", cells_labels(np.uint16)), "--like", tiff(t / "i.tif", grey_image())]
            + ["--out", t / "r.zip"]
        ),
        "ROIs ->",
        code=0,
        allowed=lambda t: [t / "r.zip"],
    ),
    Case(
        "measure: the uint16 'not annotated' value 65535 is no object",
        lambda d, m, t: ["measure", tiff(t / "l.tif", sparse(np.uint16)), "--out", t / "m.csv"],
        f"measured {objects_left_of(40)} objects",
        code=0,
        allowed=lambda t: [t / "m.csv"],
    ),
    Case(
        "rois: the uint16 'not annotated' value 65535 is no object",
        lambda d, m, t: ["rois", tiff(t / "l.tif", sparse(np.uint16)), "--out", t / "r.zip"],
        f"{objects_left_of(40)} ROIs ->",
        code=0,
        allowed=lambda t: [t / "r.zip"],
    ),
    Case(
        "measure: negative ids other than -1",
        lambda d, m, t: ["measure", tiff(t / "l.tif", cells_labels(np.int32) - 2), "--out", t / "m.csv"],
        "found the value -2",
    ),
    Case(
        "rois: negative ids other than -1",
        lambda d, m, t: ["rois", tiff(t / "l.tif", cells_labels(np.int32) - 2), "--out", t / "r.zip"],
        "found the value -2",
    ),
    Case(
        "measure: --out an existing folder, with --overwrite",
        lambda d, m, t: (
            ["measure", tiff(t / "l.tif", cells_labels(np.uint16)), "--out", folder(t / "m.csv")] + ["--overwrite"]
        ),
        "is a folder",
    ),
    Case(
        "rois: --out an existing folder, with --overwrite",
        lambda d, m, t: (
            ["rois", tiff(t / "l.tif", cells_labels(np.uint16)), "--out", folder(t / "r.zip")] + ["--overwrite"]
        ),
        "is a folder",
    ),
    Case(
        "rois: --out an existing folder, without --overwrite (which could not help)",
        lambda d, m, t: ["rois", tiff(t / "l.tif", cells_labels(np.uint16)), "--out", folder(t / "r.zip")],
        "r.zip is a folder: an ImageJ ROI set is written as a .zip file; choose a file name",
    ),
    Case(
        "export: --out an existing folder, TorchScript, without --overwrite (which could not help)",
        lambda d, m, t: ["export", m, "--format", "torchscript", "--out", folder(t / "x.pt")],
        "is a folder",
    ),
    Case(
        "rois: a folder given as the label image",
        lambda d, m, t: ["rois", d / "labels", "--out", t / "r.zip"],
        "is a folder",
    ),
    Case(
        "export: --out an existing folder, TorchScript, with --overwrite",
        lambda d, m, t: ["export", m, "--format", "torchscript", "--out", folder(t / "x.pt"), "--overwrite"],
        "is a folder",
    ),
    Case(
        "export: TorchScript --out named .onnx",
        lambda d, m, t: ["export", m, "--format", "torchscript", "--out", t / "model.onnx"],
        "--out model.onnx: a TorchScript export is written as a .pt file (or .pth, .ts): name it model.pt",
    ),
    Case(
        "export: ONNX --out an existing TIFF image, with --overwrite",
        lambda d, m, t: (
            ["export", m, "--format", "onnx", "--out", tiff(t / "lab.tif", cells_labels(np.uint16))] + ["--overwrite"]
        ),
        "--out lab.tif: an ONNX export is written as a .onnx file: name it lab.onnx",
    ),
    Case(
        "export: --out a folder that is not a bioimage.io package, with --overwrite",
        lambda d, m, t: ["export", m, "--format", "bioimageio", "--out", one_pair(t)[0], "--overwrite"],
        "not a bioimage.io package",
    ),
    Case(
        "export: --out a zip file that is not a bioimage.io package, with --overwrite",
        lambda d, m, t: ["export", m, "--format", "bioimageio", "--out", _zip(t / "data.zip"), "--overwrite"],
        "data.zip exists and is not a bioimage.io package",
    ),
    Case(
        "evaluate: a grey image as ground truth (--kind pixels)",
        lambda d, m, t: (
            ["evaluate", tiff(t / "p.tif", cells_labels(np.uint16)), tiff(t / "g.tif", grey_image())]
            + ["--kind", "pixels"]
        ),
        "ground truth g.tif does not look like instance labels",
    ),
    Case(
        "evaluate: a grey image as prediction (--kind isbi)",
        lambda d, m, t: (
            ["evaluate", tiff(t / "p.tif", grey_image()), tiff(t / "g.tif", cells_labels(np.uint16))]
            + ["--kind", "isbi"]
        ),
        "prediction p.tif does not look like instance labels",
    ),
    Case(
        "evaluate: a 0/255 mask prediction is scored by its components (--kind isbi)",
        lambda d, m, t: ["evaluate", tiff(t / "p.tif", membranes()), tiff(t / "g.tif", membranes()), "--kind", "isbi"],
        "mean (1)  1.0000  1.0000",
        code=0,
    ),
    Case(
        "evaluate: float labels are no probabilities (--kind isbi)",
        lambda d, m, t: (
            ["evaluate", tiff(t / "p.tif", cells_labels(np.float32)), tiff(t / "g.tif", cells_labels(np.uint16))]
            + ["--kind", "isbi"]
        ),
        "probabilities in [0, 1]",
    ),
]


def grey_image() -> np.ndarray:
    """The synthetic cells' intensities as a 12-bit grey image (uint16): what a swapped IMAGES gives as labels."""
    return (make_cells((64, 64), seed=7)[0] * 4000).astype(np.uint16)


def membranes() -> np.ndarray:
    """An ISBI-style uint8 mask: cells 255, 1-pixel background lines between touching cells and around them."""
    labels = make_cells((64, 64), seed=7)[1]
    return np.where(find_boundaries(labels) | (labels == 0), 0, 255).astype(np.uint8)


def folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def bool_tiff(path: Path) -> Path:
    """The synthetic cells' mask as a boolean image (tifffile writes it as a bilevel TIFF, read back as bool)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, make_cells((64, 64), seed=7)[1] > 0)
    assert read_image(path)[0].dtype == bool
    return path


def palette_png(path: Path) -> Path:
    """The synthetic cells' labels as a palette PNG whose colours are all alike but for the background."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = make_cells((64, 64), seed=7)[1].astype(np.uint8)
    image = Image.fromarray(cells, mode="P")
    image.putpalette([0, 0, 0] + [255, 0, 0] * 255)  # every cell drawn red: as colours, one object
    image.save(path)
    return path


def dangling_beside(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dangling").symlink_to(folder / "nowhere")
    return folder


def results_with_probabilities(folder: Path) -> Path:
    tiff(folder / "a_labels.tif", cells_labels(np.int32))
    tiff(folder / "a_probs.tif", np.full((64, 64), 0.5, np.float32))
    return folder


def far_rois(path: Path) -> Path:
    """An ROI zip with one rectangle at x, y = 100..110, off a 32 x 32 image."""
    roifile = pytest.importorskip("roifile")
    roi = roifile.ImagejRoi.frompoints(np.array([[100, 100], [110, 100], [110, 110], [100, 110]]), name="1")
    roi.roitype = roifile.ROI_TYPE.POLYGON
    roifile.roiwrite(path, [roi])
    return path


def truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def png_named(path: Path) -> Path:
    """A PNG under `path`'s name, whatever its suffix (a file renamed by hand)."""
    Image.fromarray((make_cells((48, 48), 1)[0] * 255).astype(np.uint8)).save(path, format="PNG")
    return path


def rgb_cells(path: Path) -> Path:
    """The synthetic cells of `one_pair` as an RGB PNG (3 channels of the same size as its labels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = (make_cells((64, 64), seed=7)[0] * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey, grey // 2, 255 - grey], axis=-1)).save(path)
    return path


def rgb_pair(folder: Path) -> tuple[Path, Path]:
    """An RGB image of `one_pair`'s cells and its labels (a.png and a.tif)."""
    return rgb_cells(folder / "i" / "a.png"), one_pair(folder)[1] / "a.tif"


def rgb_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
    return path


def zarr_array(path: Path, shape: tuple[int, ...]) -> Path:
    import zarr

    array = zarr.open(str(path), mode="w", shape=shape, dtype="f4")
    array[...] = np.random.default_rng(0).random(shape, dtype=np.float32)
    return path


def rgb_labels(folder: Path) -> tuple[Path, Path]:
    write_png(folder / "images" / "a.png", make_cells((48, 48), 1)[0])
    rgb_png(folder / "labels" / "a.png")
    return folder / "images", folder / "labels"


def test_the_catalogue_has_at_least_60_cases():
    assert len(CASES) >= 60 and len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_catalogue(case: Case, shared, tmp_path, capsys):
    data, model = shared
    argv = [str(a) for a in case.argv(data, model, tmp_path)]
    before = snapshot(tmp_path, data, model)
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert code == case.code, captured.err
    if case.code == 2:
        # argparse's usage (when printed), then one line: "napari-unet[ COMMAND]: error: MESSAGE"
        lines = captured.err.strip().splitlines()
        assert lines and re.match(r"napari-unet( [a-z]+)?: error: ", lines[-1]), captured.err
        assert case.message in lines[-1], captured.err
    else:
        assert case.message in captured.out
    after = snapshot(tmp_path, data, model)
    allowed = [str(p) for p in case.allowed(tmp_path)]
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    unexpected = [p for p in changed if not any(p == a or p.startswith(a + "/") for a in allowed)]
    assert not unexpected, f"files changed that should not have: {sorted(unexpected)}"
    leftovers = [p for p in after if Path(p).name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_an_accepted_ids_above_2_31_labelling_trains_the_same_cells(tmp_path):
    """Ids >= 2**31 are renumbered, not wrapped: the trained model's data hash equals that of ids 1..n."""
    from napari_unet.pipeline import read_training_pair

    images, labels = one_pair(tmp_path, cells_labels(np.uint32, 2**31))
    _, read, _ = read_training_pair(images / "a.png", labels / "a.tif")
    assert read.dtype == np.int32 and read.min() == 0
    np.testing.assert_array_equal(read, cells_labels(np.int32))  # 2**31 + k -> k, order kept


def test_predict_never_leaves_a_complete_looking_file_when_it_fails(shared, tmp_path, capsys, monkeypatch):
    """A failure mid-prediction (here in the second plane of a stack) leaves neither outputs nor temporaries."""
    from napari_unet import modelfile

    _, model = shared
    stack = np.stack([make_cells((48, 48), seed=s)[0] for s in (1, 2)])
    tiff(tmp_path / "movie.tif", stack, "TYX")
    original, calls = modelfile.probs_to_labels, []

    def fails_in_the_second_plane(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("simulated: out of memory in the second plane")
        return original(*args, **kwargs)

    monkeypatch.setattr(modelfile, "probs_to_labels", fails_in_the_second_plane)  # ModelBundle.labels_of
    with pytest.raises(MemoryError):
        main(
            ["predict", str(model), str(tmp_path / "movie.tif"), "--out", str(tmp_path / "o"), "--probabilities", "-q"]
        )
    assert len(calls) == 2
    assert list((tmp_path / "o").iterdir()) == []


def test_train_overwrite_that_fails_at_its_first_step_keeps_the_old_model(shared, tmp_path, capsys, monkeypatch):
    """The issue's case: `train --out EXISTING --overwrite` crashing at step 1 (out of memory) kept nothing of
    the old model. Now the old model is untouched, byte for byte."""
    from napari_unet.training import Trainer

    data, model = shared
    existing = copy_model(model, tmp_path)
    before = snapshot(existing)

    def out_of_memory(self):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Trainer, "_step", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["train", str(data / "images"), str(data / "labels"), "--out", str(existing), "--overwrite", *TRAIN])
    assert snapshot(existing) == before
    assert load_model(existing).metadata["iterations"] == 2


def test_demo_overwrite_keeps_the_earlier_model_until_the_new_one_is_saved(tmp_path, capsys, monkeypatch):
    from napari_unet.training import Trainer

    out = tmp_path / "demo"
    from napari_unet.model import UNet
    from napari_unet.modelfile import ModelBundle, save_model

    save_model(out / "model", ModelBundle(UNet(depth=2, base_channels=4)))
    before = snapshot(out / "model")
    monkeypatch.setattr(Trainer, "_step", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    code = main(["demo", "--out", str(out), "--overwrite", "--iterations", "1", "--device", "cpu", "-q"])
    assert code == 130
    assert snapshot(out / "model") == before
    assert read_image(out / "data" / "test" / "labels" / "test.tif")[0].max() > 0


def test_predict_says_what_it_assumed_of_a_file_without_axes(shared, tmp_path, capsys):
    """A 3-plane stack saved by tifffile without metadata is stored as planar RGB and read as 3 channels: the
    command line says so, and how to read it as planes (here with a grey conversion, which would average the
    planes, as the built-in model's channel choice does); with --axes it says nothing."""
    import tifffile

    _, model = shared
    stack = np.stack([make_cells((48, 48), seed=s)[0] for s in (1, 2, 3)]).astype(np.float32)
    tifffile.imwrite(tmp_path / "z3.tif", stack)
    assert main(["predict", str(model), str(tmp_path / "z3.tif"), "--out", str(tmp_path / "o"), "--grey"]) == 0
    assert "z3.tif: its axes are not in the file: read as CYX (3 channels) by guess; give --axes ZYX" in (
        capsys.readouterr().err
    )
    argv = ["predict", str(model), str(tmp_path / "z3.tif"), "--out", str(tmp_path / "p"), "--axes", "ZYX"]
    assert main(argv) == 0
    assert "by guess" not in capsys.readouterr().err
    assert read_image(tmp_path / "p" / "z3_labels.tif")[1] == "ZYX"  # three planes of labels


def test_a_refused_input_leaves_no_empty_out_folder(shared, tmp_path, capsys):
    _, model = shared
    out = tmp_path / "new" / "results"
    assert main(["predict", str(model), str(tiff(tmp_path / "nan.tif", nan_image())), "--out", str(out)]) == 2
    assert not (tmp_path / "new").exists()


def test_a_missing_optional_package_is_one_line_before_any_output(shared, tmp_path, capsys, monkeypatch):
    """roifile missing: `predict --rois` says how to install it before it writes anything; `rois` too."""
    import sys

    data, model = shared
    monkeypatch.setitem(sys.modules, "roifile", None)  # import roifile raises ImportError
    assert main(["predict", str(model), str(data / "images"), "--out", str(tmp_path / "o"), "--rois"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pip install 'napari-unet-2015[rois]'" in err
    assert not (tmp_path / "o").exists()
    assert main(["rois", str(tiff(tmp_path / "l.tif", cells_labels(np.uint16))), "--out", str(tmp_path / "r.zip")]) == 2
    assert "napari-unet-2015[rois]" in capsys.readouterr().err


def test_outputs_and_models_are_readable_as_the_umask_says(shared, tmp_path, capsys):
    """Written under a temporary name (owner-only by tempfile) and renamed: the results and a saved model get
    the permissions of any new file or folder, so colleagues on a shared drive can read them."""
    import stat

    from napari_unet.io import default_mode

    data, model = shared
    out = tmp_path / "o"
    argv = ["predict", str(model), str(data / "images" / "00.png"), "--out", str(out), "--probabilities", "-q"]
    assert main(argv) == 0
    for path in (out / "00_labels.tif", out / "00_probs.tif"):
        assert stat.S_IMODE(path.stat().st_mode) == default_mode()
    assert main(["train", str(data / "images"), str(data / "labels"), "--out", str(tmp_path / "m"), *TRAIN]) == 0
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == default_mode(folder=True)
    assert stat.S_IMODE((tmp_path / "m" / "config.json").stat().st_mode) == default_mode()


def test_overwriting_with_no_objects_leaves_no_roi_file_of_the_earlier_run(shared, tmp_path, capsys):
    pytest.importorskip("roifile")
    data, model = shared
    argv = ["predict", str(model), str(data / "images" / "00.png"), "--out", str(tmp_path / "o"), "--rois", "-q"]
    assert main([*argv, "--threshold", "0.0"]) == 0  # everything foreground: at least one object, its ROI
    assert (tmp_path / "o" / "00_rois.zip").is_file()
    assert main([*argv, "--overwrite", "--threshold", "1.0"]) == 0  # nothing is foreground
    assert read_image(tmp_path / "o" / "00_labels.tif")[0].max() == 0
    assert not (tmp_path / "o" / "00_rois.zip").exists()


def jpeg_labels(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(((make_cells((64, 64), seed=7)[1] > 0) * 255).astype(np.uint8)).save(path, quality=75)
    return path


def empty_mask_for_one(folder: Path) -> Path:
    """Masks for the shared images: 00 annotated everywhere, 01 nowhere (a window centred on none of its pixels
    could be drawn: it crashed at random before)."""
    tiff(folder / "00.tif", np.ones((64, 64), np.uint8))
    tiff(folder / "01.tif", np.zeros((64, 64), np.uint8))
    return folder


def rgb_model(folder: Path) -> Path:
    from napari_unet.model import UNet
    from napari_unet.modelfile import ModelBundle, save_model

    return save_model(folder / "rgb.model", ModelBundle(UNet(depth=2, base_channels=4, in_channels=3)))


def two_channel_model(folder: Path) -> Path:
    """A tiny model of 2 input channels that picks channels 0 and 2 of an image."""
    from napari_unet.channels import ChannelChoice
    from napari_unet.model import UNet
    from napari_unet.modelfile import ModelBundle, save_model

    bundle = ModelBundle(UNet(depth=2, base_channels=4, in_channels=2), channels=ChannelChoice((0, 2)))
    return save_model(folder / "two.model", bundle)


def test_resume_with_a_time_budget_alone_trains_for_it(shared, tmp_path, capsys):
    """`--resume --time-budget S` without --iterations: the budget (in all) ends the run, not the saved steps."""
    data, model = shared
    resumed = copy_model(model, tmp_path)
    argv = ["train", str(data / "images"), str(data / "labels"), "--out", str(resumed), "--resume", "-q"]
    budget = load_model(resumed).metadata["elapsed_seconds"] + 1.0
    assert main([*argv, "--time-budget", str(budget), "--device", "cpu"]) == 0
    assert load_model(resumed).metadata["iterations"] > 2


def test_masks_apply_to_validation_images_in_their_own_folder_too(shared, tmp_path):
    """Validation images given as files of their own (here named like the training images) get the masks of
    their names; they were ignored, so a half-annotated validation image counted as annotated everywhere."""
    import argparse

    from napari_unet.cli._train_data import training_data

    data, _ = shared
    validation = tmp_path / "validation"
    shutil.copytree(data / "images", validation / "images")
    shutil.copytree(data / "labels", validation / "labels")
    masks = empty_mask_for_one(tmp_path / "masks")
    args = argparse.Namespace(
        images=data / "images",
        labels=data / "labels",
        mask=masks,
        validation_images=validation / "images",
        validation_labels=validation / "labels",
        val_fraction=None,
        seed=0,
        quiet=True,
        channel_choice=None,
    )
    train, held_out = training_data(args)
    assert len(train) == len(held_out) == 2
    assert all(sample.mask is not None for sample in train + held_out)
    assert not held_out[1].mask.any()  # 01's mask: nothing annotated


def test_folders_of_one_file_each_pair_with_a_note_when_their_names_differ(tmp_path, capsys):
    image, labels = make_cells((64, 64), seed=7)
    write_png(tmp_path / "images" / "00.png", image)
    tiff(tmp_path / "labels" / "02.tif", labels.astype(np.uint16))
    argv = ["train", str(tmp_path / "images"), str(tmp_path / "labels"), "--out", str(tmp_path / "m"), *TRAIN[:-3]]
    assert main([*argv, "--iterations", "2"]) == 0  # not -q: the note is the point
    assert "paired 00.png with 02.tif, the only files, although their names differ" in capsys.readouterr().err


def test_an_image_that_annotates_nothing_is_named(shared, tmp_path, capsys):
    data, _ = shared
    masks = empty_mask_for_one(tmp_path / "masks")
    argv = ["train", str(data / "images"), str(data / "labels"), "--mask", str(masks), "--out", str(tmp_path / "m")]
    assert main([*argv, *TRAIN[:-3], "--iterations", "2"]) == 0
    assert "1 image(s) annotate no pixel (mask or labels) and are not used: 01.png" in capsys.readouterr().err


def test_an_image_whose_labels_have_no_object_is_named(shared, tmp_path, capsys):
    data, _ = shared
    labels = tmp_path / "labels"
    shutil.copytree(data / "labels", labels)
    tiff(labels / "01.tif", np.zeros((64, 64), np.uint16))
    argv = ["train", str(data / "images"), str(labels), "--out", str(tmp_path / "m"), *TRAIN[:-3], "--iterations", "2"]
    assert main(argv) == 0
    assert "1 image(s) have no object in their labels and teach background only: 01.png" in capsys.readouterr().err


def test_train_on_a_missing_device_fails_before_reading_the_data(tmp_path, capsys, monkeypatch):
    """--device cuda on a machine without CUDA: one error line at once, not after reading (and rescaling) the data
    (here labels of another size, which reading would refuse)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    images, labels = one_pair(tmp_path, np.ones((30, 30), np.uint16))
    argv = ["train", str(images), str(labels), "--out", str(tmp_path / "m"), *TRAIN, "--device", "cuda"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "device 'cuda' requested but CUDA is not available here" in lines[0], lines


def test_measure_and_rois_take_the_not_annotated_value_as_background(tmp_path, capsys):
    """-1 (signed) and the maximum of uint16 and wider mark "not annotated" (docs/formats.md): no object, as in
    training; uint8 has no reserved value, so a label image with an object 255 keeps it."""
    import csv

    pytest.importorskip("roifile")
    from napari_unet.roi import read_rois

    eight_bit = cells_labels(np.uint8)
    eight_bit[eight_bit == 1] = 255  # an object, not "not annotated"
    tables, rois = {}, {}
    for dtype in (np.int32, np.uint16, np.uint32, np.uint8):
        labels = eight_bit if dtype == np.uint8 else sparse(dtype)
        path = tiff(tmp_path / f"{np.dtype(dtype).name}.tif", labels)
        assert main(["measure", str(path), "--out", str(tmp_path / f"{path.stem}.csv"), "-q"]) == 0
        with open(tmp_path / f"{path.stem}.csv") as file:
            tables[dtype] = [(row["label"], row["area"]) for row in csv.DictReader(file)]
        assert main(["rois", str(path), "--out", str(tmp_path / f"{path.stem}.zip"), "-q"]) == 0
        rois[dtype] = read_rois(tmp_path / f"{path.stem}.zip", labels.shape)
    capsys.readouterr()
    assert len(tables[np.int32]) == objects_left_of(40)
    assert tables[np.uint16] == tables[np.uint32] == tables[np.int32]
    for dtype in (np.uint16, np.uint32):
        np.testing.assert_array_equal(rois[dtype], rois[np.int32])
    assert ("255", str(float(np.sum(eight_bit == 255)))) in tables[np.uint8]
    assert 255 in rois[np.uint8]


def test_a_bad_input_is_named_once(tmp_path, capsys):
    """`predict` prefixed the readers' messages with the path they already begin with ("x.tif: cannot read
    x.tif ...")."""
    from napari_unet.cli import main

    (tmp_path / "x.tif").write_bytes(b"")
    assert main(["predict", "nuclei", str(tmp_path / "x.tif"), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.count(str(tmp_path / "x.tif")) == 1 and "the file is empty" in error
