"""The `napari-unet` command line, run in-process through `main([...])` on small synthetic files.

A tiny network (depth 2, 4 channels) and 3 training iterations keep every training call around a second.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_unet.cli import main
from napari_unet.io import read_image, read_labels, write_tiff
from napari_unet.metrics import average_scores, evaluate_pair
from napari_unet.modelfile import load_model
from napari_unet.postprocess import probs_to_labels
from napari_unet.synthetic import make_cells
from napari_unet.weights import weight_map

TINY = ["--depth", "2", "--base-channels", "4", "--tile-size", "44", "--device", "cpu", "-q"]
COMMANDS = ("train", "predict", "weights", "evaluate", "demo", "info", "models")


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """images/0{0,1,2}.png (8-bit) with labels/0{0,1,2}.tif (uint16 instance ids), and test/{images,labels}."""
    root = tmp_path_factory.mktemp("data")
    for i in range(3):
        image, labels = make_cells((72, 80), seed=i)
        write_png(root / "images" / f"0{i}.png", image)
        (root / "labels").mkdir(exist_ok=True)
        write_tiff(root / "labels" / f"0{i}.tif", labels.astype(np.uint16), "YX")
    image, labels = make_cells((64, 64), seed=10)
    write_png(root / "test" / "images" / "cells.png", image)
    (root / "test" / "labels").mkdir()
    write_tiff(root / "test" / "labels" / "cells.tif", labels.astype(np.uint16), "YX")
    return root


@pytest.fixture(scope="module")
def model(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "cells.model"
    code = main(
        [
            "train",
            str(data / "images"),
            str(data / "labels"),
            "--out",
            str(out),
            "--iterations",
            "3",
            "--val-fraction",
            "0.34",
            *TINY,
        ]
    )
    assert code == 0
    return out


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def moved_from(init: Path, out: Path) -> float:
    """The most any weight of the model saved at `out` differs from the one at `init`: the few steps of Adam
    (1e-3) these tests train move each weight by about 1e-3; a freshly initialised network's are ~1 away."""
    before, after = load_model(init).net.state_dict(), load_model(out).net.state_dict()
    assert before.keys() == after.keys()
    return max((after[name] - before[name]).abs().max().item() for name in before)


def test_train_writes_a_model_and_a_summary(data, tmp_path, capsys):
    out = tmp_path / "m"
    code, stdout, _ = run(
        capsys,
        "train",
        data / "images",
        data / "labels",
        "--out",
        out,
        "--iterations",
        "3",
        "--val-fraction",
        "0.34",
        "--seed",
        "1",
        "--tune-postprocess",
        *TINY,
    )
    assert code == 0
    assert "post-processing tuned on 1 validation image(s)" in stdout
    assert (out / "training_state.pt").is_file()  # still resumable after saving the tuned settings
    bundle = load_model(out)
    assert bundle.metadata["iterations"] == 3 and bundle.metadata["seed"] == 1
    assert (bundle.net.config.depth, bundle.net.config.base_channels) == (2, 4)
    assert len(bundle.metadata["data_hashes"]) == 2  # one of the three images held out for validation
    assert "trained 3 iterations" in stdout and "validation IoU" in stdout and str(out) in stdout
    assert bundle.metadata["growth_calibration"]["images"] == 2  # fitted on the training images at the end:
    assert "post-processing fitted on 2 training image(s): threshold" in stdout  # said so


def test_predict_then_evaluate_agree_with_the_library(data, model, tmp_path, capsys):
    out = tmp_path / "results"
    code, stdout, _ = run(
        capsys,
        "predict",
        model,
        data / "images",
        data / "test" / "images" / "cells.png",
        "--out",
        out,
        "--probabilities",
        "--device",
        "cpu",
        "-q",
    )
    assert code == 0 and "segmented 4 image(s)" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}_{kind}.tif" for name in ("00", "01", "02", "cells") for kind in ("labels", "probs")
    )
    bundle = load_model(model)
    image = read_image(data / "test" / "images" / "cells.png")[0]
    probs = bundle.predict(image, device="cpu")[1]
    np.testing.assert_allclose(read_image(out / "cells_probs.tif")[0], probs, atol=1e-6)
    np.testing.assert_array_equal(read_image(out / "cells_labels.tif")[0], probs_to_labels(probs, bundle.postprocess))

    code, stdout, _ = run(capsys, "evaluate", out, data / "labels", "--json")
    assert code == 0
    scores = json.loads(stdout)
    assert {"ap50", "map", "f1_50", "seg", "n_images", "images"} <= set(scores) and scores["kind"] == "instances"
    expected = [
        evaluate_pair(read_labels(out / f"0{i}_labels.tif"), read_labels(data / "labels" / f"0{i}.tif"), "instances")
        for i in range(3)
    ]
    assert scores["images"]["00_labels.tif"] == pytest.approx(expected[0])
    for key, value in average_scores(expected).items():
        assert scores[key] == pytest.approx(value)

    code, stdout, _ = run(capsys, "evaluate", out, data / "labels", "--kind", "pixels")
    assert code == 0
    assert "00_labels.tif" in stdout and "mean (3)" in stdout and "iou" in stdout and "ap50" not in stdout


def test_predict_overrides_the_saved_post_processing(data, model, tmp_path, capsys):
    out = tmp_path / "results"
    image_path = data / "test" / "images" / "cells.png"
    code, _, _ = run(
        capsys,
        "predict",
        model,
        image_path,
        "--out",
        out,
        "--threshold",
        "0.3",
        "--min-size",
        "0",
        "--seed-threshold",
        "0.9",
        "--device",
        "cpu",
        "-q",
    )
    assert code == 0
    bundle = load_model(model)
    probs = bundle.predict(read_image(image_path)[0], device="cpu")[1]
    from dataclasses import replace

    expected = probs_to_labels(probs, replace(bundle.postprocess, threshold=0.3, min_size=0, seed_threshold=0.9))
    assert expected.max() != probs_to_labels(probs, replace(bundle.postprocess, threshold=0.3, min_size=0)).max()
    np.testing.assert_array_equal(read_labels(out / "cells_labels.tif"), expected)


def test_predict_segments_stacks_plane_by_plane_with_tta(data, model, tmp_path, capsys):
    stack = np.stack([make_cells((48, 56), seed=s)[0] for s in (20, 21)])
    write_tiff(tmp_path / "movie.tif", stack, "TYX")
    code, _, _ = run(
        capsys,
        "predict",
        model,
        tmp_path / "movie.tif",
        "--out",
        tmp_path / "out",
        "--tta",
        "--probabilities",
        "--device",
        "cpu",
        "-q",
    )
    assert code == 0
    labels, axes = read_image(tmp_path / "out" / "movie_labels.tif")
    probs = read_image(tmp_path / "out" / "movie_probs.tif")[0]
    assert axes == "TYX" and labels.shape == stack.shape and probs.shape == stack.shape
    np.testing.assert_allclose(probs[1], load_model(model).predict(stack[1], device="cpu", tta=True)[1], atol=1e-6)


