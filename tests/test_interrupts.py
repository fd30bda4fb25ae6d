"""Signals and kill -9: what is on disk after `train`, `predict`, a model save or an autosave is interrupted.

- SIGINT and SIGTERM stop `napari-unet train` at the next step, which is saved (exit codes 130 and 143); a second
  signal exits at once; `predict` stopped by SIGTERM leaves no output and no temporary file.
- kill -9 at random moments (tests/_kill_trials.py, 24 trials): every file left is either complete and valid
  (a model that loads and resumes, a TIFF equal to an uninterrupted run's) or a hidden temporary
  `.<name>.<pid>.*.tmp` that the next write removes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_unet.io import read_labels, remove_stale_temporaries, write_tiff
from napari_unet.modelfile import is_model_folder, load_model, recover_interrupted_save
from napari_unet.synthetic import make_cells

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
TRIALS = 24


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def write_data(folder: Path) -> Path:
    image, labels = make_cells((64, 64), seed=3)
    write_tiff(folder / "image.tif", image.astype(np.float32), "YX")
    write_tiff(folder / "labels.tif", labels.astype(np.uint16), "YX")
    write_tiff(folder / "stack.tif", np.stack([make_cells((96, 96), seed=s)[0] for s in range(3)]), "ZYX")
    return folder


def visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def hidden_are_temporary(folder: Path) -> None:
    for path in folder.rglob(".*"):
        inside_a_temporary = any(parent.name.endswith(".tmp") for parent in path.relative_to(folder).parents)
        assert path.name.endswith(".tmp") or inside_a_temporary, f"an unexpected hidden file: {path}"


# ------------------------------------------------------------------------------------------------- kill -9


@pytest.fixture(scope="module")
def kill_trials(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("kill")
    write_data(root / "data")
    done = subprocess.run(
        [sys.executable, str(TESTS / "_kill_trials.py"), str(root), "0", str(TRIALS)],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, json.loads(done.stdout.strip().splitlines()[-1])


def check_model(folder: Path) -> dict:
    """A model folder left by a killed writer: complete after recovery, loads, and its training state is whole."""
    import torch

    recover_interrupted_save(folder)
    if not folder.exists():
        return {}
    assert is_model_folder(folder), f"{folder} is incomplete: {sorted(p.name for p in folder.iterdir())}"
    bundle = load_model(folder)
    state = (
        torch.load(folder / "training_state.pt", weights_only=True) if (folder / "training_state.pt").exists() else None
    )
    return {"bundle": bundle, "state": state}


def check_trial(trial: dict, data: Path) -> None:
    folder = Path(trial["folder"])
    assert trial["killed"] or trial["exit_code"] == 0, trial
    hidden_are_temporary(folder)
    if trial["kind"] in ("train", "save"):
        assert [p.name for p in visible(folder)] in ([], ["model"])
        found = check_model(folder / "model")
        if found and trial["kind"] == "save":  # one save, not a mix of two: weights, metadata and state agree
            i = found["bundle"].metadata["iterations"]
            assert all(float(p.flatten()[0]) == i for p in found["bundle"].net.parameters())
            assert float(found["state"]["weights"][0]) == i and found["state"]["iteration"] == i
        if found and trial["kind"] == "train":
            assert found["state"]["iteration"] == found["bundle"].metadata["iterations"] >= 1
    elif trial["kind"] == "predict":
        out = folder / "out"
        if out.exists():
            for path in visible(out):  # complete: byte for byte what an uninterrupted run writes
                assert path.read_bytes() == (data / "reference" / path.name).read_bytes(), path
            hidden_are_temporary(out)
    else:  # autosave: the last annotations and the last checkpointed model are recoverable
        from napari_unet.plugin import _autosave

        root = folder / "root"
        image_path = folder / "not-a-folder" / "cells.tif"
        found = _autosave.find_annotations(image_path, root) if root.exists() else None
        if found is not None:
            labels = _autosave.load_annotations(found)
            truth = read_labels(data / "labels.tif").astype(np.int64)
            shift = int(labels.max()) - int(truth.max())
            np.testing.assert_array_equal(labels, np.where(truth > 0, truth + shift, 0))
        for model in (root / "models").iterdir() if (root / "models").exists() else []:
            if not model.name.startswith("."):
                check_model(model)


def test_kill_9_at_random_moments_leaves_only_complete_files_or_temporaries(kill_trials):
    root, trials = kill_trials
    assert len(trials) >= 20
    assert sum(t["killed"] for t in trials) >= 20  # the kills landed while the work was running
    for trial in trials:
        check_trial(trial, root / "data")


def test_the_kill_trials_hit_work_in_progress(kill_trials):
    """The trials are not vacuous: models had been saved, and predictions had written files (complete, or
    temporaries of the run that was killed)."""
    root, trials = kill_trials
    saved = [t for t in trials if t["kind"] in ("train", "save") and (Path(t["folder"]) / "model").exists()]
    predicted = [
        t
        for t in trials
        if t["kind"] == "predict"
        and (Path(t["folder"]) / "out").exists()
        and list((Path(t["folder"]) / "out").iterdir())
    ]
    assert saved and predicted


def test_the_next_write_removes_temporaries_of_killed_writers(kill_trials):
    root, trials = kill_trials
    left = [p for t in trials for p in Path(t["folder"]).rglob(".*.tmp")]
    for path in left:
        target = path.parent / re.fullmatch(r"\.(.+)\.\d+\.[a-z0-9_]+\.tmp", path.name).group(1)
        recover_interrupted_save(target)  # what save_model does first: a killed save's old model goes back
        remove_stale_temporaries(target)
    assert not [p for t in trials for p in Path(t["folder"]).rglob(".*.tmp")]


# ------------------------------------------------------------------------------------------------ signals


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "napari_unet", *args],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Stderr:
    """The stderr of a process, read in a thread (tqdm's \\r updates included)."""

    def __init__(self, process: subprocess.Popen):
        self.chunks: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        while chunk := process.stderr.read(1):
            self.chunks.append(chunk)

    def text(self) -> str:
        return "".join(self.chunks)

    def wait_for(self, pattern: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            assert time.monotonic() < deadline and self.thread.is_alive(), self.text()[-2000:]
            time.sleep(0.02)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("signals")
    for i in range(2):
        image, labels = make_cells((64, 64), seed=i)
        write_tiff(folder / "images" / f"{i}.tif", image.astype(np.float32), "YX")
        write_tiff(folder / "labels" / f"{i}.tif", labels.astype(np.uint16), "YX")
    write_tiff(folder / "stack.tif", np.stack([make_cells((64, 64), seed=s)[0] for s in range(4)]), "ZYX")
    return folder


TRAIN = ["--iterations", "100000", "--depth", "2", "--base-channels", "4", "--tile-size", "44", "--device", "cpu"]


def test_sigterm_from_outside_stops_training_at_the_next_step_and_saves_it(data, tmp_path):
    process = start(
        ["train", str(data / "images"), str(data / "labels"), "--out", str(tmp_path / "m"), *TRAIN], tmp_path
    )
    Stderr(process).wait_for(r"\| *[1-9]\d*/100000")  # a few steps done
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 143
    bundle = load_model(tmp_path / "m")
    assert 1 <= bundle.metadata["iterations"] < 100000
    assert (tmp_path / "m" / "training_state.pt").is_file()  # resumable
    assert not list(tmp_path.glob(".*"))


def signal_at(calls: int, signum: int):
    """A wrapper that sends `signum` to this process at its `calls`-th call, then calls the wrapped function."""
    count = []

    def wrap(function):
        def wrapped(*args, **kwargs):
            count.append(1)
            if len(count) == calls:
                os.kill(os.getpid(), signum)
            return function(*args, **kwargs)

        return wrapped

    return wrap


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_in_a_step_stops_training_after_that_step(data, tmp_path, monkeypatch, capsys, signum, code):
    from napari_unet.cli import main
    from napari_unet.training import Trainer

    monkeypatch.setattr(Trainer, "_step", signal_at(3, signum)(Trainer._step))
    assert (
        main(["train", str(data / "images"), str(data / "labels"), "--out", str(tmp_path / "m"), *TRAIN, "-q"]) == code
    )
    assert load_model(tmp_path / "m").metadata["iterations"] == 3  # the step the signal came in is saved
    assert "stopped at iteration 3" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*"))


def test_a_signal_before_the_first_step_stops_at_once(data, tmp_path, monkeypatch, capsys):
    """Before its first step a run has nothing to save: a signal while it prepares or takes that step (minutes on
    huge images) stops it at once, instead of waiting for the step to end."""
    from napari_unet.cli import main
    from napari_unet.training import Trainer

    steps = []
    monkeypatch.setattr(Trainer, "_step", signal_at(1, signal.SIGTERM)(lambda self: steps.append(1)))
    argv = ["train", str(data / "images"), str(data / "labels"), "--out", str(tmp_path / "m"), *TRAIN, "-q"]
    assert main(argv) == 143
    assert steps == [] and not (tmp_path / "m").exists()  # interrupted before the step ran, nothing saved
    assert "stopped before the first step; nothing was saved" in capsys.readouterr().err


def test_a_signal_in_the_last_step_lets_the_run_finish_its_post_processing_fit(data, tmp_path, monkeypatch, capsys):
    """Stopped after its last step, a run would be saved without the end-of-run fit of its post-processing, and
    --resume would find it complete and fit nothing: the run finishes instead (a signal during the fit waits too)."""
    from napari_unet.cli import main
    from napari_unet.training import Trainer

    monkeypatch.setattr(Trainer, "_step", signal_at(3, signal.SIGINT)(Trainer._step))
    argv = ["train", str(data / "images"), str(data / "labels"), "--out", str(tmp_path / "m"), *TRAIN, "-q"]
    assert main([*argv, "--iterations", "3"]) == 0
    metadata = load_model(tmp_path / "m").metadata
    assert metadata["iterations"] == 3 and metadata["growth_calibration"]["iteration"] == 3
    assert "trained 3 iterations" in capsys.readouterr().out


def test_a_signal_while_reading_the_data_keeps_an_overwritten_model(data, tmp_path, monkeypatch, capsys):
    from napari_unet import pipeline
    from napari_unet.cli import main
    from napari_unet.model import UNet
    from napari_unet.modelfile import ModelBundle, save_model

    save_model(tmp_path / "m", ModelBundle(UNet(depth=2, base_channels=4), metadata={"iterations": 7}))
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    monkeypatch.setattr(pipeline, "read_training_pair", signal_at(2, signal.SIGTERM)(pipeline.read_training_pair))
    assert (
        main(
            [
                "train",
                str(data / "images"),
                str(data / "labels"),
                "--out",
                str(tmp_path / "m"),
                "--overwrite",
                *TRAIN,
                "-q",
            ]
        )
        == 143
    )
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before


def test_sigterm_during_predict_leaves_no_output_and_no_temporary(data, tmp_path, monkeypatch, capsys):
    from napari_unet import modelfile
    from napari_unet.cli import main
    from napari_unet.model import UNet
    from napari_unet.modelfile import ModelBundle, save_model

    save_model(tmp_path / "model", ModelBundle(UNet(depth=2, base_channels=4, dropout=0.0)))
    monkeypatch.setattr(modelfile, "probs_to_labels", signal_at(3, signal.SIGTERM)(modelfile.probs_to_labels))
    assert (
        main(
            [
                "predict",
                str(tmp_path / "model"),
                str(data / "stack.tif"),
                "--out",
                str(tmp_path / "out"),
                "--probabilities",
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 143
    )
    assert list((tmp_path / "out").iterdir()) == []  # no labels, no probabilities, no temporary


def test_a_second_signal_exits_at_once_and_the_disk_stays_valid(data, tmp_path):
    process = start(
        ["train", str(data / "images"), str(data / "labels"), "--out", str(tmp_path / "m"), *TRAIN], tmp_path
    )
    stderr = Stderr(process)
    stderr.wait_for(r"\| *[1-9]\d*/100000")
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGTERM)  # another signal: both are delivered, the second one ends it at once
    assert process.wait(60) == 143
    stderr.thread.join(10)
    assert "second signal (SIGTERM): exiting at once" in stderr.text()
    recover_interrupted_save(tmp_path / "m")
    if (tmp_path / "m").exists():
        assert load_model(tmp_path / "m").metadata["iterations"] >= 1
    hidden_are_temporary(tmp_path)


def training_processes(parent: int) -> list[int]:
    """The processes `train --gpus` started (multiprocessing's spawned children of `parent`)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the processes from /proc (Linux)")
def test_sigterm_to_a_run_on_two_processes_stops_both_and_holds_out_until_they_end(data, tmp_path):
    """SIGTERM sent to the command alone (not to the processes it started, as `kill PID` does) is passed on: both
    stop after the same step, the first saves it and says so once, and the command ends after them, holding the
    lock on --out until then. The process count is recorded, and the command to continue gives it."""
    process = start(
        ["train", str(data / "images"), str(data / "labels"), "--out", str(tmp_path / "m"), *TRAIN, "--gpus", "2"],
        tmp_path,
    )
    children: list[int] = []
    try:
        stderr = Stderr(process)
        stderr.wait_for(r"\| *[1-9]\d*/100000")
        children = training_processes(process.pid)
        assert len(children) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 143
        assert not [pid for pid in children if running(pid)]  # they had ended: --out was no longer written
    finally:
        for pid in [process.pid, *children]:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    stderr.thread.join(10)
    said = stderr.text()
    bundle = load_model(tmp_path / "m")
    assert bundle.metadata["iterations"] >= 1 and bundle.metadata["processes"] == 2
    assert said.count("stopped at iteration") == 1 and f"stopped at iteration {bundle.metadata['iterations']};" in said
    assert "--gpus 2" in said.split("stopped at iteration")[1]  # in the command to continue it
    assert not list(tmp_path.glob(".*"))  # the lock file removed, no temporary left
