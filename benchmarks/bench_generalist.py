"""The built-in `nuclei` model zero-shot (no annotation) on images it was never trained on, and its speed.

    .venv/bin/python benchmarks/bench_generalist.py [--model nuclei] [--limit N] [--threads 2] [--tta]

Scores (napari_unet.metrics: AP50, mAP over IoU 0.5:0.05:0.95, F1 at 0.5, SEG), means over images:
- `dsb2018-fluo/train`: the 100 DSB 2018 fluorescence images kept out of the model's training (its validation
  set), with the object diameter estimated automatically (`diameter="auto"`, what a user gets) and with the true
  median diameter of each image's nuclei (the best a diameter can do);
- the BBBC039 images held out of training (listed in the model's metadata), auto diameter;
- the brightfield and the histology images of `dsb2018-other/train` held out of training (listed in the model's
  metadata, when it was trained on that set), auto and true diameter.
Speed: a 1024 x 1024 image (synthetic cells at the model's object diameter) segmented by `bundle.segment` at
scale 1 (normalisation, tiled network, post-processing), with the automatic diameter estimate, and the bare
network's tiled forward pass on the same normalised image, medians of 3 runs in the same invocation.
With --tta every segmentation (and the timed ones) averages the 8 flips and rotations (`predict --tta`).
Needs ../shared/data (the script says so and exits when it is absent). Writes generalist.json.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import machine, seconds, write_results  # benchmarks/ is on sys.path when run as a script

from napari_unet.channels import ChannelChoice
from napari_unet.io import read_image, read_labels
from napari_unet.metrics import average_scores, error_kinds, instance_scores
from napari_unet.modelfile import load_model
from napari_unet.scale import median_diameter
from napari_unet.synthetic import make_cells
from napari_unet.tiling import predict_tiled

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def grey(path: Path) -> np.ndarray:
    """One grey plane, as the built-in model sees RGB (luminance, `channels.ChannelChoice(grey=True)`)."""
    image, axes = read_image(path)
    return np.asarray(ChannelChoice(grey=True).apply(image, axes)[0], dtype=np.float32)


def score_set(bundle, pairs: list[tuple[Path, Path]], true_diameter: bool, tta: bool = False) -> dict[str, Any]:
    rows = []
    for image_path, labels_path in pairs:
        truth = read_labels(labels_path).astype(np.int32)
        diameter = median_diameter(truth) if true_diameter else "auto"
        if true_diameter and not np.isfinite(diameter):
            continue
        pred = bundle.segment(grey(image_path), diameter=diameter, tta=tta)
        rows.append({"image": image_path.name, **instance_scores(pred, truth), "errors": error_kinds(pred, truth)})
    errors = {kind: sum(row["errors"][kind] for row in rows) for kind in ("matched", "merged", "missed", "false")}
    return {"mean": average_scores(rows), "errors": errors, "images": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N validation images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS / "generalist.json")
    parser.add_argument(
        "--held-out-from",
        default=None,
        help="take the held-out image lists from this model's metadata (default: --model's), e.g. to score an "
        "earlier model on the images a later one was not trained on",
    )
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (8 flips and rotations)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    bundle = load_model(args.model)
    net_diameter = bundle.object_diameter

    # speed first, on a quiet process
    image, _ = make_cells((1024, 1024), seed=0)
    normalised = bundle.preprocessor(image[None], "CYX")(image[None].astype(np.float32))
    bare, bare_runs, _ = seconds(lambda: predict_tiled(bundle.net, normalised, device="cpu"), 3)
    whole, whole_runs, _ = seconds(lambda: bundle.segment(image, diameter=net_diameter, tta=args.tta), 3)
    auto, auto_runs, _ = seconds(lambda: bundle.segment(image, diameter="auto", tta=args.tta), 3)
    speed = {
        "image": [1024, 1024],
        "bare_network_s": bare,
        "segment_scale_1_s": whole,
        "segment_auto_s": auto,
        "segment_over_bare": whole / bare,
        "runs": {"bare": bare_runs, "segment": whole_runs, "auto": auto_runs},
    }
    print(
        f"1024^2: segment {whole:.2f} s at scale 1 ({whole / bare:.2f}x the bare network's {bare:.2f} s), "
        f"{auto:.2f} s with the automatic diameter",
        flush=True,
    )

    validation = sorted((args.data / "dsb2018-fluo/train/images").glob("*.png"))
    if not validation:
        raise SystemExit(f"no images in {args.data / 'dsb2018-fluo/train/images'}: this benchmark needs ../shared/data")
    pairs = [(p, p.parent.parent / "labels" / p.name) for p in validation[: args.limit]]
    results: dict[str, Any] = {"speed": speed}
    results["dsb2018_fluo_train_auto"] = score_set(bundle, pairs, False, args.tta)
    results["dsb2018_fluo_train_true_diameter"] = score_set(bundle, pairs, True, args.tta)
    lists = (load_model(args.held_out_from) if args.held_out_from else bundle).metadata.get("training_data", {})
    held = lists.get("held_out_bbbc039", [])
    bbbc = [(args.data / "bbbc039/train/images" / n, args.data / "bbbc039/train/labels" / n) for n in held]
    if bbbc:
        results["bbbc039_held_out_auto"] = score_set(bundle, bbbc, False, args.tta)
    other = [
        (args.data / "dsb2018-other/train/images" / n, args.data / "dsb2018-other/train/labels" / n)
        for n in lists.get("held_out_dsb2018_other", [])
    ]
    for kind in ("brightfield", "histology"):
        pairs = [p for p in other if (read_image(p[0])[1] == "CYX") == (kind == "histology")]
        if pairs:
            results[f"dsb2018_other_held_out_{kind}_auto"] = score_set(bundle, pairs, False, args.tta)
            results[f"dsb2018_other_held_out_{kind}_true_diameter"] = score_set(bundle, pairs, True, args.tta)
    for name, result in results.items():
        if name != "speed":
            m, e = result["mean"], result["errors"]
            print(
                f"{name:34s} AP50 {m['ap50']:.3f}  mAP {m['map']:.3f}  F1 {m['f1_50']:.3f}  SEG {m['seg']:.3f}  "
                f"({m['n_images']} images); true objects matched {e['matched']}, merged {e['merged']}, missed "
                f"{e['missed']}; false objects {e['false']}",
                flush=True,
            )
    write_results(
        args.out,
        {
            "benchmark": "generalist",
            "model": args.model,
            "tta": args.tta,
            "machine": machine(load),
            "metadata": {k: bundle.metadata.get(k) for k in ("iterations", "elapsed_seconds", "command")},
            "postprocess": bundle.postprocess.to_dict(),
            **results,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
