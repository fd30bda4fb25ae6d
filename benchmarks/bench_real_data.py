"""Results on real data, ours side by side with a MONAI peer: same images, split, normalisation, budget, scores.

    .venv/bin/python benchmarks/bench_real_data.py --dataset isbi|dsb|both [--budget SECONDS] [--quick]
        [--preset fast|paper] [--device auto|cpu|cuda] [--threads N] [--data ../shared/data] [--out FOLDER]
        [--reuse-peer FOLDER] [--depth N] [--base-channels N] [--dropout P] [--tile-size PX]

Data from `../shared/data` (beside the repository; the script says so and exits when it is absent):
- ISBI 2012: train on slices 0-14, validate on 15-19; labels 0 = membrane, 255 = cell interior (foreground),
  used as they are (binary targets, PostprocessConfig(border_width=0)). Scores on the validation slices:
  V_rand and V_info, thinned (the challenge's ranking) and not thinned, best over thresholds 0.0..1.0 of the
  slice-averaged curves (`metrics.average_scores`; the mean of per-slice maxima is kept too), foreground IoU
  and pixel error at probability 0.5.
- DSB 2018 fluorescence: 100 images, ids sorted, a seeded permutation puts 80 in training and 20 in
  validation (whole images). Ours is post-processed as the trained model says (what `napari-unet predict`
  applies): the Trainer fits threshold, watershed, seeds and growth to 16 training images at the end of its run
  (the same network with the fit that has no seeds from the objects' cores is recorded as
  "scores_fit_without_cores"); the peer's threshold is tuned on 20 TRAINING images by mean AP50 (ties: mAP),
  never on validation (ours tuned that way too is recorded as "scores_bench_tuned"). Scores on the validation
  images: AP50, AP75, mAP (IoU 0.5:0.05:0.95), F1 at 0.5 and SEG, each the mean over images.
Every image is normalised alike for both pipelines: percentiles 1 and 99.8 of the whole image.

Ours: what `napari-unet train IMAGES LABELS --time-budget SECONDS` does with no other option: the `fast` preset
(or `--preset paper`) with the settings the kind of labels asks for (`train_config.settings_for_labels`: binary
masks train without class balancing or border term) for `--budget` seconds of training, the warm-up and cosine
decay spread over those seconds (`train_config.for_time_budget`); then `predict_tiled`, plus a row with
test-time augmentation (`ModelBundle.predict(..., tta=True)`, `tiling.predict_tta`; on ISBI also the labels
`predict --tta` writes, "scores_labels_tta"). The peer
(`peer_monai.py`): MONAI's BasicUNet with DiceCELoss, its elastic augmentation, Adam, random crops and
sliding-window inference, post-processed by threshold + connected components, for the same budget.
Both run one after the other in the same invocation. Writes `real_<dataset>.json` (`real_<dataset>_quick.json`
with --quick) into --out and prints a table, figure by figure, with the ratio ours / peer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_results  # benchmarks/ is on sys.path when run as a script

from napari_unet.device import select_device
from napari_unet.io import normalize_percentile, read_image, read_labels
from napari_unet.metrics import average_scores, instance_scores, isbi_scores, pixel_scores, rand_info_scores
from napari_unet.model import UNet
from napari_unet.postprocess import PostprocessConfig, best_config, fit_flood_seeds, probs_to_labels
from napari_unet.tiling import predict_tiled
from napari_unet.train_config import for_time_budget, settings_for_labels
from napari_unet.training import Sample, Trainer, TrainingDiverged, default_postprocess, preset

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
ISBI_TRAIN, ISBI_VAL = range(0, 15), range(15, 20)
DSB_TRAIN, DSB_VAL, DSB_TUNE = 80, 20, 20
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
WATERSHED_H = (1.0, 2.0, 3.0)
MIN_SIZE = 16
FLOOD_SEEDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98)  # seed thresholds of `best_flood_figures`


# ------------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Item:
    """One image of a dataset: its id, the raw image (H, W), the normalised image and the labels (H, W)."""

    name: str
    raw: np.ndarray
    image: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Split:
    """Training and validation images of one dataset (whole images, never crops of one image)."""

    dataset: str
    train: list[Item]
    validation: list[Item]


def read_item(image_path: Path, labels_path: Path) -> Item:
    """An image and its labels, read with `read_image` / `read_labels`; colour images become grey (their mean)."""
    raw, axes = read_image(image_path)
    raw = np.asarray(raw)
    if axes == "CYX":
        raw = raw.mean(axis=0)
    elif axes != "YX":
        raise ValueError(f"{image_path}: expected a 2-D image, got axes {axes!r}")
    labels = read_labels(labels_path)
    if labels.shape != raw.shape:
        raise ValueError(f"{labels_path}: labels {labels.shape} do not match the image {raw.shape}")
    image = np.asarray(normalize_percentile(raw, 1.0, 99.8, "YX"), dtype=np.float32)
    return Item(image_path.stem, raw, image, labels)


def load_isbi(root: Path) -> Split:
    """ISBI 2012: slices 0-14 train, 15-19 validation. Labels 0 = membrane, 255 = cell interior."""
    folder = root / "isbi2012" / "train"

    def items(indices: range) -> list[Item]:
        return [read_item(folder / "images" / f"{i:02d}.png", folder / "labels" / f"{i:02d}.png") for i in indices]

    return Split("isbi", items(ISBI_TRAIN), items(ISBI_VAL))


def split_ids(ids: list[str], n_train: int, n_validation: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded split by whole images: the sorted ids permuted, the first n_train for training, the next
    n_validation for validation; each part sorted."""
    ids = sorted(ids)
    if len(ids) < n_train + n_validation or len(set(ids)) != len(ids):
        raise ValueError(f"need {n_train + n_validation} distinct ids, got {len(set(ids))} of {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    train = sorted(ids[i] for i in order[:n_train])
    validation = sorted(ids[i] for i in order[n_train : n_train + n_validation])
    return train, validation


def load_dsb(root: Path, seed: int = 0) -> Split:
    """DSB 2018 fluorescence: 80 training and 20 validation images, split by image (`split_ids`)."""
    folder = root / "dsb2018-fluo" / "train"
    paths = {p.stem: p for p in sorted((folder / "images").glob("*.png"))}
    train, validation = split_ids(list(paths), DSB_TRAIN, DSB_VAL, seed)

    def items(ids: list[str]) -> list[Item]:
        return [read_item(paths[i], folder / "labels" / paths[i].name) for i in ids]

    return Split("dsb", items(train), items(validation))


def load(dataset: str, root: Path, seed: int = 0) -> Split:
    if dataset == "isbi":
        return load_isbi(root)
    if dataset == "dsb":
        return load_dsb(root, seed)
    raise ValueError(f"dataset must be 'isbi' or 'dsb', got {dataset!r}")


def foreground(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: cell interior (ISBI: 255) or any nucleus (DSB: id > 0)."""
    return labels != 0


# ---------------------------------------------------------------------------------------------- scores


def isbi_figures(probs: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, Any]:
    """ISBI scores over slices: thinned and plain V_rand / V_info (best threshold of the mean curves), the mean
    of per-slice maxima, and IoU / pixel error of probs > 0.5."""
    thinned = [isbi_scores(p, t, thinned=True) for p, t in zip(probs, truths)]
    plain = [isbi_scores(p, t, thinned=False) for p, t in zip(probs, truths)]
    pixels = average_scores([pixel_scores(p > 0.5, foreground(t)) for p, t in zip(probs, truths)])
    mean_thinned, mean_plain = average_scores(thinned), average_scores(plain)
    return {
        "vrand": mean_thinned["vrand"],
        "vinfo": mean_thinned["vinfo"],
        "vrand_threshold": mean_thinned["vrand_threshold"],
        "vinfo_threshold": mean_thinned["vinfo_threshold"],
        "vrand_per_slice_max": float(np.mean([s["vrand"] for s in thinned])),
        "vinfo_per_slice_max": float(np.mean([s["vinfo"] for s in thinned])),
        "vrand_not_thinned": mean_plain["vrand"],
        "vinfo_not_thinned": mean_plain["vinfo"],
        "iou": pixels["iou"],
        "pixel_error": pixels["pixel_error"],
    }


def isbi_label_figures(labels: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """ISBI scores of segmentations (label images, 0 = membrane), mean over slices: V_rand / V_info thinned
    ("vrand", "vinfo") and not thinned."""
    figures = {}
    for thinned, suffix in ((True, ""), (False, "_not_thinned")):
        scores = [rand_info_scores(lab, t, thinned=thinned) for lab, t in zip(labels, truths)]
        for key in ("vrand", "vinfo"):
            figures[key + suffix] = float(np.mean([s[key] for s in scores]))
    return figures


def best_flood_figures(probs: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, Any]:
    """The flood post-processing (`PostprocessConfig.flood`) with the seed threshold of FLOOD_SEEDS that gives
    the best thinned V_rand on these very images (chosen on the validation slices: an upper bound, for
    comparison only), its label figures, and the thinned V_rand at every seed ("vrand_by_seed")."""
    best: dict[str, Any] = {}
    curve = {}
    for threshold in FLOOD_SEEDS:
        config = PostprocessConfig(threshold=threshold, border_width=0, flood=True)
        figures = isbi_label_figures([probs_to_labels(p, config) for p in probs], truths)
        curve[str(threshold)] = figures["vrand"]
        if not best or figures["vrand"] > best["vrand"]:
            best = {"seed_threshold": threshold, **figures}
    return {**best, "vrand_by_seed": curve}


def instance_figures(probs: list[np.ndarray], truths: list[np.ndarray], config: PostprocessConfig) -> dict[str, Any]:
    """Mean over images of AP50, mAP, F1 at 0.5 and SEG after `probs_to_labels(probs, config)`."""
    per_image = [instance_scores(probs_to_labels(p, config), t) for p, t in zip(probs, truths)]
    mean = average_scores(per_image)
    return {key: mean[key] for key in ("ap50", "ap75", "map", "f1_50", "seg", "n_pred", "n_true")}


def postprocess_candidates(border_width: int, watershed: bool) -> list[PostprocessConfig]:
    """Threshold (and, if `watershed`, no watershed or h in WATERSHED_H) at min_size MIN_SIZE."""
    splits = [(False, 2.0)] + ([(True, h) for h in WATERSHED_H] if watershed else [])
    return [
        PostprocessConfig(threshold=t, min_size=MIN_SIZE, watershed=w, watershed_h=h, border_width=border_width)
        for t in THRESHOLDS
        for w, h in splits
    ]


def choose_postprocess(
    probs: list[np.ndarray], truths: list[np.ndarray], candidates: list[PostprocessConfig]
) -> tuple[PostprocessConfig, list[dict[str, Any]]]:
    """The candidate with the best mean AP50 (ties: mAP, then the earlier candidate) on these (training) images,
    and every candidate's mean scores (`postprocess.best_config`)."""
    best, _, table = best_config(candidates, probs, truths, rank=lambda mean: (round(mean["ap50"], 6), mean["map"]))
    return best, [{"config": c.to_dict(), **scores} for c, scores in zip(candidates, table)]


def tuned_instance_figures(
    result: dict[str, Any],
    tune: list[Item],
    predict,
    probs: list[np.ndarray],
    truths: list[np.ndarray],
    border_width: int,
    watershed: bool,
) -> PostprocessConfig:
    """Tune the post-processing on `tune` (training images; `predict` gives their probabilities) and score the
    validation `probs` with it, into `result`: "scores" with the best candidate of `postprocess_candidates(
    border_width, watershed)`, and, for comparison, the best with the other watershed choice ("scores_without_
    watershed" or "scores_with_watershed"). Returns the chosen post-processing."""
    started = time.perf_counter()
    tune_probs = predict([item.image for item in tune])
    tune_truths = [item.labels for item in tune]
    best, table = choose_postprocess(tune_probs, tune_truths, postprocess_candidates(border_width, watershed))
    other, _ = choose_postprocess(tune_probs, tune_truths, postprocess_candidates(border_width, not watershed))
    result["tune_seconds"] = time.perf_counter() - started
    result["postprocess"] = best.to_dict()
    result["tuning"] = table
    result["scores"] = instance_figures(probs, truths, best)
    other_key = "scores_without_watershed" if watershed else "scores_with_watershed"
    result[other_key] = {"postprocess": other.to_dict(), **instance_figures(probs, truths, other)}
    return best


# ------------------------------------------------------------------------------------------------ ours


def fit_without_cores(trainer: Trainer, probs: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, Any]:
    """The Trainer's end-of-run fit again, from the post-processing it started with, without the round of seeds
    from the objects' cores; its choice and scores on the validation images. The trainer is left as it was."""
    fitted, record = trainer.postprocess, trainer.growth_calibration
    trainer.postprocess = default_postprocess(trainer.config, binary=False)
    trainer.calibrate_growth(seed_thresholds=())
    config = trainer.postprocess
    trainer.postprocess, trainer.growth_calibration = fitted, record
    return {"postprocess": config.to_dict(), **instance_figures(probs, truths, config)}


def run_ours(
    split: Split,
    preset_name: str,
    budget: float,
    device: torch.device,
    seed: int,
    tune_count: int,
    tta: bool,
    net_overrides: dict[str, float] | None = None,
    train_overrides: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Train ours as `napari-unet train --time-budget` does (the preset, adapted to the kind of labels, for
    `budget` seconds; the post-processing fitted to the training images at the end), predict the validation
    images and score them (and, with `tta`, again). `net_overrides` / `train_overrides`: another network size
    or window than the preset's (`train --depth/--base-channels`), to measure what the preset should be."""
    net_config, config = preset(preset_name, seed=seed, validate_every=10**9, **(train_overrides or {}))
    net_config = replace(net_config, **(net_overrides or {}))
    samples = [Sample(item.image, item.labels) for item in split.train]
    config, kind = settings_for_labels(config, [sample.labels for sample in samples])
    config = for_time_budget(config, budget)
    started = time.perf_counter()
    torch.manual_seed(seed)
    trainer = Trainer(UNet(net_config), config, samples, device=device)
    prepare_seconds = time.perf_counter() - started
    losses, diverged = [], None
    try:
        losses = [event.loss for event in trainer.run() if event.kind == "step"]
    except TrainingDiverged as error:  # the model is back at its last good state (every checkpoint_every steps)
        diverged = str(error)
        print(f"  ours: {diverged}; scoring the last good state", flush=True)
    model = trainer.model
    final_loss = float(np.mean(losses[-20:])) if losses else None
    print(
        f"  ours ({'binary masks' if kind == 'binary' else 'instance labels'}): {trainer.iteration} iterations in {trainer.elapsed:.0f} s, "
        f"final loss {'-' if final_loss is None else f'{final_loss:.4f}'}",
        flush=True,
    )

    def predict(images: list[np.ndarray]) -> list[np.ndarray]:
        return [predict_tiled(model, image, device=device)[1] for image in images]

    started = time.perf_counter()
    probs = predict([item.image for item in split.validation])
    predict_seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "pipeline": f"ours ({preset_name} preset, {kind})",
        "net": net_config.to_dict(),
        "train": config.to_dict(),
        "label_kind": kind,
        "iterations": trainer.iteration,
        "train_seconds": trainer.elapsed,
        "seconds_per_iteration": trainer.elapsed / max(trainer.iteration, 1),
        "prepare_seconds": prepare_seconds,
        "predict_seconds": predict_seconds,
        "final_loss": final_loss,
        "diverged": diverged,
    }
    truths = [item.labels for item in split.validation]
    if split.dataset == "isbi":
        result["scores"] = isbi_figures(probs, truths)
        # the labels `napari-unet predict` writes: the model's own post-processing
        result["postprocess"] = trainer.postprocess.to_dict()
        result["postprocess_calibration"] = trainer.growth_calibration  # the seeds fitted on the training slices
        labels = [probs_to_labels(p, trainer.postprocess) for p in probs]
        result["scores_labels"] = isbi_label_figures(labels, truths)
        result["scores_flood_best"] = best_flood_figures(probs, truths)
    else:  # the model's own post-processing, as `napari-unet predict` applies it
        best = trainer.postprocess
        result["postprocess"] = best.to_dict()
        result["postprocess_calibration"] = trainer.growth_calibration
        result["scores"] = instance_figures(probs, truths, best)
        # the same network with the end-of-run fit that has no seeds from the objects' cores (as before
        # `PostprocessConfig.seed_threshold` existed): what that round of the fit adds
        result["scores_fit_without_cores"] = without = fit_without_cores(trainer, probs, truths)
        print(
            f"  ours: AP50 {result['scores']['ap50']:.4f}, mAP {result['scores']['map']:.4f} with the fitted "
            f"post-processing; {without['ap50']:.4f}, {without['map']:.4f} fitted without seeds from the cores",
            flush=True,
        )
        # for comparison: tuned as the peer's is, on `tune_count` training images (not what a user gets)
        bench = {}
        tuned_instance_figures(bench, split.train[:tune_count], predict, probs, truths, best.border_width, True)
        result["scores_bench_tuned"] = {"postprocess": bench["postprocess"], **bench["scores"]}
    if tta:
        bundle = trainer.bundle()
        started = time.perf_counter()
        tta_probs = [bundle.predict(item.raw, device=device, tta=True)[1] for item in split.validation]
        result["tta_predict_seconds"] = time.perf_counter() - started
        if split.dataset == "isbi":
            result["scores_tta"] = isbi_figures(tta_probs, truths)
            # the labels `predict --tta` writes (the seeds fitted without TTA), the same with the seeds fitted
            # again on the training slices' TTA probabilities, and the flood at its best seed (upper bound)
            result["scores_labels_tta"] = isbi_label_figures(
                [probs_to_labels(p, trainer.postprocess) for p in tta_probs], truths
            )
            train_tta = [bundle.predict(item.raw, device=device, tta=True)[1] for item in split.train[:16]]
            refit, _ = fit_flood_seeds(
                train_tta, [foreground(item.labels) for item in split.train[:16]], trainer.postprocess
            )
            result["scores_labels_tta_refit"] = {
                "seed_threshold": refit.threshold,
                **isbi_label_figures([probs_to_labels(p, refit) for p in tta_probs], truths),
            }
            result["scores_flood_best_tta"] = best_flood_figures(tta_probs, truths)
        else:
            result["scores_tta"] = instance_figures(tta_probs, truths, best)
    return result


# ------------------------------------------------------------------------------------------------ peer


def run_peer(split: Split, budget: float, device: torch.device, seed: int, tune_count: int) -> dict[str, Any]:
    """Train the MONAI peer for `budget` seconds, predict the validation images and score them."""
    from peer_monai import PeerConfig, predict_peer, train_peer

    config = PeerConfig(seed=seed)
    torch.manual_seed(seed)
    net, info = train_peer(
        [i.image for i in split.train], [foreground(i.labels) for i in split.train], budget, config, device
    )
    print(
        f"  peer: {info['iterations']} iterations ({info['epochs']} epochs) in {info['train_seconds']:.0f} s, "
        f"final loss {info['final_loss']:.4f}",
        flush=True,
    )

    def predict(images: list[np.ndarray]) -> list[np.ndarray]:
        return [predict_peer(net, image, config, device) for image in images]

    started = time.perf_counter()
    probs = predict([item.image for item in split.validation])
    result: dict[str, Any] = {
        "pipeline": "MONAI BasicUNet peer",
        "config": config.to_dict(),
        **info,
        "predict_seconds": time.perf_counter() - started,
    }
    truths = [item.labels for item in split.validation]
    if split.dataset == "isbi":
        result["scores"] = isbi_figures(probs, truths)
        result["scores_flood_best"] = best_flood_figures(probs, truths)
    else:
        tuned_instance_figures(result, split.train[:tune_count], predict, probs, truths, 0, watershed=False)
    return result


# ----------------------------------------------------------------------------------------------- report

FIGURES = {
    "isbi": [
        ("vrand", "V_rand (thinned)", True),
        ("vinfo", "V_info (thinned)", True),
        ("vrand_not_thinned", "V_rand (not thinned)", True),
        ("vinfo_not_thinned", "V_info (not thinned)", True),
        ("iou", "foreground IoU", True),
        ("pixel_error", "pixel error", False),
    ],
    "dsb": [
        ("ap50", "AP50", True),
        ("ap75", "AP75", True),
        ("map", "mAP 0.5:0.95", True),
        ("f1_50", "F1 @ 0.5", True),
        ("seg", "SEG", True),
    ],
}


def markdown_table(dataset: str, ours: dict[str, Any], peer: dict[str, Any]) -> str:
    """Ours against the peer, figure by figure, with the ratio ours / peer and which is better."""
    tta = ours.get("scores_tta")
    header = "| figure | ours | peer (MONAI) | ours / peer | better |" + (" ours + TTA |" if tta else "")
    lines = [header, "|---|---|---|---|---|" + ("---|" if tta else "")]
    for key, name, higher in FIGURES[dataset]:
        a, b = ours["scores"][key], peer["scores"][key]
        ratio = a / b if b else float("inf")
        better = "tie" if a == b else ("ours" if (a > b) == higher else "peer")
        row = f"| {name} | {a:.4f} | {b:.4f} | {ratio:.3f} | {better} |"
        lines.append(row + (f" {tta[key]:.4f} |" if tta else ""))
    lines.append(f"| training iterations | {ours['iterations']} | {peer['iterations']} | | |" + (" |" if tta else ""))
    lines.append(
        f"| training seconds | {ours['train_seconds']:.0f} | {peer['train_seconds']:.0f} | | |" + (" |" if tta else "")
    )
    return "\n".join(lines)


LABEL_FIGURES = [
    ("vrand", "V_rand (thinned)"),
    ("vinfo", "V_info (thinned)"),
    ("vrand_not_thinned", "V_rand (not thinned)"),
    ("vinfo_not_thinned", "V_info (not thinned)"),
]


def labels_table(ours: dict[str, Any], peer: dict[str, Any]) -> str:
    """ISBI: the segmentations, scored as they are: ours as `predict` writes them (the model's post-processing),
    the peer's threshold + components at its best threshold (its probability row), and both flooded from seeds
    at the threshold best on these slices (an upper bound)."""
    post = ours["postprocess"]
    how = f"seeds > {post['threshold']}, flooded" if post.get("flood") else f"threshold {post['threshold']}"
    lines = [
        f"| segmentation | ours (predict's labels: {how}) | peer (threshold + components, best threshold) "
        "| ours, flood at best seed | peer, flood at best seed |",
        "|---|---|---|---|---|",
    ]
    for key, name in LABEL_FIGURES:
        cells = [ours["scores_labels"][key], peer["scores"][key]]
        cells += [ours["scores_flood_best"][key], peer.get("scores_flood_best", {}).get(key, float("nan"))]
        lines.append(f"| {name} | " + " | ".join(f"{value:.4f}" for value in cells) + " |")
    return "\n".join(lines)


def reused_peer(folder: Path, dataset: str, args: argparse.Namespace, split: Split) -> dict[str, Any]:
    """The peer's result from `folder`/real_<dataset>.json, a run of this script with the same budget, seed, quick
    setting and split (checked); marked with where it came from."""
    path = folder / f"real_{dataset}{'_quick' if args.quick else ''}.json"
    earlier = json.loads(path.read_text())
    same = {
        "budget_seconds": args.budget,
        "seed": args.seed,
        "quick": args.quick,
        "validation": [item.name for item in split.validation],
    }
    found = {**{key: earlier.get(key) for key in ("budget_seconds", "seed", "quick")}}
    found["validation"] = earlier.get("split", {}).get("validation")
    if found != same:
        raise ValueError(f"--reuse-peer {path}: made with other settings ({found} vs {same})")
    return {**earlier["peer"], "reused_from": str(path)}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        import monai

        found["monai"] = monai.__version__
    except ImportError:
        found["monai"] = "not installed"
    return found


def run_dataset(dataset: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    started = time.perf_counter()
    load_start = os.getloadavg()
    split = load(dataset, args.data, args.seed)
    tune_count = 4 if args.quick else DSB_TUNE
    if args.quick:
        split = Split(split.dataset, split.train, split.validation[: 2 if dataset == "isbi" else 4])
    print(
        f"{dataset}: {len(split.train)} training, {len(split.validation)} validation images; "
        f"{args.budget:.0f} s of training per pipeline on {device} ({torch.get_num_threads()} torch threads), "
        f"load average {load_start[0]:.1f}",
        flush=True,
    )
    net_overrides = {
        key: value
        for key, value in (("depth", args.depth), ("base_channels", args.base_channels), ("dropout", args.dropout))
        if value is not None
    }
    train_overrides = {"tile_size": args.tile_size} if args.tile_size else {}
    ours = run_ours(
        split, args.preset, args.budget, device, args.seed, tune_count, not args.no_tta, net_overrides, train_overrides
    )
    load_middle = os.getloadavg()
    if args.reuse_peer is not None:
        peer = reused_peer(args.reuse_peer, dataset, args, split)
    else:
        peer = run_peer(split, args.budget, device, args.seed, tune_count)
    load_end = os.getloadavg()
    table = markdown_table(dataset, ours, peer)
    if dataset == "isbi":
        table += "\n\n" + labels_table(ours, peer)
    print(table, flush=True)
    return {
        "benchmark": "real_data",
        "dataset": dataset,
        "quick": args.quick,
        "budget_seconds": args.budget,
        "preset": args.preset,
        "overrides": {"net": net_overrides, "train": train_overrides},
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": list(load_start),
        "load_average_between": list(load_middle),
        "load_average_end": list(load_end),
        "versions": versions(),
        "seed": args.seed,
        "split": {
            "train": [i.name for i in split.train],
            "validation": [i.name for i in split.validation],
            "tuning": [i.name for i in split.train[:tune_count]] if dataset == "dsb" else [],
        },
        "ours": ours,
        "peer": peer,
        "ratios_ours_over_peer": {
            key: ours["scores"][key] / peer["scores"][key] if peer["scores"][key] else None
            for key, _, _ in FIGURES[dataset]
        },
        "table": table,
        "wall_seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("isbi", "dsb", "both"), default="both")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="training seconds per pipeline and dataset (default 600; 30 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="short budget, few validation and tuning images")
    parser.add_argument("--preset", choices=("fast", "paper"), default="fast", help="our training preset")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (both pipelines)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-tta", action="store_true", help="skip the test-time augmentation row")
    parser.add_argument(
        "--reuse-peer",
        type=Path,
        metavar="FOLDER",
        help="take the peer's result from FOLDER/real_<dataset>.json (same budget, seed and split) instead of "
        "training it again: the peer does not change when ours does",
    )
    parser.add_argument("--depth", type=int, default=None, help="our network's depth (default: the preset's)")
    parser.add_argument(
        "--base-channels", type=int, default=None, help="our network's base channels (default: the preset's)"
    )
    parser.add_argument(
        "--dropout", type=float, default=None, help="dropout at the end of the contracting path (the paper: 0.5)"
    )
    parser.add_argument("--tile-size", type=int, default=None, help="our training window (default: the preset's)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding isbi2012/ and dsb2018-fluo/")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for real_<dataset>.json")
    args = parser.parse_args(argv)
    if args.budget is None:
        args.budget = 30.0 if args.quick else 600.0
    if args.budget <= 0:
        parser.error(f"--budget must be > 0 seconds, got {args.budget}")
    datasets = ("isbi", "dsb") if args.dataset == "both" else (args.dataset,)
    folders = {"isbi": "isbi2012", "dsb": "dsb2018-fluo"}
    missing = [folders[d] for d in datasets if not (args.data / folders[d]).is_dir()]
    if missing:
        print(
            f"skipped: real data not found ({', '.join(missing)} under {args.data}); "
            "it lives in ../shared/data beside the repository on the developers' machines",
            file=sys.stderr,
        )
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        result = run_dataset(dataset, args, device)
        path = args.out / f"real_{dataset}{'_quick' if args.quick else ''}.json"
        write_results(path, result)
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
