"""`napari-unet demo`: train on synthetic cells, segment a held-out image and write a small report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ._args import EXIT_OK, add_command, add_device, add_quiet, positive_int
from ._training import describe_tuning, settings, summary, train_with_progress, tune_on_validation
from .progress import describe, duration, note

DEMO_IMAGES = 4  # synthetic training images (one of them held out for validation), plus one test image
DEMO_SHAPE = (256, 256)
DEMO_ITERATIONS = 600


def add_parser(subparsers) -> None:
    sub = add_command(
        subparsers,
        "demo",
        "Train on synthetic cells, segment a held-out image and write a small report.",
        "Writes into DIR: the synthetic data (data/), the trained model (model/), the prediction "
        "(predictions/), overlay.png (image with predicted outlines in magenta, true ones in green), "
        "report.json and report.md (instance and pixel scores).",
        "  napari-unet demo --out demo\n  napari-unet demo --out demo --iterations 600 --seed 1",
        run,
    )
    sub.add_argument("--out", type=Path, default=Path("napari-unet-demo"), metavar="DIR", help="report folder")
    sub.add_argument("--iterations", type=positive_int, default=DEMO_ITERATIONS, metavar="N", help="training steps")
    sub.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of the training")
    sub.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier demo in DIR (its model stays until the new one is saved)",
    )
    add_device(sub)
    add_quiet(sub)


def run(args: argparse.Namespace) -> int:
    from ..io import atomic_write, normalize_percentile, read_image, write_tiff
    from ..metrics import instance_scores, pixel_scores
    from ..model import UNet
    from ..modelfile import is_model_folder
    from ..pipeline import Outputs, segment_file
    from ..synthetic import make_dataset
    from ..training import Sample, Trainer, preset
    from ..validation import check_writable_folder

    out = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    model_dir = out / "model"
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(
            f"--out {out} is not empty (an earlier demo?): replace its files with --overwrite, or choose a new folder"
        )
    if model_dir.exists() and not is_model_folder(model_dir):
        raise ValueError(f"{model_dir} exists and is not a model folder; choose another --out")
    check_writable_folder(out)
    data = make_dataset(DEMO_IMAGES + 1, DEMO_SHAPE, seed=args.seed)
    (test_image, test_truth), training = data[-1], data[:-1]
    # the validation image in folders of its own, so that report.md's `train` command validates on it too
    for i, (image, labels) in enumerate(training):
        folder = out / "data" / ("val" if i == len(training) - 1 else "train")
        write_tiff(_mkparent(folder / "images" / f"{i:02d}.tif"), image, "YX")
        write_tiff(_mkparent(folder / "labels" / f"{i:02d}.tif"), labels.astype(np.uint16), "YX")
    for kind in ("images", "labels"):  # a demo before December 2026 wrote the validation image with the others
        (out / "data" / "train" / kind / f"{len(training) - 1:02d}.tif").unlink(missing_ok=True)
    write_tiff(_mkparent(out / "data" / "test" / "images" / "test.tif"), test_image, "YX")
    write_tiff(_mkparent(out / "data" / "test" / "labels" / "test.tif"), test_truth.astype(np.uint16), "YX")

    samples = [Sample(normalize_percentile(image), labels) for image, labels in training]
    net_config, config = preset("fast", iterations=args.iterations, seed=args.seed)
    import torch

    torch.manual_seed(config.seed)  # the new network's initial weights follow --seed too
    trainer = Trainer(UNet(net_config), config, samples[:-1], samples[-1:], args.device, model_dir)
    note(
        f"demo: training the fast preset for {args.iterations} iterations on {len(samples) - 1} synthetic "
        f"{DEMO_SHAPE[0]}x{DEMO_SHAPE[1]} images ({describe(trainer.device)})",
        args.quiet,
    )
    result = train_with_progress(trainer, args.quiet)
    if result["stopped"]:
        print(f"stopped at iteration {result['iteration']}; no report written", file=sys.stderr)
        return result["exit_code"]

    tuned = tune_on_validation(trainer)
    bundle = trainer.bundle()
    outputs = Outputs(out / "predictions" / "test_labels.tif", out / "predictions" / "test_probs.tif")
    for _ in segment_file(bundle, test_image, "YX", outputs, device=trainer.device):
        pass
    predicted = np.asarray(read_image(outputs.labels)[0])
    scores = {**instance_scores(predicted, test_truth), **pixel_scores(predicted, test_truth)}
    _save_overlay(out / "overlay.png", test_image, predicted, test_truth)
    report = {
        "scores": scores,
        "training": {
            "preset": "fast",
            "iterations": result["iteration"],
            "seconds": round(result["elapsed"], 1),
            "device": result["device"],
            "seed": args.seed,
            "final_loss": result["loss"],
            "validation_iou": result["val_score"],
            "training_images": len(samples) - 1,
            "validation_images": 1,
            "image_shape": list(DEMO_SHAPE),
        },
        "postprocess": {
            **tuned["config"].to_dict(),
            "validation_ap50": tuned["scores"]["ap50"],
            "validation_ap50_default": tuned["before"]["ap50"],
        },
        "test_image": {"cells": int(test_truth.max()), "shape": list(test_image.shape)},
        "files": {
            "model": "model",
            "overlay": "overlay.png",
            "labels": "predictions/test_labels.tif",
            "probabilities": "predictions/test_probs.tif",
            "data": "data",
        },
    }
    with atomic_write(out / "report.json") as staging:
        staging.write_text(json.dumps(report, indent=2, default=float) + "\n")
    with atomic_write(out / "report.md") as staging:
        staging.write_text(_markdown(report, out, args))
    print(summary(result, model_dir))
    print(describe_tuning(tuned))
    print(
        f"held-out image: AP50 {scores['ap50']:.3f}, mAP {scores['map']:.3f}, SEG {scores['seg']:.3f}, "
        f"IoU {scores['iou']:.3f} ({scores['n_pred']} cells found, {scores['n_true']} true)"
    )
    print(f"report: {out / 'report.md'} (overlay: {out / 'overlay.png'})")
    return EXIT_OK


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save_overlay(path: Path, image, predicted, truth, scale: int = 2) -> None:
    """An RGB PNG of `image` with true outlines in green, predicted ones in magenta (white where they agree)."""
    from PIL import Image
    from skimage.segmentation import find_boundaries

    lo, hi = np.percentile(image, (1, 99.8))
    grey = (np.clip((image - lo) / (hi - lo + 1e-6), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    true_edges = find_boundaries(truth, mode="inner")
    pred_edges = find_boundaries(predicted, mode="inner")
    rgb[true_edges & ~pred_edges] = (0, 220, 0)
    rgb[pred_edges & ~true_edges] = (255, 0, 255)
    rgb[pred_edges & true_edges] = (255, 255, 255)
    picture = Image.fromarray(rgb)
    if scale > 1:
        picture = picture.resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    from ..io import atomic_write

    with atomic_write(path) as staging:
        picture.save(staging, format="PNG")


def _markdown(report: dict[str, Any], out: Path, args: argparse.Namespace) -> str:
    from ..postprocess import PostprocessConfig

    s, t, p = report["scores"], report["training"], report["postprocess"]
    chosen = PostprocessConfig.from_dict({k: v for k, v in p.items() if not k.startswith("validation_")})
    val = f"{t['validation_iou']:.3f}" if t["validation_iou"] is not None else "n/a"
    return f"""# napari-unet demo