def test_resume_continues_the_iterations(data, tmp_path, capsys):
    out = tmp_path / "m"
    split = ["--val-fraction", "0.34"]
    code, _, _ = run(
        capsys,
        "train",
        data / "images",
        data / "labels",
        "--out",
        out,
        "--iterations",
        "2",
        "--seed",
        "1",
        *split,
        *TINY,
    )
    assert code == 0
    hashes = load_model(out).metadata["data_hashes"]
    code, stdout, stderr = run(
        capsys,
        "train",
        data / "images",
        data / "labels",
        "--out",
        out,
        "--resume",
        "--iterations",
        "4",
        *split,
        "--device",
        "cpu",
    )
    assert code == 0 and "trained 4 iterations" in stdout
    assert "differ" not in stderr  # the saved seed (1) gives the same split by image (seed 0 would not)
    assert load_model(out).metadata["iterations"] == 4 and load_model(out).metadata["data_hashes"] == hashes
    code, _, stderr = run(capsys, "train", data / "images", data / "labels", "--out", out, "--resume", "--seed", "5")
    assert code == 2 and "--seed" in stderr and "cannot change" in stderr


def test_ctrl_c_saves_the_last_step_and_resume_continues(data, tmp_path, capsys, monkeypatch):
    from napari_unet.cli.progress import Progress

    original = Progress.update

    def interrupt_after_two_steps(self, n=1, **postfix):
        original(self, n, **postfix)
        if self.description == "training" and self.done >= 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "update", interrupt_after_two_steps)
    out = tmp_path / "m"
    code, _, stderr = run(capsys, "train", data / "images", data / "labels", "--out", out, "--iterations", "5", *TINY)
    assert code == 130 and "stopped at iteration 2" in stderr
    assert f"continue with: napari-unet train {data / 'images'} {data / 'labels'} --out {out} --resume" in stderr
    assert load_model(out).metadata["iterations"] == 2
    monkeypatch.setattr(Progress, "update", original)
    code, stdout, _ = run(capsys, "train", data / "images", data / "labels", "--out", out, "--resume", "-q")
    assert code == 0 and "trained 5 iterations" in stdout


def test_init_fine_tunes_a_saved_model(data, model, tmp_path, capsys):
    out = tmp_path / "tuned"
    code, _, _ = run(
        capsys,
        "train",
        data / "images",
        data / "labels",
        "--out",
        out,
        "--init",
        model,
        "--iterations",
        "2",
        "--tile-size",
        "44",
        "--device",
        "cpu",
        "-q",
    )
    assert code == 0
    before, after = load_model(model), load_model(out)
    assert after.net.config == before.net.config and after.metadata["iterations"] == 2
    assert 0 < moved_from(model, out) < 1e-2  # trained on from the saved weights


def test_validation_files_and_masks(data, tmp_path, capsys):
    test = data / "test"
    code, stdout, _ = run(
        capsys,
        "train",
        data / "images",
        data / "labels",
        "--out",
        tmp_path / "m",
        "--validation-images",
        test / "images",
        "--validation-labels",
        test / "labels",
        "--iterations",
        "2",
        *TINY,
    )
    assert code == 0 and "validation IoU" in stdout
    empty = tmp_path / "masks"
    empty.mkdir()
    for i in range(3):
        write_tiff(empty / f"0{i}.tif", np.zeros((72, 80), np.uint8), "YX")
    code, _, stderr = run(
        capsys,
        "train",
        data / "images",
        data / "labels",
        "--out",
        tmp_path / "m2",
        "--mask",
        empty,
        "--iterations",
        "2",
        *TINY,
    )
    assert code == 2 and "annotations are empty" in stderr  # the masks reached the trainer


def test_masks_pair_with_the_validation_images_too(data, tmp_path, capsys):
    """--mask pairs with every image, those --val-fraction holds out and --validation-images included; the note
    about masks that match no image names only those that match neither."""
    from napari_unet.cli import build_parser
    from napari_unet.cli._train_data import training_data

    masks = tmp_path / "masks"
    for name, shape in [("00", (72, 80)), ("01", (72, 80)), ("02", (72, 80)), ("cells", (64, 64)), ("stray", (8, 8))]:
        mask = np.zeros(shape, np.uint8)
        mask[: shape[0] // 2] = 1  # the top half annotated
        write_tiff(masks / f"{name}.tif", mask, "YX")

    def read(*options):
        args = build_parser().parse_args(
            ["train", str(data / "images"), str(data / "labels"), "--out", str(tmp_path / "m"), "--mask", str(masks)]
            + [str(option) for option in options]
        )
        args.channel_choice, args.seed = None, 0
        train, validation = training_data(args)
        return train, validation, capsys.readouterr().err

    train, validation, err = read("--val-fraction", "0.34")
    assert len(train) == 2 and len(validation) == 1
    assert all(sample.mask is not None and sample.mask.sum() == 36 * 80 for sample in train + validation)
    assert "2 mask(s) match no image (skipped): cells.tif, stray.tif" in err and "have no mask" not in err

    test = data / "test"
    train, validation, err = read("--validation-images", test / "images", "--validation-labels", test / "labels")
    assert len(train) == 3 and [sample.mask.sum() for sample in validation] == [32 * 64]
    assert "1 mask(s) match no image (skipped): stray.tif" in err and "have no mask" not in err


def test_a_split_that_holds_out_every_image_with_objects_says_so(data, tmp_path, capsys):
    """Not "the labels hold no object" when they do, in the image --val-fraction held out."""
    labels = tmp_path / "labels"
    shutil.copytree(data / "labels", labels)
    for name in ("00", "02"):
        write_tiff(labels / f"{name}.tif", np.zeros((72, 80), np.uint16), "YX")
    argv = ["train", data / "images", labels, "--out", tmp_path / "m", "--iterations", "1", *TINY]
    code, _, err = run(capsys, *argv, "--val-fraction", "0.34", "--seed", "5")  # seed 5 holds out 01
    assert code == 2 and "was held out for validation by --val-fraction 0.34 (with --seed 5)" in err
    assert f"the labels in {labels}" not in err
    code, _, err = run(capsys, *argv, "--val-fraction", "0.34", "--seed", "1")  # holds out 00: 01 trains
    assert code == 0


def corrupt(model: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "broken.model"
    shutil.copytree(model, broken)
    (broken / "weights.safetensors").write_bytes(b"not safetensors")
    return broken


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, m, t: ["train", t / "nowhere", d / "labels", "--out", t / "m"], "no image file or folder"),
        (lambda d, m, t: ["train", d / "images", d / "test" / "labels", "--out", t / "m"], "share a base name"),
        (
            lambda d, m, t: ["train", d / "images" / "00.png", d / "test" / "labels" / "cells.tif", "--out", t / "m"],
            "must be the same size",
        ),
        (lambda d, m, t: ["train", d / "images", d / "labels", "--out", d], "not a model folder"),
        (lambda d, m, t: ["train", d / "images", d / "labels", "--out", m], "--resume"),
        (lambda d, m, t: ["predict", corrupt(m, t), d / "images", "--out", t / "o"], "corrupted"),
        (lambda d, m, t: ["predict", t, d / "images", "--out", t / "o"], "not a napari-unet model folder"),
        (lambda d, m, t: ["predict", m, d / "images", "--out", t / "o", "--device", "tpu"], "device must be"),
        (lambda d, m, t: ["evaluate", d / "images" / "00.png", d / "test" / "labels" / "cells.tif"], "has shape"),
        (lambda d, m, t: ["weights", d / "images", "--out", t / "w.tif"], "is a folder"),
        (lambda d, m, t: ["info", t / "nothing"], "not a napari-unet model folder"),
    ],
)
def test_bad_input_is_one_clear_line(data, model, tmp_path, capsys, make_args, message):
    code, stdout, stderr = run(capsys, *make_args(data, model, tmp_path))
    assert code == 2
    assert stderr.startswith("napari-unet: error:") and message in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_a_model_with_other_channels_is_refused(data, model, tmp_path, capsys):
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(rgb)
    code, _, stderr = run(capsys, "predict", model, rgb, "--out", tmp_path / "o", "-q")
    assert code == 2 and "channel" in stderr


