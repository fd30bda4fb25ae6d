"""Real RGB images (DSB 2018 brightfield / H&E, ../shared/data/dsb2018-other) through the command line:
train a 3-channel network -> predict --measure --rois. Slow (about 15 min on 2 busy CPU cores): opt in with
--run-slow; skipped when the data is absent."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_unet.cli import main
from napari_unet.io import read_image, read_labels
from napari_unet.metrics import average_scores, evaluate_pair

pytestmark = pytest.mark.slow

TRAIN, TEST = 6, 2  # truly RGB images of one size (256 x 320), the first by name


def rgb_images(shared_data: Path) -> list[Path]:
    folder = shared_data / "dsb2018-other" / "train" / "images"
    chosen = []
    for path in sorted(folder.glob("*.png")):
        colour = np.asarray(Image.open(path))[..., :3]
        if colour.ndim == 3 and colour.shape[:2] == (256, 320) and not (colour == colour[..., :1]).all():
            chosen.append(path)
        if len(chosen) == TRAIN + TEST:
            return chosen
    pytest.skip(f"fewer than {TRAIN + TEST} RGB 256x320 images in {folder}")


def test_rgb_histology_train_predict_measure(shared_data, tmp_path, capsys):
    pandas = pytest.importorskip("pandas")
    images = rgb_images(shared_data)
    labels_folder = shared_data / "dsb2018-other" / "train" / "labels"
    for part, paths in (("train", images[:TRAIN]), ("test", images[TRAIN:])):
        for path in paths:
            (tmp_path / part / "images").mkdir(parents=True, exist_ok=True)
            (tmp_path / part / "labels").mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp_path / part / "images" / path.name)
            shutil.copy(labels_folder / path.name, tmp_path / part / "labels" / path.name)
    assert read_image(tmp_path / "train" / "images" / images[0].name)[1] == "CYX"

    model = tmp_path / "he.model"
    code = main(
        [
            str(a)
            for a in (
                "train",
                tmp_path / "train" / "images",
                tmp_path / "train" / "labels",
                "--out",
                model,
                "--iterations",
                "300",
                "--depth",
                "3",
                "--base-channels",
                "16",
                "--tile-size",
                "124",
                "--device",
                "cpu",
                "-q",
            )
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "out"
    code = main(
        [
            str(a)
            for a in (
                "predict",
                model,
                tmp_path / "test" / "images",
                "--out",
                out,
                "--measure",
                "--rois",
                "--device",
                "cpu",
                "-q",
            )
        ]
    )
    assert code == 0, capsys.readouterr().err
    scores = [
        evaluate_pair(read_labels(out / f"{p.stem}_labels.tif"), read_labels(labels_folder / p.name), "instances")
        for p in images[TRAIN:]
    ]
    mean = average_scores(scores)
    print(f"\nRGB model, 300 steps on {TRAIN} images: {mean}")
    assert mean["f1_50"] > 0.6, mean  # it learned nuclei from colour images (RGB model: 0.81 measured)

    table = pandas.read_csv(out / "measurements.csv", dtype={"image": str})
    assert len(table) == sum(int(read_labels(out / f"{p.stem}_labels.tif").max()) for p in images[TRAIN:])
    assert {"intensity_mean_c0", "intensity_mean_c1", "intensity_mean_c2"} <= set(table.columns)
    assert all((out / f"{p.stem}_rois.zip").is_file() for p in images[TRAIN:])
