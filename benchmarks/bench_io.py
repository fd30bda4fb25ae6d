"""Global percentiles of a large memory-mapped TIFF: `percentiles` (bounded strided subsample) against
`np.percentile` of the whole image loaded into memory, measured in the same run.

    .venv/bin/python benchmarks/bench_io.py [--quick]

Full: 8192 x 8192 uint16 (128 MiB); --quick: 4096 x 4096 (32 MiB). The file goes to a temporary
folder. Reports the speed-up and the accuracy as ranks: the fraction of pixels below the sampled 1 %
value and above the sampled 99.8 % value (ideal: 1 % and 0.2 %). Writes benchmarks/results/io.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from _common import machine, seconds, write_results  # benchmarks/ is on sys.path when run as a script
from scipy import ndimage

from napari_unet.io import percentiles, read_image, write_tiff

RESULTS = Path(__file__).resolve().parent / "results" / "io.json"


def time_both(path: Path) -> tuple:
    """Sampled and full percentiles of the memory-mapped TIFF at ``path``: (median, runs, values) each."""
    mapped, axes = read_image(path)
    assert isinstance(mapped, np.memmap)
    sampled = seconds(lambda: percentiles(mapped, 1.0, 99.8, axes), 5)
    full = seconds(lambda: np.percentile(np.array(mapped), [1.0, 99.8]), 3)
    return *sampled, *full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4096 x 4096 image instead of 8192 x 8192")
    args = parser.parse_args()
    side = 4096 if args.quick else 8192
    rng = np.random.default_rng(0)
    coarse = ndimage.zoom(rng.random((64, 64), dtype=np.float32), side // 64, order=1)
    image = (1000 + 3000 * coarse + rng.normal(0, 100, (side, side))).clip(0, 65535).astype(np.uint16)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "large.tif"
        write_tiff(path, image, "YX")
        sampled_s, sampled_times, (lo, hi), full_s, full_times, (full_lo, full_hi) = time_both(path)
    below, above = float(np.mean(image < lo)), float(np.mean(image > hi))
    result = {
        "benchmark": "io",
        "quick": args.quick,
        "shape": [side, side],
        "percentiles_sampled_s": sampled_s,
        "percentiles_sampled_runs_s": sampled_times,
        "percentiles_full_s": full_s,
        "percentiles_full_runs_s": full_times,
        "speedup": full_s / sampled_s,
        "sampled_lo_hi": [float(lo.item()), float(hi.item())],
        "full_lo_hi": [float(full_lo), float(full_hi)],
        "fraction_below_lo": below,
        "fraction_above_hi": above,
        **machine(load),
    }
    write_results(RESULTS, result)
    print(f"percentiles of a {side}x{side} uint16 memmap (load average {load:.2f})")
    print(f"  sampled : {sampled_s * 1e3:8.1f} ms  lo/hi {lo.item():.1f} / {hi.item():.1f}")
    print(f"  full    : {full_s * 1e3:8.1f} ms  lo/hi {full_lo:.1f} / {full_hi:.1f}")
    print(f"  speedup : {full_s / sampled_s:8.1f}x")
    print(f"  pixels below lo {below:.4f} (ideal 0.01), above hi {above:.4f} (ideal 0.002)")
    print(f"  -> {RESULTS}")


if __name__ == "__main__":
    main()
