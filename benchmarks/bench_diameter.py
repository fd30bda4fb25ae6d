"""Object size: how to bring results back to the image's size, and how well "auto" estimates the diameter.

    .venv/bin/python benchmarks/bench_diameter.py [--model nuclei] [--images 20] [--data ../shared/data]
        [--threads 2] [--out benchmarks/results]

On every 100/N-th image of `dsb2018-fluo/train` (never trained on by the built-in model), N = --images:
1. Two ways to segment an image rescaled by f = model diameter / true median diameter of its labels: (a) the
   probabilities resized back to the image's size, then the post-processing with its sizes scaled by 1/f
   (`scale.scale_postprocess`), which `ModelBundle.segment` does; (b) post-processing at the model's scale, then
   the labels resized back by nearest neighbour. Both from the same network output; plus (c) no rescaling.
   Mean AP50 and mAP (IoU 0.5:0.95) of each, `metrics.instance_scores`.
2. "auto": `ModelBundle.estimate_diameter` against the true median diameter: median of |estimate / truth - 1|,
   share of images within +-25 %, and AP50/mAP of `segment(diameter="auto")` next to the true diameter's.
3. Cost on a 1024 x 1024 image (an image of the set mirrored to that size): `segment` at scale 1 (diameter
   None), `estimate_diameter` alone, and the ratio of the two (median of 3 runs each).
Writes `diameter.json`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, seconds, write_results  # benchmarks/ is on sys.path when run as a script
from skimage.transform import resize

from napari_unet.io import read_image, read_labels
from napari_unet.metrics import instance_scores
from napari_unet.modelfile import load_model
from napari_unet.postprocess import probs_to_labels
from napari_unet.scale import median_diameter, resize_probs, scale_postprocess

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
SET = "dsb2018-fluo/train"


def grey(path: Path) -> np.ndarray:
    """The image as (H, W): RGBA PNGs of this set have R = G = B."""
    image, axes = read_image(path)
    image = np.asarray(image, dtype=np.float32)
    return image[:3].mean(axis=0) if axes == "CYX" else image


def mean_scores(scores: list[dict]) -> dict[str, float]:
    return {key: round(float(np.mean([s[key] for s in scores])), 4) for key in ("ap50", "map")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei", help="model folder or built-in name (with an object diameter)")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    folder = args.data / SET
    if not (folder / "images").is_dir():
        raise SystemExit(f"no {folder}/images: this benchmark needs ../shared/data (see its README)")
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    bundle = load_model(args.model)
    if bundle.object_diameter is None:
        raise SystemExit(f"{args.model} has no object diameter: nothing to rescale to")
    paths = sorted((folder / "images").glob("*.png"))
    paths = paths[:: max(1, len(paths) // args.images)][: args.images]

    rows, by = [], {"a_probs_back": [], "b_labels_back": [], "c_no_rescaling": [], "auto": []}
    for path in paths:
        image, truth = grey(path), read_labels(folder / "labels" / path.name)
        true_d = median_diameter(truth)
        factor = bundle.object_diameter / true_d
        small = resize(
            image,
            tuple(max(1, round(n * factor)) for n in image.shape),
            order=1,
            anti_aliasing=factor < 1,
            preserve_range=True,
        ).astype(np.float32)
        probs = bundle.predict(small, diameter=None, device="cpu")
        a = probs_to_labels(resize_probs(probs, image.shape)[1], scale_postprocess(bundle.postprocess, 1 / factor))
        b = resize(
            probs_to_labels(probs[1], bundle.postprocess),
            image.shape,
            order=0,
            anti_aliasing=False,
            preserve_range=True,
        ).astype(np.int32)
        c = bundle.segment(image, diameter=None, device="cpu")
        started = time.perf_counter()
        estimate = bundle.estimate_diameter(image, device="cpu")
        estimate_s = time.perf_counter() - started
        auto = bundle.segment(image, diameter=estimate, device="cpu") if estimate is not None else c
        for key, labels in zip(by, (a, b, c, auto)):
            by[key].append(instance_scores(labels, truth))
        rows.append(
            {
                "image": path.name,
                "shape": list(image.shape),
                "true_diameter": round(true_d, 2),
                "estimate": None if estimate is None else round(estimate, 2),
                "estimate_seconds": round(estimate_s, 3),
                **{f"ap50_{key}": round(by[key][-1]["ap50"], 4) for key in by},
            }
        )
        print(
            f"{path.name[:12]} {image.shape} true {true_d:5.1f} est {estimate or float('nan'):5.1f}  "
            + "  ".join(f"{key} {by[key][-1]['ap50']:.3f}" for key in by),
            flush=True,
        )

    errors = np.array([abs(r["estimate"] / r["true_diameter"] - 1) if r["estimate"] else np.inf for r in rows])
    big = np.pad(grey(max(paths, key=lambda p: read_labels(folder / "labels" / p.name).size)), 512, mode="reflect")
    big = big[:1024, :1024]
    segment_s = seconds(lambda: bundle.segment(big, diameter=None, device="cpu"), 3)[0]
    estimate_s = seconds(lambda: bundle.estimate_diameter(big, device="cpu"), 3)[0]
    result = {
        "model": str(args.model),
        "model_iterations": bundle.metadata.get("iterations"),
        "model_diameter": bundle.object_diameter,
        "set": SET,
        "images": len(rows),
        "methods": {key: mean_scores(scores) for key, scores in by.items()},
        "estimate": {
            "median_ratio_error": round(float(np.median(errors)), 4),
            "within_25_percent": round(float(np.mean(errors <= 0.25)), 4),
            "not_found": int(np.sum(~np.isfinite(errors))),
        },
        "cost_1024": {
            "segment_scale_1_s": round(segment_s, 3),
            "estimate_s": round(estimate_s, 3),
            "estimate_over_segment": round(estimate_s / segment_s, 3),
            "threads": args.threads,
        },
        "per_image": rows,
        "machine": machine(load),
    }
    name = "diameter.json"
    write_results(args.out / name, result)
    print({k: result[k] for k in ("methods", "estimate", "cost_1024")})
    print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
