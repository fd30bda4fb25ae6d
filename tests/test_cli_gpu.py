"""The command line's speed options (--precision, --augmentation, --gpus), run on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_unet.cli import main
from napari_unet.io import read_image, write_tiff
from napari_unet.modelfile import load_model
from napari_unet.synthetic import make_cells

TINY = ["--depth", "2", "--base-channels", "4", "--tile-size", "44", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for i in range(2):
        image, labels = make_cells((64, 72), seed=i)
        write_tiff(root / "images" / f"0{i}.tif", image.astype(np.float32), "YX")
        write_tiff(root / "labels" / f"0{i}.tif", labels.astype(np.uint16), "YX")
    return root


def train(data: Path, out: Path, *options: str) -> int:
    return main(["train", str(data / "images"), str(data / "labels"), "--out", str(out), *TINY, *options])


def test_train_in_bf16_with_batched_augmentation_then_predict_in_bf16(data, tmp_path, capsys):
    out = tmp_path / "m"
    options = ("--iterations", "3", "--batch-size", "2", "--precision", "bf16", "--augmentation", "batched")
    assert train(data, out, *options) == 0
    training = load_model(out).metadata["training"]
    assert (training["precision"], training["augmentation"], training["batch_size"]) == ("bf16", "batched", 2)
    capsys.readouterr()
    code = main(["predict", str(out), str(data / "images"), "--out", str(tmp_path / "r"), "--probabilities"])
    assert code == 0
    fp32 = read_image(tmp_path / "r" / "00_probs.tif")[0]
    code = main(["predict", str(out), str(data / "images"), "--out", str(tmp_path / "b"), "--probabilities",
                 "--precision", "bf16", "--device", "cpu", "-q"])  # fmt: skip
    assert code == 0
    bf16 = read_image(tmp_path / "b" / "00_probs.tif")[0]
    assert 0 < np.abs(bf16 - fp32).max() <= 0.05


def test_resume_keeps_the_saved_precision_unless_asked(data, tmp_path):
    out = tmp_path / "m"
    assert train(data, out, "--iterations", "2", "--precision", "bf16") == 0
    assert main(["train", str(data / "images"), str(data / "labels"), "--out", str(out), "--resume",
                 "--iterations", "3", "--device", "cpu", "-q"]) == 0  # fmt: skip
    assert load_model(out).metadata["training"]["precision"] == "bf16"


def test_precision_is_not_available_with_workers(data, tmp_path, capsys):
    out = tmp_path / "m"
    assert train(data, out, "--iterations", "1") == 0
    capsys.readouterr()
    code = main(["predict", str(out), str(data / "images"), "--out", str(tmp_path / "r"), "--workers", "2",
                 "--precision", "bf16"])  # fmt: skip
    assert code != 0
    assert "--precision are not available with --cluster or --workers" in capsys.readouterr().err


@pytest.mark.slow  # two spawned processes importing torch: ~30 s on an idle 2-core machine
def test_two_processes_train_and_the_first_writes_the_model(data, tmp_path, capfd):
    out = tmp_path / "m"
    assert train(data, out, "--iterations", "2", "--gpus", "2", "--batch-size", "1") == 0
    bundle = load_model(out)
    assert bundle.metadata["iterations"] == 2
    assert bundle.metadata["training"]["augmentation"] == "auto"  # batched, as with several processes
    assert capfd.readouterr().out.count("trained 2 iterations") == 1  # by the first process only
