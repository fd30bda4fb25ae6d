"""Kill -9 trials, run by tests/test_interrupts.py as `python tests/_kill_trials.py ROOT SEED N`.

One process imports torch once, then for each trial forks a child that works in its own folder (trains with a
checkpoint at every step, predicts a stack again and again, saves a model again and again, or autosaves
annotations while training) and kills it with SIGKILL after a random delay. Nothing is checked here: the test
checks every folder afterwards, in another process. A child that finishes before its kill ends with exit code 0;
the trial's record says whether the kill landed.

ROOT holds `data/` (written by the test): `image.tif`, `labels.tif` and `stack.tif`. Trials go to ROOT/trials/.
Prints one JSON list of {"kind", "folder", "delay", "killed"}.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet.cli import main
from napari_unet.io import read_image, read_labels
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle, save_model
from napari_unet.plugin import _autosave
from napari_unet.training import Sample, TrainConfig, Trainer

KINDS = ("train", "predict", "save", "autosave")
TINY_CONFIG = TrainConfig(
    iterations=10**6, tile_size=44, checkpoint_every=1, validate_every=10**6, calibrate_growth=False
)


def tiny_net() -> UNet:
    torch.manual_seed(0)
    return UNet(depth=2, base_channels=4, dropout=0.0)


def sample(data: Path) -> Sample:
    from napari_unet.io import normalize_percentile

    return Sample(normalize_percentile(np.asarray(read_image(data / "image.tif")[0])), read_labels(data / "labels.tif"))


def train(data: Path, folder: Path) -> None:
    trainer = Trainer(tiny_net(), TINY_CONFIG, [sample(data)], device="cpu", checkpoint=folder / "model")
    for _ in trainer.run():
        pass


def predict(data: Path, folder: Path) -> None:
    while True:
        code = main(
            [
                "predict",
                str(data / "model"),
                str(data / "stack.tif"),
                "--out",
                str(folder / "out"),
                "--probabilities",
                "--overwrite",
                "--device",
                "cpu",
                "-q",
            ]
        )
        assert code == 0


def save(data: Path, folder: Path) -> None:
    net = tiny_net()
    for i in range(10**6):
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.fill_(float(i))  # every save is different, and says which it was
        save_model(
            folder / "model",
            ModelBundle(net, metadata={"iterations": i}),
            training_state={"iteration": i, "weights": torch.full((1000,), float(i))},
        )


def autosave(data: Path, folder: Path) -> None:
    """What the Fine-tune dock does on Train: autosave the annotations, then train with checkpoints."""
    labels = read_labels(data / "labels.tif")
    (folder / "not-a-folder").write_bytes(b"")
    image_path = folder / "not-a-folder" / "cells.tif"  # no side-car possible: annotations go to root + index
    for i in range(1, 4):
        _autosave.save_annotations(np.where(labels > 0, labels + i, 0), folder / "root", image_path, "cells")
    checkpoint = _autosave.model_folder(folder / "root", "cells")
    trainer = Trainer(tiny_net(), TINY_CONFIG, [sample(data)], device="cpu", checkpoint=checkpoint)
    for event in trainer.run():
        if event.kind == "checkpoint" and event.iteration % 3 == 0:
            _autosave.save_annotations(
                np.where(labels > 0, labels + event.iteration, 0), folder / "root", image_path, "cells"
            )


def trial(kind: str, data: Path, folder: Path, delay: float) -> dict:
    folder.mkdir(parents=True)
    pid = os.fork()
    if pid == 0:  # the child: work until killed
        code = 0
        try:
            torch.set_num_threads(1)
            globals()[kind](data, folder)
        except BaseException as error:  # noqa: BLE001  (reported through the exit code)
            print(f"{kind} trial failed: {error!r}", file=sys.stderr)
            code = 1
        os._exit(code)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {
        "kind": kind,
        "folder": str(folder),
        "delay": delay,
        "killed": killed,
        "exit_code": None if killed else os.WEXITSTATUS(status),
    }


def warm_up() -> None:
    """Import now what the children would import lazily (torch._dynamo, imported by the first optimizer, takes
    seconds), so that every child starts working at once and the kills land in the middle of the work."""
    import importlib

    for module in (
        "torch._dynamo",
        "torch.optim",
        "safetensors.torch",
        "tifffile",
        "scipy.ndimage",
        "skimage.segmentation",
        "skimage.morphology",
        "skimage.measure",
        "napari_unet.pipeline",
        "napari_unet.postprocess",
        "napari_unet.weights",
        "napari_unet.augment",
        "napari_unet.device",
        "napari_unet.cli.predict",
        "napari_unet.metrics",
    ):
        importlib.import_module(module)


def run(root: Path, seed: int, n: int) -> list[dict]:
    warm_up()
    rng = np.random.default_rng(seed)
    data = root / "data"
    torch.manual_seed(0)
    save_model(data / "model", ModelBundle(tiny_net()))
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the reference outputs of `predict`, from a run that is not killed (same process, 1 thread)
        torch.set_num_threads(1)
        os._exit(
            main(
                [
                    "predict",
                    str(data / "model"),
                    str(data / "stack.tif"),
                    "--out",
                    str(data / "reference"),
                    "--probabilities",
                    "--device",
                    "cpu",
                    "-q",
                ]
            )
        )
    assert os.waitpid(pid, 0)[1] == 0
    # the kills spread over ~2.5 predictions, however loaded the machine is (0.25 s on an idle one)
    longest = max(0.5, 2.5 * (time.perf_counter() - started))
    results = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        delay = float(rng.uniform(0.02, longest))
        results.append(trial(kind, data, root / "trials" / f"{i:02d}-{kind}", delay))
    return results


if __name__ == "__main__":
    root, seed, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(run(root, seed, n)))