def test_usage_errors_exit_2(capsys):
    assert main(["train", "images"]) == 2
    assert "required" in capsys.readouterr().err
    assert main(["predict", "m", "x", "--out", "o", "--threshold", "1.5"]) == 2


def test_traceback_flag_shows_the_error(tmp_path):
    with pytest.raises(ValueError, match="not a napari-unet model folder"):
        main(["--traceback", "info", str(tmp_path)])


def test_weights_writes_the_weight_map(data, tmp_path, capsys):
    labels = read_labels(data / "labels" / "01.tif")
    out = tmp_path / "w" / "weights.tif"
    code, stdout, _ = run(
        capsys, "weights", data / "labels" / "01.tif", "--out", out, "--w0", "8", "--sigma", "3", "--border", "2"
    )
    assert code == 0 and str(out) in stdout
    written, axes = read_image(out)
    assert axes == "YX" and written.dtype == np.float32
    np.testing.assert_array_equal(written, weight_map(labels, 8.0, 3.0, border=2))
    assert run(capsys, "weights", data / "labels" / "01.tif", "--out", out, "--no-balance")[0] == 2  # exists
    np.testing.assert_array_equal(read_image(out)[0], weight_map(labels, 8.0, 3.0, border=2))
    assert run(capsys, "weights", data / "labels" / "01.tif", "--out", out, "--no-balance", "--overwrite")[0] == 0
    from napari_unet.training import PRESETS

    defaults = PRESETS["paper"][1]  # without options: the paper's loss (the fast preset has no border term)
    np.testing.assert_array_equal(
        read_image(out)[0], weight_map(labels, defaults.w0, defaults.sigma, class_weights=None, border=defaults.border)
    )


def test_weights_of_a_binary_mask_are_what_training_uses_and_keep_the_pixel_size(tmp_path, capsys):
    """A binary mask (ISBI's membranes) trains without border term and class balancing whatever the preset: the
    map says so (all 1), with a note, unless --w0 asks for the term; the map keeps the labels' pixel size."""
    from napari_unet.metadata import PixelSize, read_pixel_size

    mask = np.full((64, 64), 255, np.uint8)
    mask[::16] = mask[:, ::16] = 0  # membranes around 16 cells
    source = tmp_path / "membranes.tif"
    write_tiff(source, mask, "YX", pixel_size=PixelSize(0.5, 0.5, "um"))
    out = tmp_path / "weights.tif"
    code, _, stderr = run(capsys, "weights", source, "--out", out)
    assert code == 0 and "binary mask" in stderr and "--w0" in stderr
    np.testing.assert_array_equal(read_image(out)[0], np.ones(mask.shape, np.float32))
    assert read_pixel_size(out) == PixelSize(0.5, 0.5, "um")
    code, _, stderr = run(capsys, "weights", source, "--out", out, "--overwrite", "--w0", "10", "--no-balance")
    assert code == 0 and "binary mask" not in stderr
    np.testing.assert_array_equal(read_image(out)[0], weight_map(mask, 10.0, 5.0, class_weights=None, border=1))
    assert read_image(out)[0].max() > 1.5  # the border term is there


def test_quiet_hides_the_notes_of_weights_evaluate_and_export(model, tmp_path, capsys, monkeypatch):
    """-q hides the notes of every command that prints them (docs/cli.md): weights and evaluate had no -q, export's
    notes always showed; a local folder shadowing a built-in model is named as typed, not as a PosixPath."""
    mask = np.full((64, 64), 255, np.uint8)
    mask[::16] = mask[:, ::16] = 0  # a binary mask: a note from weights and from evaluate
    write_tiff(tmp_path / "mask.tif", mask, "YX")
    weights = ["weights", tmp_path / "mask.tif", "--out", tmp_path / "w.tif", "--overwrite"]
    evaluate = ["evaluate", tmp_path / "mask.tif", tmp_path / "mask.tif"]
    shutil.copytree(model, tmp_path / "nuclei")
    monkeypatch.chdir(tmp_path)  # ./nuclei shadows the built-in model
    export = ["export", "nuclei", "--format", "torchscript", "--out", tmp_path / "n.pt", "--overwrite"]
    for command, said in ((weights, "binary mask"), (evaluate, "binary mask"), (export, "using the model folder")):
        code, _, err = run(capsys, *command)
        assert code == 0 and said in err
        assert "PosixPath" not in err
        code, _, err = run(capsys, *command, "-q")
        assert code == 0 and err == ""
    assert "not the built-in model 'nuclei'" in run(capsys, *export)[2]


def test_evaluate_isbi_probability_maps(tmp_path, capsys):
    rng = np.random.default_rng(5)
    (tmp_path / "pred").mkdir()
    expected = []
    for i in range(2):
        _, cells = make_cells((48, 48), seed=30 + i)
        truth = np.where(cells > 0, 255, 0).astype(np.uint8)
        probs = np.clip((cells > 0) * 0.8 + rng.normal(0, 0.2, cells.shape), 0, 1).astype(np.float32)
        write_tiff(tmp_path / "pred" / f"{i}_probs.tif", probs, "YX")
        write_png(tmp_path / "truth" / f"{i}.png", truth / 255.0)
        expected.append(evaluate_pair(probs, truth, "isbi"))
    code, stdout, _ = run(capsys, "evaluate", tmp_path / "pred", tmp_path / "truth", "--kind", "isbi", "--json")
    assert code == 0
    scores = json.loads(stdout)
    assert {"vrand", "vinfo", "iou", "pixel_error"} <= set(scores)
    mean = average_scores(expected)
    for key in ("vrand", "vinfo", "iou", "pixel_error"):
        assert scores[key] == pytest.approx(mean[key])


