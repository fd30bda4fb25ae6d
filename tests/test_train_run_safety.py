"""`napari-unet train` run safety: one run at a time per model folder, a divergence keeps a state that resumes
(with a lower learning rate), --resume accepts the saved run's own options again, and resuming a finished run
changes nothing.

Tiny networks (depth 2, 4 channels) on 44-pixel tiles: each training call takes about a second.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_unet.cli import main
from napari_unet.io import write_tiff
from napari_unet.model import UNet
from napari_unet.modelfile import STATE_FILE, load_model
from napari_unet.synthetic import make_cells
from napari_unet.training import Sample, Trainer, TrainingDiverged, preset

TINY = ["--depth", "2", "--base-channels", "4", "--tile-size", "44", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """images/0{0,1}.png (8-bit) with labels/0{0,1}.tif (uint16 instance ids)."""
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for i in range(2):
        image, labels = make_cells((64, 72), seed=i)
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"0{i}.png")
        write_tiff(root / "labels" / f"0{i}.tif", labels.astype(np.uint16), "YX")
    return root


def train(capsys, data: Path, out: Path, *options) -> tuple[int, str, str]:
    code = main(["train", str(data / "images"), str(data / "labels"), "--out", str(out), *map(str, options)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def folder_bytes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------------------------------- one run per folder


def test_a_second_run_on_the_same_out_is_refused_and_a_killed_runs_lock_blocks_nothing(data, tmp_path, capsys):
    out = tmp_path / "cells.model"
    holder = subprocess.Popen(  # a first run, as far as the lock goes: it holds --out until killed
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from napari_unet.cli.train import output_lock
                with output_lock(Path({str(out)!r})):
                    print("locked", flush=True)
                    time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, stderr = train(capsys, data, out, "--iterations", "2", *TINY)
        assert code == 2 and len(stderr.strip().splitlines()) == 1
        assert stderr.startswith("napari-unet: error: --out") and str(out) in stderr
        assert f"another training run (process {holder.pid}) is writing this model folder" in stderr
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        holder.stdout.close()
    assert (tmp_path / ".cells.model.lock").exists()  # left by the killed run: it locks nothing
    code, stdout, _ = train(capsys, data, out, "--iterations", "2", *TINY)
    assert code == 0 and "trained 2 iterations" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.model"]  # the lock file goes with the run


def test_swapped_images_and_labels_are_refused_before_training(data, tmp_path, capsys):
    """`train LABELS IMAGES`: the 8-bit images read as labels trained on nonsense; they are refused now, naming
    the file and what labels are, and nothing is written."""
    out = tmp_path / "cells.model"
    code = main(["train", str(data / "labels"), str(data / "images"), "--out", str(out), "--iterations", "2", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "00.png does not look like instance labels" in err and "one id per object, 0 = background" in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ divergence


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [Sample(*make_cells((96, 96), seed=seed)) for seed in range(2)]


def tiny_trainer(samples, checkpoint: Path, **overrides) -> Trainer:
    net_config, config = preset("fast", tile_size=44, validate_every=1000, checkpoint_every=2)
    torch.manual_seed(0)
    return Trainer(
        UNet(net_config, depth=2, base_channels=4), replace(config, **overrides), samples, device="cpu",
        checkpoint=checkpoint,
    )  # fmt: skip


def nan_loss_at_step(monkeypatch, step: int) -> None:
    """The loss of step `step` (1-based) reads NaN, as after a step that sent the weights off."""
    original = Trainer._loss

    def loss(self, *args):
        value, reported = original(self, *args)
        return (value * math.nan, reported * math.nan) if self.iteration + 1 == step else (value, reported)

    monkeypatch.setattr(Trainer, "_loss", loss)


def saved_state(folder: Path) -> dict:
    return torch.load(folder / STATE_FILE, weights_only=True)


@pytest.mark.parametrize("nan_step", [4, 5])
def test_a_divergence_saves_the_whole_state_of_the_last_checkpoint_with_a_finite_loss_after_it(
    samples, tmp_path, monkeypatch, nan_step
):
    """Checkpoints every 2 steps. A NaN loss at step 4: the state of iteration 2 (whose weights gave step 3 a
    finite loss), all of it, not its weights with iteration 3's optimiser; at step 5: the weights of iteration
    4 gave the NaN, so iteration 2 again."""
    reference = tiny_trainer(samples, tmp_path / "reference", iterations=50)
    events = reference.run()
    for _ in range(2):
        next(events)
    events.close()  # stopped after step 2: saved there

    nan_loss_at_step(monkeypatch, nan_step)
    trainer = tiny_trainer(samples, tmp_path / "model", iterations=50)
    with pytest.raises(TrainingDiverged, match=r"the last good state \(iteration 2\) is saved") as error:
        list(trainer.run())

    got, expected = saved_state(tmp_path / "model"), saved_state(tmp_path / "reference")
    assert got["iteration"] == expected["iteration"] == 2 and got["scheduler"]["last_epoch"] == 2
    assert got["numpy_rng"] == expected["numpy_rng"] and torch.equal(got["torch_rng"], expected["torch_rng"])
    for key, state in expected["optimizer"]["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(got["optimizer"]["state"][key][name], value, rtol=0, atol=0)
    weights, reference_weights = load_model(tmp_path / "model").net.state_dict(), reference.model.state_dict()
    for name, value in reference_weights.items():
        assert torch.equal(weights[name], value), name
    assert got["loss"] == expected["loss"]  # what a resumed run reports before its first step
    assert trainer.iteration == 2 and error.value.kept == 2  # the trainer went back there too


def test_a_diverged_run_resumes_with_a_lower_learning_rate(samples, tmp_path, monkeypatch):
    nan_loss_at_step(monkeypatch, 5)
    with pytest.raises(TrainingDiverged):
        list(tiny_trainer(samples, tmp_path / "model", iterations=6).run())
    monkeypatch.undo()

    resumed = Trainer.resume(tmp_path / "model", samples, device="cpu", learning_rate=1e-4)
    factor = resumed.scheduler.lr_lambdas[0](2)  # the schedule at iteration 2 goes on, at the new rate
    assert resumed.scheduler.base_lrs == [1e-4]
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * factor)
    assert [event.kind for event in resumed.run()][-1] == "done"
    saved = load_model(tmp_path / "model").metadata
    assert saved["iterations"] == 6 and saved["training"]["learning_rate"] == 1e-4


def test_the_command_line_says_how_to_continue_a_diverged_run(data, tmp_path, capsys, monkeypatch):
    nan_loss_at_step(monkeypatch, 120)  # the fast preset saves every 100 steps
    out = tmp_path / "m"
    code, _, stderr = train(capsys, data, out, "--iterations", "150", *TINY)
    assert code == 1 and len(stderr.strip().splitlines()) == 1
    assert "the loss became nan at iteration 120; the last good state (iteration 100) is saved" in stderr
    assert f"--out {out} --resume --learning-rate 0.0001" in stderr
    assert saved_state(out)["iteration"] == 100

    nan_loss_at_step(monkeypatch, 130)  # diverging again before this run's first checkpoint
    code, _, stderr = train(capsys, data, out, "--resume", "--learning-rate", "1e-4", "--device", "cpu", "-q")
    assert code == 1
    assert f"{out} holds the last good state (iteration 100), the one this run resumed" in stderr
    assert "--resume --learning-rate 1e-05" in stderr
    monkeypatch.undo()

    code, stdout, stderr = train(capsys, data, out, "--resume", "--learning-rate", "1e-4", "--device", "cpu")
    assert code == 0 and "trained 150 iterations" in stdout
    assert "note: the learning rate changes from 0.001 to 0.0001" in stderr
    assert load_model(out).metadata["training"]["learning_rate"] == 1e-4


# -------------------------------------------------------------------------------------------------- --resume


def test_resume_accepts_the_saved_runs_own_options_and_names_those_that_differ(data, tmp_path, capsys):
    out = tmp_path / "m"
    same = ["--preset", "fast", "--seed", "1", "--batch-size", "1", "--w0", "0", "--class-weights", "none", *TINY]
    code, _, _ = train(capsys, data, out, "--iterations", "2", "--learning-rate", "0.002", *same)
    assert code == 0
    code, stdout, stderr = train(capsys, data, out, "--resume", "--iterations", "3", "--learning-rate", "0.002", *same)
    assert code == 0 and "trained 3 iterations" in stdout and stderr == ""

    code, _, stderr = train(capsys, data, out, "--resume", "--iterations", "4", "--tile-size", "64", "--seed", "5")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "--seed 5 (saved run: 1), --tile-size 64 (saved run: 44) cannot change" in stderr
    code, _, stderr = train(capsys, data, out, "--resume", "--preset", "paper", "--grey")
    assert code == 2 and "--preset paper (saved run: fast)" in stderr and "--channels/--grey all grey" in stderr
    assert load_model(out).metadata["iterations"] == 3


def test_resuming_a_finished_run_says_so_and_changes_nothing(data, tmp_path, capsys):
    out = tmp_path / "m"
    code, stdout, _ = train(capsys, data, out, "--iterations", "2", *TINY)
    assert code == 0
    loss = stdout.split("loss ")[1].split(",")[0]
    before, inode = folder_bytes(out), out.stat().st_ino

    code, stdout, stderr = train(capsys, data, out, "--resume", "--device", "cpu")
    assert code == 0 and "nan" not in stdout + stderr
    assert f"the run saved in {out} is already complete (2 iterations, loss {loss})" in stdout
    assert "give --iterations above 2" in stdout
    assert folder_bytes(out) == before and out.stat().st_ino == inode  # not even saved again

    budget = tmp_path / "budget"
    assert train(capsys, data, budget, "--time-budget", "0.2", *TINY)[0] == 0
    code, stdout, _ = train(capsys, data, budget, "--resume", "--device", "cpu", "-q")
    assert code == 0 and "already complete" in stdout and "time budget of 0.2 s is spent" in stdout
    assert sorted(os.listdir(tmp_path)) == ["budget", "m"]  # no lock file, no temporary left


def test_resume_keeps_what_the_saved_run_recorded(data, tmp_path, capsys, monkeypatch):
    """A resumed run stopped before its end keeps the post-processing the saved run fitted and tuned, and the
    records of that (`growth_calibration`, `postprocess_tuning`), and keys of the metadata it does not write."""
    import json

    out = tmp_path / "m"
    code, _, _ = train(capsys, data, out, "--iterations", "2", "--val-fraction", "0.5", "--tune-postprocess", *TINY)
    config = json.loads((out / "config.json").read_text())
    config["metadata"]["notes"] = "the lab's own record"
    (out / "config.json").write_text(json.dumps(config))
    saved = load_model(out).metadata
    assert code == 0 and {"growth_calibration", "postprocess_tuning"} <= set(saved)

    steps = []
    original = Trainer._step

    def stopped_in_the_second(self):
        steps.append(1)
        if len(steps) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(Trainer, "_step", stopped_in_the_second)
    assert train(capsys, data, out, "--resume", "--iterations", "6", *TINY)[0] == 143
    resumed = load_model(out)
    assert resumed.metadata["iterations"] == 4
    for key in ("growth_calibration", "postprocess_tuning", "notes", "preset", "val_fraction"):
        assert resumed.metadata[key] == saved[key], key
    assert resumed.postprocess.to_dict() == config["postprocess"]


def test_resume_with_another_number_of_processes_says_the_batch_changes(data, tmp_path, capsys):
    import json

    out = tmp_path / "m"
    assert train(capsys, data, out, "--iterations", "2", *TINY)[0] == 0
    assert load_model(out).metadata["processes"] == 1
    config = json.loads((out / "config.json").read_text())
    config["metadata"]["processes"] = 2  # as `--gpus 2` saves it
    (out / "config.json").write_text(json.dumps(config))
    code, _, stderr = train(capsys, data, out, "--resume", "--iterations", "3", *TINY[:-1])
    assert code == 0
    assert "the saved run trained with 2 process(es), this one with 1: a step now takes 1 x 1 windows" in stderr


def test_init_given_as_the_config_file_of_out_is_refused(data, tmp_path, capsys):
    out = tmp_path / "m"
    assert train(capsys, data, out, "--iterations", "1", *TINY)[0] == 0
    before = folder_bytes(out)
    code, _, stderr = train(
        capsys, data, out, "--init", out / "config.json", "--overwrite", "--iterations", "1", *TINY[4:]
    )
    assert code == 2 and f"the output {out} would replace the input" in stderr
    assert folder_bytes(out) == before


def test_out_as_a_link_to_a_model_folder_writes_that_folder(data, tmp_path, capsys):
    """--out a symbolic link to a model folder: the folder it points to is written (with the files kept in it),
    the link stays, and no temporary is left beside it."""
    real, link = tmp_path / "real" / "m", tmp_path / "m"
    assert train(capsys, data, real, "--iterations", "1", *TINY)[0] == 0
    (real / "notes.txt").write_text("kept")
    link.symlink_to(real, target_is_directory=True)
    assert train(capsys, data, link, "--overwrite", "--iterations", "2", *TINY)[0] == 0
    assert link.is_symlink() and load_model(real).metadata["iterations"] == 2
    assert (real / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "real"] and os.listdir(real.parent) == ["m"]


def test_replacing_a_folder_named_by_a_link_leaves_no_temporary(tmp_path):
    from napari_unet.io import replace_folder

    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target", target_is_directory=True)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "file").write_text("new")
    replace_folder(tmp_path / "new", tmp_path / "link")
    assert (tmp_path / "link" / "file").read_text() == "new" and (tmp_path / "target").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]
