"""Augmentation speed per 572 x 572 sample (image + target + weights): `augment` against the `elasticdeform`
package's `deform_random_grid` (3 x 3 grid, sigma 10 px, cubic spline image, nearest target and weights,
mirrored borders), measured interleaved in the same run. Goal: >= 3x faster.

    .venv/bin/python benchmarks/bench_augment.py [--quick]

elasticdeform 0.5.1 must be built against numpy 2 (see docs BASELINES.md):
    .venv/bin/pip install --no-build-isolation --no-binary elasticdeform --force-reinstall --no-deps elasticdeform==0.5.1
Without it the reference is scipy.ndimage.map_coordinates on the same kind of field (said in the output).
Writes benchmarks/results/augment.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _common import write_results  # benchmarks/ is on sys.path when run as a script
from scipy import ndimage

from napari_unet.augment import AugmentConfig, augment, elastic_displacement

RESULTS = Path(__file__).resolve().parent / "results" / "augment.json"
SHAPE = (572, 572)
ELASTIC_ONLY = dataclasses.replace(AugmentConfig.identity(), elastic_p=1.0)
EVERYTHING = AugmentConfig(
    elastic_p=1.0, rotation_p=1.0, shift_p=1.0, flip_p=0.5, contrast_p=1.0, brightness_p=1.0, gamma_p=1.0
)


def reference(name: str):
    """The reference augmentation (image, target, weights, rng) -> three arrays, and its description."""
    try:
        import elasticdeform
    except ImportError:
        elasticdeform = None
    if name == "elasticdeform" and elasticdeform is not None:

        def deform(image, target, weights, rng):
            np.random.seed(int(rng.integers(2**31)))  # elasticdeform draws from numpy's global generator
            return elasticdeform.deform_random_grid(
                [image, target, weights], sigma=10.0, points=3, order=[3, 0, 0], mode="mirror"
            )

        return deform, f"elasticdeform {importlib.metadata.version('elasticdeform')} deform_random_grid"

    def map_coordinates(image, target, weights, rng):
        coordinates = np.indices(image.shape) + elastic_displacement(image.shape, 3, 10.0, rng)
        return (
            ndimage.map_coordinates(image, coordinates, order=3, mode="mirror"),
            ndimage.map_coordinates(target, coordinates, order=0, mode="mirror"),
            ndimage.map_coordinates(weights, coordinates, order=0, mode="mirror"),
        )

    missing = " (elasticdeform not importable)" if name == "elasticdeform" else ""
    return map_coordinates, f"scipy.ndimage.map_coordinates{missing}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--reference", choices=["elasticdeform", "map_coordinates"], default="elasticdeform")
    args = parser.parse_args()
    repeats = 5 if args.quick else 25

    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random(SHAPE), 3).astype(np.float32)
    target = (image > image.mean()).astype(np.uint8)
    weights = rng.random(SHAPE).astype(np.float32) * 10
    deform, reference_name = reference(args.reference)
    candidates = {
        "reference": lambda: deform(image, target, weights, rng),
        "augment_elastic_only": lambda: augment(image, target, weights, rng, ELASTIC_ONLY),
        "augment_everything": lambda: augment(image, target, weights, rng, EVERYTHING),
    }
    load = os.getloadavg()[0]
    for run in candidates.values():  # warm-up (torch's first grid_sample allocates)
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):  # interleaved, so a busy neighbour slows all candidates alike
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}

    result = {
        "benchmark": "augment",
        "quick": args.quick,
        "shape": list(SHAPE),
        "reference": reference_name,
        "median_s": medians,
        "runs_s": times,
        "speedup_elastic_only": medians["reference"] / medians["augment_elastic_only"],
        "speedup_everything": medians["reference"] / medians["augment_everything"],
        "goal_speedup": 3.0,
        "everything": dataclasses.asdict(EVERYTHING),
        "load_average_before": load,
        "load_average_after": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    write_results(RESULTS, result)
    print(
        f"augmentation per {SHAPE[0]}x{SHAPE[1]} sample (image + target + weights), median of {repeats}, "
        f"load average {load:.2f} -> {result['load_average_after']:.2f}, torch threads {torch.get_num_threads()}"
    )
    print(f"  reference ({reference_name}, elastic only): {medians['reference'] * 1e3:7.1f} ms")
    print(
        f"  augment, elastic only                  : {medians['augment_elastic_only'] * 1e3:7.1f} ms "
        f"({result['speedup_elastic_only']:.1f}x, goal >= 3x)"
    )
    print(
        f"  augment, elastic+rotation+shift+flip+gray: {medians['augment_everything'] * 1e3:7.1f} ms "
        f"({result['speedup_everything']:.1f}x)"
    )
    print(f"  -> {RESULTS}")


if __name__ == "__main__":
    main()