def test_evaluate_isbi_notes_a_truth_whose_objects_touch(tmp_path, capsys):
    """Instance labels of touching cells as ISBI truth scored V_rand ~0.6 against themselves with no word: the
    ISBI scores merge touching objects (membranes part cells there), and a note now says so; a membrane mask does
    not get it."""
    labels = np.zeros((48, 48), np.int32)
    labels[4:20, 4:20], labels[4:20, 20:36], labels[30:44, 10:30] = 1, 2, 3  # 1 and 2 touch
    write_tiff(tmp_path / "a_labels.tif", labels, "YX")
    (tmp_path / "truth").mkdir()
    write_tiff(tmp_path / "truth" / "a.tif", labels, "YX")
    code, _, err = run(capsys, "evaluate", tmp_path / "a_labels.tif", tmp_path / "truth" / "a.tif", "--kind", "isbi")
    assert code == 0 and "a.tif holds objects that touch" in err and "--kind instances" in err
    membranes = np.where(labels > 0, 255, 0).astype(np.uint8)
    membranes[:, 20] = 0  # a membrane between 1 and 2
    write_tiff(tmp_path / "truth" / "a.tif", membranes, "YX")
    code, _, err = run(capsys, "evaluate", tmp_path / "a_labels.tif", tmp_path / "truth" / "a.tif", "--kind", "isbi")
    assert code == 0 and "touch" not in err


def test_info_shows_the_model(model, capsys):
    code, stdout, _ = run(capsys, "info", model)
    assert code == 0
    assert "depth=2" in stdout and "iterations=3" in stdout
    assert "resumable: yes (at iteration 3; complete: give --iterations above 3 to train on)" in stdout  # as --resume
    code, stdout, _ = run(capsys, "info", model, "--json")
    assert code == 0 and json.loads(stdout)["unet"]["base_channels"] == 4


def test_info_says_when_the_time_budget_ended_a_run_before_its_iterations(capsys):
    """The built-in model: 1,000,000 iterations read as steps done; the budget ended the run at 10,632."""
    code, stdout, _ = run(capsys, "info", "builtin:nuclei")
    done = load_model("builtin:nuclei").metadata["iterations"]
    assert code == 0 and f"(a cap: the time budget ended the run at {done})" in stdout