Synthetic fluorescence nuclei (many touching), {t["training_images"]} training images and 1 validation image of
{t["image_shape"][0]}x{t["image_shape"][1]} pixels; scored on a held-out image with {report["test_image"]["cells"]} cells.

Training: preset `fast`, {t["iterations"]} iterations in {duration(t["seconds"])} on {t["device"]}, seed {t["seed"]};
final loss {t["final_loss"]:.4f}, validation foreground IoU {val}.

Post-processing, chosen on the validation image (`napari-unet train --tune-postprocess`):
{settings(chosen)}
(validation AP50 {p["validation_ap50"]:.3f}; {p["validation_ap50_default"]:.3f} with the default settings).

| score on the held-out image | value |
|---|---|
| AP at IoU 0.5 | {s["ap50"]:.3f} |
| mean AP, IoU 0.5:0.95 | {s["map"]:.3f} |
| F1 at IoU 0.5 | {s["f1_50"]:.3f} |
| SEG | {s["seg"]:.3f} |
| foreground IoU | {s["iou"]:.3f} |
| pixel error | {s["pixel_error"]:.4f} |
| cells found / true | {s["n_pred"]} / {s["n_true"]} |

![overlay](overlay.png)

`overlay.png`: the held-out image with the true outlines in green and the predicted ones in magenta (white where
they coincide).

The same with the command line, on the files this demo wrote:

```bash
napari-unet train {out}/data/train/images {out}/data/train/labels --out {out}/model --overwrite \\
    --validation-images {out}/data/val/images --validation-labels {out}/data/val/labels \\
    --iterations {args.iterations} --seed {args.seed} --tune-postprocess
napari-unet predict {out}/model {out}/data/test/images --out {out}/predictions --probabilities --overwrite
napari-unet evaluate {out}/predictions {out}/data/test/labels --kind instances
```
"""
