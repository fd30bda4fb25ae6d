"""Few-shot fine-tuning on images the built-in model was not trained on: 10 painted nuclei, 60 s of CPU.

    .venv/bin/python benchmarks/bench_few_shot.py [--seconds 60] [--cells 10] [--per-kind 2] [--no-suggest]

Sweeps: `--steps N` (a fixed number of steps instead of the time budget: comparable on a loaded machine),
`--recipe FIELD=VALUE ...` (the fine-tuning recipe, `FewShotConfig`), `--new-network FIELD=VALUE ...` (the new
network's TrainConfig, e.g. w0=10 sigma=5 border=1 class_weights=balanced), `--only VARIANTS`, `--seed` (which
cells are painted).

Images (from ../shared/data; the script says so and exits when it is absent), none of them in the built-in
model's training data, 3 kinds:
- "brightfield": the grey brightfield images of `dsb2018-other/train` (dark nuclei on a bright background);
- "histology": RGB stained tissue of `dsb2018-other/train`, as grey (luminance, as the built-in model sees it);
- "fluorescence, large nuclei": the `dsb2018-fluo/train` images with the largest nuclei (the model's
  validation set, never trained on).
`--per-kind` images of each kind, the first in file-name order with at least 2 x `--cells` nuclei among those
the model was not trained on (its metadata lists the `dsb2018-other/train` images it saw).

For each image a user is simulated: `--cells` nuclei chosen at random (seeded) are painted in an empty labels
layer (nothing else: the rest of the image is unannotated). Then, with the same cells and the same time:
- zero-shot: the built-in model as it is;
- fine-tuned: `napari_unet.fewshot` from the built-in model (its default recipe), `--seconds` of training;
- new network: the `fast` preset from random weights, trained `--seconds` on the same cells with the
  background margin the Fine-tune dock used for a new network (12 px), at the image's own scale;
- suggested cells (unless --no-suggest): the same fine-tuning, with the cells painted in the regions that
  `napari_unet.uncertainty.suggest_regions` proposes from the zero-shot model's test-time-augmentation
  disagreement (the `--cells` most uncertain nuclei in those regions) instead of random ones.
Every model segments the whole image at the painted cells' median diameter; scores against all nuclei of the
image: AP50 and mAP (napari_unet.metrics). "Elsewhere" scores only the nuclei and objects whose centre lies
outside the region the fine-tuning looked at (what the model must not forget). Writes few_shot.json.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine, write_results  # benchmarks/ is on sys.path when run as a script
from scipy import ndimage

from napari_unet.channels import ChannelChoice
from napari_unet.fewshot import FewShotConfig, few_shot_trainer
from napari_unet.io import normalize_percentile, read_image, read_labels
from napari_unet.metrics import instance_scores
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle, load_model
from napari_unet.scale import median_diameter
from napari_unet.targets import mask_around_cells
from napari_unet.training import Sample, Trainer, preset
from napari_unet.uncertainty import suggest_regions, tta_uncertainty

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
NEW_NETWORK_MARGIN = 12


def grey(image: np.ndarray, axes: str) -> np.ndarray:
    """One grey plane, as the built-in model sees RGB (luminance, `channels.ChannelChoice(grey=True)`)."""
    return np.asarray(ChannelChoice(grey=True).apply(image, axes)[0], dtype=np.float32)


def pick_images(
    data: Path, per_kind: int, min_cells: int, trained_on: set[str] = frozenset()
) -> list[tuple[str, Path, Path]]:
    """`per_kind` images of each kind, none of them in `trained_on` (file names the model was trained on)."""
    other = [p for p in sorted((data / "dsb2018-other/train/images").glob("*.png")) if p.name not in trained_on]
    fluo = sorted((data / "dsb2018-fluo/train/images").glob("*.png"))
    if not other or not fluo:
        raise SystemExit(f"the few-shot benchmark needs {data} (dsb2018-other/train and dsb2018-fluo/train)")
    chosen: dict[str, list[tuple[Path, Path]]] = {"brightfield": [], "histology": []}
    for path in other:
        labels_path = path.parent.parent / "labels" / path.name
        kind = "histology" if read_image(path)[1] == "CYX" else "brightfield"
        if len(chosen[kind]) < per_kind and len(np.unique(read_labels(labels_path))) - 1 >= min_cells:
            chosen[kind].append((path, labels_path))
    sized = []
    for path in fluo:
        labels = read_labels(path.parent.parent / "labels" / path.name)
        if len(np.unique(labels)) - 1 >= min_cells:
            sized.append((median_diameter(labels), path))
    chosen["fluorescence, large nuclei"] = [
        (p, p.parent.parent / "labels" / p.name) for _, p in sorted(sized, reverse=True)[:per_kind]
    ]
    return [(kind, image, labels) for kind, pairs in chosen.items() for image, labels in pairs]


def paint(truth: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.where(np.isin(truth, ids), truth, 0).astype(np.int32)


def scores(pred: np.ndarray, truth: np.ndarray, looked_at: np.ndarray) -> dict[str, float]:
    """Whole-image AP50/mAP, and the same for objects centred outside `looked_at` ("elsewhere")."""
    whole = instance_scores(pred, truth)
    outside_truth = _keep_centred_outside(truth, looked_at)
    outside_pred = _keep_centred_outside(pred, looked_at)
    elsewhere = instance_scores(outside_pred, outside_truth)
    return {
        "ap50": whole["ap50"],
        "map": whole["map"],
        "elsewhere_ap50": elsewhere["ap50"],
        "elsewhere_map": elsewhere["map"],
        "n_pred": whole["n_pred"],
        "n_true": whole["n_true"],
    }


def _keep_centred_outside(labels: np.ndarray, region: np.ndarray) -> np.ndarray:
    ids = np.unique(labels[labels > 0])
    if ids.size == 0:
        return labels
    centres = np.round(ndimage.center_of_mass(labels > 0, labels, ids)).astype(int)
    inside = region[centres[:, 0], centres[:, 1]]
    return np.where(np.isin(labels, ids[inside]), 0, labels)


def fine_tune(
    bundle: ModelBundle, image: np.ndarray, painted: np.ndarray, recipe: FewShotConfig
) -> tuple[ModelBundle, int]:
    trainer = few_shot_trainer(bundle, image, painted, config=recipe, device="cpu")
    for _ in trainer.run():
        pass
    return trainer.bundle(), trainer.iteration


def new_network(
    image: np.ndarray, painted: np.ndarray, recipe: FewShotConfig, seed: int, settings: dict[str, Any] | None = None
) -> tuple[ModelBundle, int]:
    """The `fast` preset (with `settings`: TrainConfig fields) from random weights on the painted cells."""
    net_config, train_config = preset(
        "fast", iterations=recipe.iterations, time_budget=recipe.seconds, seed=seed, **(settings or {})
    )
    torch.manual_seed(seed)
    normalised = normalize_percentile(image, 1.0, 99.8, "YX").astype(np.float32)
    sample = Sample(normalised, painted, mask_around_cells(painted, NEW_NETWORK_MARGIN))
    trainer = Trainer(UNet(net_config), train_config, [sample], device="cpu")
    for _ in trainer.run():
        pass
    return trainer.bundle(), trainer.iteration


def suggested_cells(
    bundle: ModelBundle, image: np.ndarray, truth: np.ndarray, count: int, diameter: float
) -> np.ndarray:
    """The `count` nuclei a user would paint in the suggested regions: the most uncertain ones there."""
    factor = bundle.object_diameter / diameter
    _, uncertainty = tta_uncertainty(bundle, image, factor=factor, transforms=4, device="cpu")
    boxes = suggest_regions(uncertainty, count=max(1, count // 3), size=int(round(3 * diameter)))
    in_boxes = np.zeros(truth.shape, bool)
    for y0, x0, y1, x1 in boxes:
        in_boxes[y0:y1, x0:x1] = True
    ids = np.unique(truth[truth > 0])
    mean_uncertainty = ndimage.mean(uncertainty, truth, ids)
    inside = ndimage.maximum(in_boxes, truth, ids).astype(bool)
    ranked = sorted(zip(ids, mean_uncertainty, inside), key=lambda t: (not t[2], -t[1]))  # in the boxes first
    return np.array([cell for cell, _, _ in ranked[:count]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--cells", type=int, default=10)
    parser.add_argument("--per-kind", type=int, default=2)
    parser.add_argument("--no-suggest", action="store_true")
    parser.add_argument(
        "--only",
        default="zero_shot,fine_tuned,new_network,fine_tuned_suggested",
        help="comma-separated variants to run",
    )
    parser.add_argument("--model", default="nuclei", help="the starting model (a built-in name or a folder)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train this many steps instead of --seconds (tuning on a loaded machine)",
    )
    parser.add_argument(
        "--recipe",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="FewShotConfig fields to change, e.g. learning_rate=1e-3 freeze_encoder=true",
    )
    parser.add_argument(
        "--new-network",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="TrainConfig fields to change for the new network, e.g. w0=10 sigma=5 border=1",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS / "few_shot.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = __import__("os").getloadavg()[0]
    bundle = load_model(args.model)
    recipe = FewShotConfig(**_fields(args.recipe))
    new_settings = _fields(args.new_network)
    if args.steps is not None:
        recipe = replace(recipe, seconds=None, iterations=args.steps)
    else:
        recipe = replace(recipe, seconds=args.seconds)
    only = set(args.only.split(","))
    if args.no_suggest:
        only.discard("fine_tuned_suggested")
    rows: list[dict[str, Any]] = []
    trained_on = set(bundle.metadata.get("training_data", {}).get("dsb2018-other/train", []))
    picked = pick_images(args.data, args.per_kind, 2 * args.cells, trained_on)
    for index, (kind, image_path, labels_path) in enumerate(picked):
        raw, axes = read_image(image_path)
        image, truth = grey(raw, axes), read_labels(labels_path).astype(np.int32)
        rng = np.random.default_rng(args.seed + index)
        ids = rng.choice(np.unique(truth[truth > 0]), args.cells, replace=False)
        painted = paint(truth, ids)
        diameter = median_diameter(painted)
        region = mask_around_cells(painted, FewShotConfig().margin * diameter)
        row: dict[str, Any] = {
            "kind": kind,
            "image": image_path.name,
            "shape": list(truth.shape),
            "painted_diameter": round(diameter, 1),
            "true_diameter": round(median_diameter(truth), 1),
        }
        started = time.perf_counter()
        if "zero_shot" in only:
            row["zero_shot"] = scores(bundle.segment(image, diameter=diameter), truth, region)
        if "fine_tuned" in only:
            tuned, steps = fine_tune(bundle, image, painted, recipe)
            row["fine_tuned"] = {**scores(tuned.segment(image, diameter=diameter), truth, region), "steps": steps}
        if "new_network" in only:
            fresh, steps = new_network(image, painted, recipe, args.seed, new_settings)
            row["new_network"] = {**scores(fresh.segment(image), truth, region), "steps": steps}
        if "fine_tuned_suggested" in only:
            chosen = suggested_cells(bundle, image, truth, args.cells, diameter)
            suggested = paint(truth, chosen)
            tuned_s, steps = fine_tune(bundle, image, suggested, recipe)
            region_s = mask_around_cells(suggested, FewShotConfig().margin * median_diameter(suggested))
            row["fine_tuned_suggested"] = {
                **scores(tuned_s.segment(image, diameter=diameter), truth, region_s),
                "steps": steps,
            }
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        variants = [v for v in ("zero_shot", "fine_tuned", "new_network", "fine_tuned_suggested") if v in row]
        print(
            f"{kind:28s} {image_path.name[:12]}  " + "  ".join(f"{v} {row[v]['ap50']:.3f}" for v in variants),
            flush=True,
        )

    def mean(variant: str, key: str) -> float:
        return float(np.mean([r[variant][key] for r in rows if variant in r]))

    summary = {
        variant: {key: mean(variant, key) for key in ("ap50", "map", "elsewhere_ap50", "elsewhere_map")}
        for variant in ("zero_shot", "fine_tuned", "new_network", "fine_tuned_suggested")
        if any(variant in r for r in rows)
    }
    if {"fine_tuned", "new_network"} <= set(summary):
        summary["fine_tuned_minus_new_network_ap50"] = summary["fine_tuned"]["ap50"] - summary["new_network"]["ap50"]
    if {"fine_tuned", "zero_shot"} <= set(summary):
        summary["fine_tuned_minus_zero_shot_ap50"] = summary["fine_tuned"]["ap50"] - summary["zero_shot"]["ap50"]
    if {"fine_tuned_suggested", "fine_tuned"} <= set(summary):
        summary["suggested_minus_random_ap50"] = summary["fine_tuned_suggested"]["ap50"] - summary["fine_tuned"]["ap50"]
    for variant in ("zero_shot", "fine_tuned", "new_network", "fine_tuned_suggested"):
        if variant in summary:
            s = summary[variant]
            print(
                f"mean {variant:22s} AP50 {s['ap50']:.3f}  mAP {s['map']:.3f}  elsewhere AP50 {s['elsewhere_ap50']:.3f}"
            )
    for key in ("fine_tuned_minus_new_network_ap50", "fine_tuned_minus_zero_shot_ap50", "suggested_minus_random_ap50"):
        if key in summary:
            print(f"{key}: {summary[key]:+.3f}")
    write_results(
        args.out,
        {
            "benchmark": "few_shot",
            "model": args.model,
            "recipe": asdict(recipe),
            "new_network_settings": new_settings,
            "seconds": args.seconds if args.steps is None else None,
            "cells": args.cells,
            "machine": machine(load),
            "summary": summary,
            "images": rows,
        },
    )
    return 0


def _fields(items: list[str]) -> dict[str, Any]:
    """FIELD=VALUE items as a dict of typed values."""
    pairs = [item.split("=", 1) for item in items]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"expected FIELD=VALUE items, got {items}")
    return {key: _value(value) for key, value in pairs}


def _value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return float(text) if any(c in text for c in ".e") else int(text)
    except ValueError:
        return text


if __name__ == "__main__":
    raise SystemExit(main())