def test_info_says_why_a_model_is_not_resumable(model, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    (copy / "training_state.pt").write_bytes(b"not a torch file")
    code, stdout, _ = run(capsys, "info", copy)
    assert code == 0 and "resumable: no (training_state.pt cannot be read" in stdout
    config = json.loads((copy / "config.json").read_text())
    config["metadata"]["training"] = "edited by hand"
    (copy / "config.json").write_text(json.dumps(config))
    code, stdout, _ = run(capsys, "info", copy)  # shown as it is, never a traceback
    assert code == 0 and "  training: edited by hand" in stdout
    assert "resumable: no (the metadata holds no valid training configuration)" in stdout
    config["metadata"]["training"] = {"augment": ["not", "a", "mapping"], "iterations": 3}
    (copy / "config.json").write_text(json.dumps(config))
    code, stdout, _ = run(capsys, "info", copy)
    assert code == 0 and "augmentation: [not, a, mapping]" in stdout


def test_demo_writes_a_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, _ = run(capsys, "demo", "--out", out, "--iterations", "2", "--device", "cpu", "-q")
    assert code == 0 and str(out / "report.md") in stdout
    report = json.loads((out / "report.json").read_text())
    assert {"ap50", "map", "f1_50", "seg", "iou", "pixel_error"} <= set(report["scores"])
    assert report["training"]["iterations"] == 2
    assert "| AP at IoU 0.5 |" in (out / "report.md").read_text()
    with Image.open(out / "overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.size == (512, 512)
    assert load_model(out / "model").metadata["iterations"] == 2


def test_the_demos_train_command_validates_on_the_demos_validation_image(tmp_path, capsys):
    """The review's case: report.md's `train` line split the demo's images with --val-fraction, which held out
    another image than the demo validated on, so "the same with the command line" was another run."""
    out = tmp_path / "demo"
    assert run(capsys, "demo", "--out", out, "--iterations", "2", "--device", "cpu", "-q")[0] == 0
    line = next(text for text in (out / "report.md").read_text().splitlines() if text.startswith("napari-unet train"))
    assert sorted(p.name for p in (out / "data" / "train" / "images").iterdir()) == ["00.tif", "01.tif", "02.tif"]
    assert [p.name for p in (out / "data" / "val" / "labels").iterdir()] == ["03.tif"]
    report = (out / "report.md").read_text()
    assert f"--validation-images {out}/data/val/images --validation-labels {out}/data/val/labels" in report
    assert "--val-fraction" not in line
    train = report[report.index("\nnapari-unet train") + 1 :].split("\nnapari-unet predict")[0].replace("\\\n", " ")
    code, stdout, _ = run(capsys, *train.split()[1:], "--device", "cpu", "-q")
    trained = json.loads((out / "report.json").read_text())["training"]  # the same run: its loss and validation
    assert code == 0 and f"loss {trained['final_loss']:.4f}, validation IoU {trained['validation_iou']:.4f}" in stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert f"usage: napari-unet {command}" in capsys.readouterr().out


def test_the_installed_entry_point_runs():
    script = shutil.which("napari-unet", path=str(Path(sys.executable).parent)) or shutil.which("napari-unet")
    if script is None:
        pytest.skip("the napari-unet script is not installed (pip install -e .)")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert all(command in result.stdout for command in COMMANDS)


def test_python_dash_m_runs_the_command_line():
    source = Path(__file__).resolve().parents[1] / "src"
    env = {**__import__("os").environ, "PYTHONPATH": str(source)}
    result = subprocess.run(
        [sys.executable, "-m", "napari_unet", "--help"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert all(command in result.stdout for command in COMMANDS)
    result = subprocess.run(
        [sys.executable, "-m", "napari_unet", "nonsense"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 2 and "invalid choice" in result.stderr


@pytest.fixture
def builtin_nuclei(tmp_path, monkeypatch):
    """A tiny stand-in for the built-in `nuclei` model (object diameter 20 px) in a temporary package folder."""
    from napari_unet import builtin
    from napari_unet.model import UNet
    from napari_unet.modelfile import ModelBundle, save_model

    torch.manual_seed(0)
    folder = tmp_path / "builtin_models"
    save_model(
        folder / "nuclei",
        ModelBundle(
            UNet(depth=2, base_channels=4, dropout=0.0),
            object_diameter=20.0,
            metadata={
                "description": "tiny stand-in",
                "citations": ["Cited 2019"],
                "training_data": {"set-a": ["1.png"]},
            },
        ),
    )
    monkeypatch.setattr(builtin, "BUILTIN_DIR", folder)
    return folder / "nuclei"


def test_models_lists_the_builtins(builtin_nuclei, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "nuclei: tiny stand-in" in out and "object diameter: 20 px" in out and "Cited 2019" in out
    assert "set-a (1 images)" in out
    assert main(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["object_diameter"] == 20.0


def test_predict_by_name_with_a_diameter_rescales_and_keeps_the_image_size(data, builtin_nuclei, tmp_path, capsys):
    out = tmp_path / "out"
    image = data / "test" / "images" / "cells.png"
    assert main(["predict", "nuclei", str(image), "--out", str(out), "--diameter", "10", "--device", "cpu"]) == 0
    assert "objects ~10.0 px, given; rescaled x2" in capsys.readouterr().err
    labels = read_labels(out / "cells_labels.tif")
    bundle = load_model(builtin_nuclei)
    expected = bundle.segment(read_image(image)[0], diameter=10.0, device="cpu")
    np.testing.assert_array_equal(labels, expected)
    assert main(["predict", "nuclei", str(image), "--out", str(out), "--device", "cpu", "--overwrite"]) == 0
    assert "estimated" in capsys.readouterr().err
    blank = tmp_path / "blank.tif"
    cells = read_image(image)[0]
    write_tiff(blank, np.stack([np.zeros_like(cells), cells]), "ZYX")  # the size is estimated on the first plane
    assert main(["predict", "nuclei", str(blank), "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err  # estimated on the first plane that is not black (the first one was)
    assert "estimated" in err and "no objects found" not in err
    stack = read_image(out / "blank_labels.tif")[0]
    assert stack[0].max() == 0 and np.array_equal(stack[1], read_labels(out / "cells_labels.tif"))
    from napari_unet.cli.predict import object_size

    assert object_size(None, "auto", 20.0) == " (no objects found to estimate their size from; not rescaled)"
    assert object_size(10.0, "auto", 20.0) == " (objects ~10.0 px, estimated; rescaled x2)"
    assert main(["predict", "nuclei", str(image), "--out", str(out), "--diameter", "0"]) == 2
    assert "'auto' or a diameter in pixels > 0" in capsys.readouterr().err


def test_a_local_model_folder_named_like_a_builtin_wins_with_a_note(
    data, model, builtin_nuclei, tmp_path, capsys, monkeypatch
):
    shutil.copytree(model, tmp_path / "nuclei")
    monkeypatch.chdir(tmp_path)
    image = data / "test" / "images" / "cells.png"
    assert main(["predict", "nuclei", str(image), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert "using the model folder ./nuclei, not the built-in" in capsys.readouterr().err
    assert main(["info", "builtin:nuclei"]) == 0
    assert "object diameter: 20 px" in capsys.readouterr().out
    assert main(["info", "nuclei"]) == 0  # info and export name the folder they read as predict does
    assert "using the model folder ./nuclei, not the built-in" in capsys.readouterr().err


def test_train_init_by_name_rescales_the_images_to_the_models_object_size(data, builtin_nuclei, tmp_path, capsys):
    out = tmp_path / "tuned"
    assert (
        main(
            [
                "train",
                str(data / "images"),
                str(data / "labels"),
                "--out",
                str(out),
                "--init",
                "nuclei",
                "--iterations",
                "2",
                "--tile-size",
                "44",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "so their cells are 20 px across" in capsys.readouterr().err
    assert load_model(out).object_diameter == 20.0
    assert 0 < moved_from(builtin_nuclei, out) < 1e-2  # trained on from the built-in's weights


@pytest.fixture(scope="module")
def membranes(tmp_path_factory) -> Path:
    """images/0{0,1}.png with labels/0{0,1}.png: binary 0/255 masks (255 = cell interior), as ISBI 2012's."""
    root = tmp_path_factory.mktemp("membranes")
    for i in range(2):
        image, cells = make_cells((72, 80), seed=40 + i)
        write_png(root / "images" / f"0{i}.png", image)
        write_png(root / "labels" / f"0{i}.png", (cells > 0).astype(float))
    return root


def test_train_on_one_folder_holding_images_and_labels_side_by_side(data, tmp_path, capsys):
    """Cellpose's layout (x.png beside x_cp_masks.png) and the napari plugin's autosaved annotations
    (x.png.unet-labels.tif beside x.png): the same folder given as IMAGES and LABELS was refused as 'its own
    labels'; the files are told apart by their names now, and predict's probability maps there are left out."""
    folder = tmp_path / "both"
    folder.mkdir()
    names = ["00_cp_masks.tif", "01.png.unet-labels.tif", "02_labels.tif"]
    for i, name in enumerate(names):
        shutil.copy(data / "images" / f"0{i}.png", folder / f"0{i}.png")
        shutil.copy(data / "labels" / f"0{i}.tif", folder / name)
    write_tiff(folder / "02_probs.tif", np.zeros((72, 80), np.float32), "YX")
    shutil.copy(data / "labels" / "00.tif", folder / "01.unet-labels.tif")  # saved by an older version: set aside
    out = tmp_path / "m"
    quiet = [a for a in TINY if a != "-q"]
    code, stdout, stderr = run(capsys, "train", folder, folder, "--out", out, "--iterations", "2", *quiet)
    assert code == 0, stderr
    assert len(load_model(out).metadata["data_hashes"]) == 3
    assert "left out 2 file(s)" in stdout + stderr and "02_probs.tif, 01.unet-labels.tif" in stdout + stderr
    assert "without labels" not in stdout + stderr
    assert "napari plugin's annotations" in stdout + stderr and "--around-cells" in stdout + stderr
    again = ["--out", tmp_path / "m3", "--iterations", "2", "--around-cells", "12", *quiet]
    code, stdout, stderr = run(capsys, "train", folder, folder, *again)
    assert code == 0, stderr
    assert "napari plugin's annotations" not in stdout + stderr

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(data / "images" / "00.png", alone / "00.png")
    shutil.copy(data / "images" / "01.png", alone / "01.png")
    code, _, stderr = run(capsys, "train", alone, alone, "--out", tmp_path / "m2", "--iterations", "2", *TINY)
    assert code == 2 and "no file in it is named as a label file" in stderr


def test_resume_trains_on_the_region_around_the_cells_the_run_was_started_with(data, tmp_path, capsys):
    """`--around-cells` is kept in the model: a --resume typed without it (as the run was started with it) trained
    on the whole images, teaching every unpainted cell as background; a different value is refused."""
    out = tmp_path / "m"
    start = ["train", data / "images", data / "labels", "--out", out]
    code, _, stderr = run(capsys, *start, "--iterations", "2", "--around-cells", "6", *TINY)
    assert code == 0, stderr
    assert load_model(out).metadata["around_cells"] == 6
    hashes = load_model(out).metadata["data_hashes"]
    code, _, stderr = run(capsys, *start, "--resume", "--iterations", "3", "--device", "cpu")
    assert code == 0, stderr
    assert "differ" not in stderr  # the same annotated region, so the same training data
    assert load_model(out).metadata["around_cells"] == 6 and load_model(out).metadata["data_hashes"] == hashes
    code, _, stderr = run(capsys, *start, "--resume", "--iterations", "4", "--around-cells", "9")
    assert code == 2 and "--around-cells 9 (saved run: 6)" in stderr

    whole = tmp_path / "whole"
    code, _, stderr = run(capsys, *start[:-1], whole, "--iterations", "2", *TINY)
    assert code == 0 and load_model(whole).metadata["around_cells"] is None
    code, _, stderr = run(capsys, *start[:-1], whole, "--resume", "--iterations", "3", "--around-cells", "9")
    assert code == 2 and "--around-cells 9 (saved run: not given)" in stderr


def test_resume_keeps_the_validation_split_and_never_trains_on_its_validation_images(data, tmp_path, capsys):
    """--val-fraction is kept in the model: a --resume typed without it trained on the validation images; one
    given otherwise is refused, and so are validation images that would now be trained on; --tune-postprocess on
    a finished run tunes it (it was ignored)."""
    out = tmp_path / "m"
    start = ["train", data / "images", data / "labels", "--out", out]
    code, _, stderr = run(capsys, *start, "--iterations", "2", "--val-fraction", "0.34", *TINY)
    assert code == 0, stderr
    saved = load_model(out).metadata
    assert saved["val_fraction"] == 0.34 and len(saved["validation_hashes"]) == 1 and len(saved["data_hashes"]) == 2
    code, _, stderr = run(capsys, *start, "--resume", "--iterations", "3", "--device", "cpu")
    assert code == 0 and "differ" not in stderr and "validating on 1" in stderr
    assert load_model(out).metadata["data_hashes"] == saved["data_hashes"]
    code, _, stderr = run(capsys, *start, "--resume", "--iterations", "4", "--val-fraction", "0.5")
    assert code == 2 and "--val-fraction 0.5 (saved run: 0.34)" in stderr
    both = ("--validation-images", data / "test" / "images", "--validation-labels", data / "test" / "labels")
    code, _, stderr = run(capsys, *start, "--resume", "--iterations", "4", *both)
    assert code == 2 and "1 of the training images were validation images of the saved run" in stderr
    assert "give --val-fraction 0.34 as it had" in stderr
    code, stdout, stderr = run(capsys, *start, "--resume", "--tune-postprocess", "--device", "cpu")
    assert code == 0 and "its weights are unchanged" in stdout and "post-processing tuned on 1" in stdout
    assert load_model(out).metadata["postprocess_tuning"]


def test_evaluate_and_predict_on_a_folder_of_images_beside_their_masks(data, model, tmp_path, capsys):
    """Cellpose's layout as ground truth: evaluate paired the predictions with the images (x.png, base name x) and
    refused them as RGB labels or scored grey values; predict segmented the masks as images. The masks are the
    truth now, and predict leaves them out with a note."""
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir(), pred.mkdir()
    for i in range(2):
        shutil.copy(data / "images" / f"0{i}.png", truth / f"0{i}.png")
        shutil.copy(data / "labels" / f"0{i}.tif", truth / f"0{i}_masks.tif")
        shutil.copy(data / "labels" / f"0{i}.tif", pred / f"0{i}_labels.tif")
    code, stdout, stderr = run(capsys, "evaluate", pred, truth)
    assert code == 0, stderr
    assert "mean (2)" in stdout and "1.0000" in stdout.splitlines()[-1]
    from napari_unet.pipeline import list_inputs

    inputs, left = list_inputs([truth])
    assert [p.name for p in inputs] == ["00.png", "01.png"] and [p.name for p in left] == [
        "00_masks.tif",
        "01_masks.tif",
    ]
    # predict's results written into that folder are no truth (they were preferred to the masks: perfect scores)
    write_tiff(truth / "00_labels.tif", np.zeros((72, 80), np.uint16), "YX")
    code, stdout, stderr = run(capsys, "evaluate", pred, truth)
    assert code == 0 and "1.0000" in stdout.splitlines()[-1], stderr

    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(data / "labels" / "00.tif", only / "00.tif.unet-labels.tif")
    args = ["predict", model, only / "00.tif.unet-labels.tif", "--out", tmp_path / "o"]
    code, _, stderr = run(capsys, *args)
    assert code == 2 and "no image to segment" in stderr and "napari plugin's annotations" in stderr


def test_around_cells_annotates_the_painted_cells_and_a_margin_of_background_only():
    """`train --around-cells PX`: a few painted cells teach background only within PX of them (the Fine-tune dock's
    rule), inside the sample's own mask when it has one; the unpainted cells farther away are not background."""
    from napari_unet.cli._train_data import around_cells
    from napari_unet.training import Sample

    labels = np.zeros((40, 60), np.uint16)
    labels[10:16, 10:16] = 1
    sample = around_cells(Sample(np.zeros((40, 60), np.float32), labels), 4)
    assert sample.mask[12, 12] and sample.mask[12, 19] and not sample.mask[12, 21] and not sample.mask[35, 50]
    own = np.ones((40, 60), bool)
    own[:, 13:] = False
    masked = around_cells(Sample(np.zeros((40, 60), np.float32), labels, own), 4)
    assert masked.mask[12, 12] and not masked.mask[12, 14]


def test_train_on_binary_masks_turns_off_class_balancing_and_the_border_term(membranes, tmp_path, capsys):
    out = tmp_path / "binary"
    loud = [arg for arg in TINY if arg != "-q"]
    code, _, err = run(
        capsys, "train", membranes / "images", membranes / "labels", "--out", out, "--iterations", 2, *loud
    )
    assert code == 0 and "the labels are binary masks" in err
    bundle = load_model(out)
    train = bundle.metadata["training"]
    assert (train["class_weights"], train["w0"]) == ("none", 0.0)
    assert bundle.postprocess.border_width == 0  # nothing was cut between cells: nothing to give back

    given = tmp_path / "given"
    args = ["--iterations", 2, "--w0", 5, "--class-weights", "balanced", *TINY]
    assert run(capsys, "train", membranes / "images", membranes / "labels", "--out", given, *args)[0] == 0
    train = load_model(given).metadata["training"]
    assert (train["class_weights"], train["w0"]) == ("balanced", 5.0)  # what the user asked for wins


def test_membrane_masks_train_a_model_whose_labels_fill_the_image(membrane_mask, tmp_path, capsys):
    """Masks whose cells tile the image (ISBI's membranes): train says the model floods its cells, predict writes
    cells parted by thin lines, and --no-flood gives back the plain threshold."""
    root = tmp_path / "tiled"
    for i in range(2):
        mask = membrane_mask((72, 80), 10, seed=i)
        image = np.where(mask, 0.8, 0.1) + np.random.default_rng(i).normal(0, 0.05, mask.shape)
        write_png(root / "images" / f"0{i}.png", np.clip(image, 0, 1))
        write_png(root / "labels" / f"0{i}.png", mask.astype(float))
    out = tmp_path / "tiled.model"
    loud = [arg for arg in TINY if arg != "-q"]
    tune = ["--val-fraction", "0.5", "--seed", "0", "--tune-postprocess"]
    code, stdout, err = run(
        capsys, "train", root / "images", root / "labels", "--out", out, "--iterations", 2, *tune, *loud
    )
    assert code == 0 and "the cells tile the image (membranes)" in err
    assert "flood seeds fitted on 1 training mask(s): above" in stdout
    assert "tuned on 1 validation image(s): flood seeds above" in stdout and "V_rand (thinned)" in stdout
    bundle = load_model(out)
    assert bundle.postprocess.flood and bundle.metadata["growth_calibration"]["by"] == "vrand"
    tuning = bundle.metadata["postprocess_tuning"]
    assert tuning["by"] == "vrand" and tuning["chosen"]["threshold"] == bundle.postprocess.threshold
    assert tuning["before_config"]["flood"] and set(tuning["before_config"]) == set(tuning["chosen"])
    predict = ["predict", out, root / "images" / "00.png", "--device", "cpu", "-q"]
    assert run(capsys, *predict, "--out", tmp_path / "probs", "--probabilities")[0] == 0
    # a network trained 2 steps is sure of nothing: seeds where it is surer than for 70 % of the pixels
    seeds = f"{np.percentile(read_image(tmp_path / 'probs' / '00_probs.tif')[0], 70):.4f}"
    for flag, folder in (([], "flood"), (["--no-flood"], "plain")):
        assert run(capsys, *predict, "--out", tmp_path / folder, "--threshold", seeds, *flag)[0] == 0
    flooded = read_labels(tmp_path / "flood" / "00_labels.tif")
    plain = read_labels(tmp_path / "plain" / "00_labels.tif")
    assert flooded.max() > 0 and np.mean(plain == 0) > 0.5 and np.mean(flooded == 0) < 0.25


def test_train_on_instance_labels_keeps_the_presets_settings_and_parts_cells_by_watershed(model):
    bundle = load_model(model)
    train = bundle.metadata["training"]
    assert (train["class_weights"], train["w0"], train["border"]) == ("none", 0.0, 0)
    assert bundle.postprocess.border_width == 0 and bundle.postprocess.watershed  # cells touch in the target


def test_init_fine_tunes_on_the_init_models_own_targets(data, model, tmp_path, capsys):
    """A model trained with the paper's border term and separated cells is fine-tuned with them (the preset's
    defaults would change what its output means); options given on the command line still win."""
    from dataclasses import replace

    from napari_unet.modelfile import save_model

    bundle = load_model(model)
    paper_like = tmp_path / "paper_like"
    training = {**bundle.metadata["training"], "w0": 10.0, "sigma": 5.0, "border": 1}
    postprocess = replace(bundle.postprocess, border_width=1, watershed=False)
    save_model(paper_like, replace(bundle, postprocess=postprocess, metadata={**bundle.metadata, "training": training}))
    common = ["--iterations", "1", "--tile-size", "44", "--device", "cpu", "-q"]
    out = tmp_path / "tuned"
    assert run(capsys, "train", data / "images", data / "labels", "--out", out, "--init", paper_like, *common)[0] == 0
    train = load_model(out).metadata["training"]
    assert (train["w0"], train["sigma"], train["border"]) == (10.0, 5.0, 1)
    assert 0 < moved_from(paper_like, out) < 1e-2  # trained on from the saved weights
    given = tmp_path / "given"
    args = ["--init", paper_like, "--border", "0", *common]
    assert run(capsys, "train", data / "images", data / "labels", "--out", given, *args)[0] == 0
    tuned = load_model(given)
    assert tuned.metadata["training"]["border"] == 0 and tuned.metadata["training"]["w0"] == 10.0
    assert 0 < moved_from(paper_like, given) < 1e-2


def test_a_time_budget_alone_trains_for_the_budget_not_the_presets_steps(data, tmp_path, capsys):
    from napari_unet.train_config import PRESETS, UNTIL_BUDGET

    out = tmp_path / "timed"
    code, stdout, _ = run(capsys, "train", data / "images", data / "labels", "--out", out, "--time-budget", 2, *TINY)
    assert code == 0
    bundle = load_model(out)
    assert bundle.metadata["training"]["iterations"] == UNTIL_BUDGET
    assert bundle.metadata["iterations"] > 0 and bundle.metadata["elapsed_seconds"] >= 2.0
    assert f"trained {bundle.metadata['iterations']} iterations" in stdout
    assert PRESETS["fast"][1].iterations == 600  # the preset's steps alone would have ended a 2-s run otherwise


def test_tuning_on_validation_predicts_the_images_as_training_saw_them(monkeypatch):
    """--tune-postprocess runs the network on the validation images as the trainer prepared them (here inverted:
    bright background), not as read, and scores against their labels."""
    from napari_unet.cli._training import tune_on_validation
    from napari_unet.model import UNet
    from napari_unet.modelfile import Normalization
    from napari_unet.training import Sample, Trainer, preset

    image, labels = make_cells((96, 96), seed=2)
    net_config, config = preset("fast", tile_size=92, iterations=1)
    trainer = Trainer(
        UNet(net_config, depth=2, base_channels=4),
        config,
        [Sample(image, labels)],
        [Sample(image, labels)],
        device="cpu",
        normalization=Normalization(invert=True),
    )
    seen = []

    def foreground(image):
        seen.append(np.array(image))
        probs = (labels > 0).astype(np.float32)
        return np.stack([1 - probs, probs])

    monkeypatch.setattr(trainer, "_predict", foreground)
    tuned = tune_on_validation(trainer)
    assert len(seen) == 1 and np.allclose(seen[0], trainer.validation[0].image)
    assert not np.allclose(np.squeeze(seen[0]), image)  # inverted, as in training
    assert tuned["images"] == 1 and tuned["by"] == "ap50"


def tiny_model(folder: Path) -> Path:
    """An untrained 1-channel network saved as a model folder (seconds to run, no training)."""
    from napari_unet.model import UNet, UNetConfig
    from napari_unet.modelfile import ModelBundle, save_model

    torch.manual_seed(0)
    return save_model(folder / "tiny.model", ModelBundle(UNet(UNetConfig(depth=2, base_channels=4))))


def test_predict_with_rois_refuses_a_time_series_of_stacks_before_any_work(tmp_path, capsys):
    """--rois writes one plane or one stack per file: a TZYX input is refused, naming it, before the first file
    is segmented (it used to fail after writing its labels, and the rest of the batch was never segmented)."""
    pytest.importorskip("roifile")
    stack = np.stack([np.stack([make_cells((40, 44), seed=t * 2 + z)[0] for z in range(2)]) for t in range(2)])
    write_tiff(tmp_path / "a_tzyx.tif", (stack * 1000).astype(np.uint16), "TZYX")
    write_tiff(tmp_path / "b_yx.tif", (make_cells((40, 44), seed=9)[0] * 1000).astype(np.uint16), "YX")
    model = tiny_model(tmp_path)
    out = tmp_path / "out"
    args = ["predict", str(model), str(tmp_path / "a_tzyx.tif"), str(tmp_path / "b_yx.tif"), "--out", str(out)]
    assert main([*args, "--rois", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "a_tzyx.tif" in err and "--rois" in err and "TZYX" in err
    assert not out.exists()  # refused before anything was written


def test_predict_names_an_input_with_a_corrupt_chunk_in_one_line(tmp_path, capsys):
    zarr = pytest.importorskip("zarr")
    image = (make_cells((100, 100), seed=5)[0] * 1000).astype(np.uint16)
    group = zarr.open_group(str(tmp_path / "bad.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=(100, 100), chunks=(50, 50), dtype=np.uint16)[:] = image
    (tmp_path / "bad.zarr" / "0" / "1.1").write_bytes(b"garbage")
    model = tiny_model(tmp_path)
    assert main(["predict", str(model), str(tmp_path / "bad.zarr"), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "bad.zarr: cannot be read" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_predict_and_rois_keep_the_pixel_size_z_step_and_frame_interval(tmp_path, capsys):
    """predict's outputs of a calibrated stack (ImageJ) and time series (OME-TIFF) keep the Z step and frame
    interval beside the pixel size (they were dropped); a --pixel-size in another unit gets the Z step in that
    unit; `rois --like IMAGE` gives its labels IMAGE's calibration (they had none)."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("roifile")
    from napari_unet.metadata import PixelSize, StackSpacing, read_pixel_size, read_spacing
    from napari_unet.roi import write_rois

    cells = [make_cells((40, 44), seed=20 + n) for n in range(3)]
    planes = (np.stack([image for image, _ in cells]) * 1000).astype(np.uint16)
    stack, movie = tmp_path / "stack.tif", tmp_path / "movie.ome.tif"
    imagej = {"axes": "ZYX", "spacing": 2.0, "unit": "um"}
    tifffile.imwrite(stack, planes, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata=imagej)
    ome = {"axes": "TYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "TimeIncrement": 5.0}
    tifffile.imwrite(movie, planes, ome=True, metadata=ome)
    model, out = tiny_model(tmp_path), tmp_path / "out"
    options = ["--out", out, "--probabilities", "--zarr", "--device", "cpu", "-q"]
    code, _, err = run(capsys, "predict", model, stack, movie, *options)
    assert code == 0, err
    expected = {
        "stack": (PixelSize(0.5, 0.5, "um"), StackSpacing(z=2.0)),
        "movie": (PixelSize(0.25, 0.25), StackSpacing(t=5.0)),
    }
    for name, (size, spacing) in expected.items():
        for kind in ("labels", "probs"):
            path = out / f"{name}_{kind}.tif"
            assert read_image(path)[1] == ("ZYX" if name == "stack" else "TYX")
            assert read_pixel_size(path) == size and read_spacing(path, size) == spacing, path.name
        zarr = out / f"{name}_labels.ome.zarr"  # --zarr's copy of the labels too
        assert read_pixel_size(zarr) == size and read_spacing(zarr, size) == spacing

    in_nm = ["--pixel-size", "500", "--unit", "nm", "--device", "cpu", "-q"]
    code, _, err = run(capsys, "predict", model, stack, "--out", tmp_path / "nm", *in_nm)
    assert code == 0, err
    assert read_spacing(tmp_path / "nm" / "stack_labels.tif", PixelSize(500, 500, "nm")) == StackSpacing(z=2000.0)

    labels = np.stack([ids for _, ids in cells]).astype(np.int32)
    write_rois(tmp_path / "RoiSet.zip", labels)
    code, _, err = run(capsys, "rois", tmp_path / "RoiSet.zip", "--like", stack, "--out", tmp_path / "back.tif")
    assert code == 0, err
    back, axes = read_image(tmp_path / "back.tif")
    assert axes == "ZYX" and back.shape == labels.shape
    assert read_pixel_size(tmp_path / "back.tif") == PixelSize(0.5, 0.5, "um")
    assert read_spacing(tmp_path / "back.tif", PixelSize(0.5, 0.5, "um")) == StackSpacing(z=2.0)


def test_evaluate_isbi_says_how_to_give_an_8_bit_probability_map(tmp_path, capsys):
    """An 8-bit probability map (0-255, an ISBI submission) as --kind isbi prediction was told to give labels."""
    rng = np.random.default_rng(3)
    _, cells = make_cells((48, 48), seed=31)
    probs = np.clip((cells > 0) * 200 + rng.normal(0, 30, cells.shape), 0, 255).astype(np.uint8)
    write_tiff(tmp_path / "a_probs.tif", probs, "YX")
    (tmp_path / "truth").mkdir()
    write_tiff(tmp_path / "truth" / "a.tif", np.where(cells > 0, 255, 0).astype(np.uint8), "YX")
    code, _, err = run(capsys, "evaluate", tmp_path / "a_probs.tif", tmp_path / "truth" / "a.tif", "--kind", "isbi")
    assert code == 2 and "save it as floats in [0, 1] (an 8-bit map divided by 255)" in err


def test_the_resume_command_keeps_the_runs_validation_data():
    """The command printed to continue a stopped run left out its validation images or fraction (and the seed
    that draws the fraction): pasted, it resumed without validation, the held-out images trained on."""
    import argparse

    from napari_unet.cli.train import _resume_command

    given = dict(images=Path("im"), labels=Path("lab"), mask=None, validation_images=None, validation_labels=None)
    split = argparse.Namespace(**given, val_fraction=0.25, seed=3)
    assert _resume_command(split, Path("m")) == (
        "napari-unet train im lab --val-fraction 0.25 --seed 3 --out m --resume"
    )
    held = argparse.Namespace(
        **(given | dict(validation_images=Path("v im"), validation_labels=Path("vl"))), val_fraction=None, seed=None
    )
    assert _resume_command(held, Path("m")) == (
        "napari-unet train im lab --validation-images 'v im' --validation-labels vl --out m --resume"
    )


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`napari-unet models | head -1`: stdout's reader closes the pipe; exit 141 (128 + SIGPIPE), no message."""
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_unet", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()  # before the command has imported anything, so its first line finds no reader
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141 and err == b""
