"""Polarity: which images a model with `Normalization.invert = "auto"` inverts (a bright background).

    .venv/bin/python benchmarks/bench_polarity.py [--model nuclei] [--data ../shared/data] [--out benchmarks/results]

Every image of `dsb2018-fluo/train`, `dsb2018-fluo/pretrain`, `bbbc039/train` (fluorescence: dark background)
and `dsb2018-other/train` (brightfield and stained histology: bright background), read as the model reads it
(its channel choice: the built-in's luminance), normalised with its percentiles. Counts the images each rule
inverts: the reference, the normalised median above 0.5 (the rule until December 2026), and the rule of
`Normalization.flips` (the median or the most common value above 0.5, measured in the same run), with the
range of both statistics per set, the images the two rules decide differently, and those of every image the
rule decides against its set's background or differently from the median (with their statistics). Writes
`polarity.json`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from _common import machine, write_results  # benchmarks/ is on sys.path when run as a script

from napari_unet.io import channel_values, percentiles_of, read_image
from napari_unet.modelfile import load_model, polarity_statistics

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
SETS = {
    "dsb2018-fluo/train": "dark",
    "dsb2018-fluo/pretrain": "dark",
    "bbbc039/train": "dark",
    "dsb2018-other/train": "bright",
}


def statistics(bundle, path: Path) -> tuple[float, float, bool]:
    """(normalised median, most common normalised value, whether `Normalization.flips` inverts it) of the image
    at `path` as `bundle` sees it (one channel)."""
    image, axes = read_image(path)
    plane = np.asarray(bundle.one_plane(image, axes), dtype=np.float32)
    values = channel_values(plane, "YX")
    lo, hi = percentiles_of(values, bundle.normalization.low, bundle.normalization.high, "YX")
    normalised = (values - lo) / np.maximum(hi - lo, 1e-6)
    median, mode = polarity_statistics(normalised)
    return float(median[0]), float(mode[0]), bool(bundle.normalization.flips(normalised)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei", help="model folder or built-in name")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    missing = [name for name in SETS if not (args.data / name / "images").is_dir()]
    if missing:
        raise SystemExit(f"no {args.data}/{missing[0]}/images: this benchmark needs ../shared/data (see its README)")
    load = os.getloadavg()[0]
    bundle = load_model(args.model)
    if bundle.normalization.invert != "auto":
        raise SystemExit(
            f"{args.model} does not decide its polarity per image (invert = {bundle.normalization.invert})"
        )
    result: dict = {"model": args.model, "machine": machine(load), "sets": {}}
    print(f"{'set':24} {'images':>6} {'background':>10} {'median > 0.5':>12} {'flips':>6} {'ratio':>6}  differ")
    for name, background in SETS.items():
        rows = {p.name: statistics(bundle, p) for p in sorted((args.data / name / "images").iterdir())}
        medians = np.array([r[0] for r in rows.values()])
        modes = np.array([r[1] for r in rows.values()])
        reference = int(np.sum(medians > 0.5))
        flipped = sum(r[2] for r in rows.values())
        differ = sorted(n for n, r in rows.items() if r[2] != (r[0] > 0.5))
        unexpected = {  # inverted on a dark background, or not on a bright one: each with its two statistics
            n: {"median": round(r[0], 3), "most_common": round(r[1], 3), "inverted": r[2]}
            for n, r in rows.items()
            if r[2] != (background == "bright") or n in differ
        }
        result["sets"][name] = {
            "images": len(rows),
            "background": background,
            "inverted_median_rule": reference,
            "inverted_flips": flipped,
            "median_range": [round(float(medians.min()), 3), round(float(medians.max()), 3)],
            "most_common_range": [round(float(modes.min()), 3), round(float(modes.max()), 3)],
            "decided_differently": differ,
            "against_the_background_or_changed": unexpected,
        }
        ratio = f"{flipped / reference:.3f}" if reference else "-"
        print(f"{name:24} {len(rows):6d} {background:>10} {reference:12d} {flipped:6d} {ratio:>6}  {', '.join(differ)}")
    write_results(args.out / "polarity.json", result)
    print(f"results in {args.out / 'polarity.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
