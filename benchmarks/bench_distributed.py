"""Segmentation on dask.distributed: equality with the single process, memory per worker, 2 workers vs 1.

    PYTHONPATH=src nice -n 5 .venv/bin/python benchmarks/bench_distributed.py [--quick]
        [--equal-size 4096] [--big-size 16384] [--series 4096,8192] [--block 1024]
        [--parts equality,killed,large] [--out benchmarks/results/distributed.json]

Figures:
- equality: a synthetic `--equal-size`² zarr in blocks of `--block` on 2 local workers (one torch thread each)
  against the single-process `predict_tiled` + `probs_to_labels` with one torch thread: the foreground
  probabilities compared bit for bit (max |difference|), the labels up to renumbering (objects, pixels that
  differ after matching), objects crossing block borders, objects cut by a block's margin;
- throughput: the same image segmented by 1 worker then 2 workers (one torch thread each; the cluster's start
  not counted), as a ratio, with the single process as the reference;
- killed worker: the `--equal-size`² image in blocks of `--block` / 2 (64 blocks at the defaults) on 2 workers,
  one of them killed (SIGKILL) after a quarter of the tasks: the output complete and equal to the undisturbed
  run's (probabilities bit for bit, labels identical: ids are the objects' anchors, whatever the blocks);
- large image: a `--big-size`² zarr on 2 local workers, megapixels per second and the peak RSS of each worker
  process (goal < 1.5 GB); the same at the `--series` sizes, to show how the peak scales with the image.
Peak RSS of a worker is its own (`distributed.peak_rss`: VmHWM), not `ru_maxrss`: a LocalCluster's workers are
started by the benchmark's own process, and on Linux ru_maxrss survives exec, so a worker's ru_maxrss starts at
the benchmark process's peak (the single-process reference, the equality checks). Both are recorded.
The networks are untrained and small (stated in the JSON): the figures are about the machinery, not the model.
The foreground threshold is the 90th percentile of the probabilities, so objects are cell-sized blobs.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, write_results  # benchmarks/ is on sys.path when run as a script

from napari_unet import distributed as dist
from napari_unet.model import UNet, UNetConfig
from napari_unet.modelfile import ModelBundle
from napari_unet.pipeline import read_input
from napari_unet.postprocess import PostprocessConfig, probs_to_labels
from napari_unet.synthetic import make_cells

RESULTS = Path(__file__).parent / "results"
MARGIN = 128


def write_zarr(path: Path, size: int, block: int) -> None:
    """A size x size uint16 OME-Zarr of synthetic cells, written block by block: a 1024² sample repeated, shifted
    by half a sample so that its seams (where it has no cells) do not fall on block borders."""
    sample = np.roll((make_cells((1024, 1024), seed=1)[0] * 1000).astype(np.uint16), (512, 512), axis=(0, 1))
    array = dist.create_ome_zarr(
        path,
        (size, size),
        np.uint16,
        (block, block),
        dist.ngff_attributes(path.stem, "YX", (0.65, 0.65), "micrometer", False),
    )["0"]
    for y in range(0, size, block):
        for x in range(0, size, block):
            h, w = min(block, size - y), min(block, size - x)
            reps = (-(-(y % 1024 + h) // 1024), -(-(x % 1024 + w) // 1024))
            array[y : y + h, x : x + w] = np.tile(sample, reps)[y % 1024 : y % 1024 + h, x % 1024 : x % 1024 + w]


def with_threshold(net: UNet, image_path: Path) -> ModelBundle:
    """The bundle with the 90th percentile of the probabilities of a 1024² crop as threshold."""
    bundle = ModelBundle(net)
    image, _ = read_input(image_path)
    crop = np.asarray(image[:1024, :1024])
    probs = bundle.predict(crop, device="cpu")[1]
    return ModelBundle(net, postprocess=PostprocessConfig(threshold=float(np.quantile(probs, 0.9))))


def distributed_run(bundle, image_path: Path, out: Path, workers: int, block: int, warmup: Path) -> dict:
    """Segment on `workers` local processes (one torch thread each); seconds and peak RSS per worker.

    The workers first segment the small image `warmup` (imports, model build, first forward pass), not timed.
    """
    shutil.rmtree(out, ignore_errors=True)
    with dist.connect(workers=workers, torch_threads=1) as client:
        for _ in dist.segment_batch(
            client, bundle, [warmup], out.with_name(out.name + "_warmup"), block_size=128, margin=MARGIN, device="cpu"
        ):
            pass
        cpu_before = client.run(cpu_seconds)
        start = time.perf_counter()
        events = list(
            dist.segment_batch(
                client, bundle, [image_path], out, block_size=block, margin=MARGIN, device="cpu", probabilities=True
            )
        )
        elapsed = time.perf_counter() - start
        cpu = sum(after - cpu_before.get(worker, 0.0) for worker, after in client.run(cpu_seconds).items())
        rss = client.run(dist.peak_rss)
        inherited = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        builds = client.run(dist.worker_model_builds)
    return {
        "seconds": elapsed,
        "worker_cpu_seconds": cpu,
        "events": len(events),
        "cut_objects": sum(e.cut_objects for e in events),
        "peak_rss_bytes_per_worker": sorted(rss.values()),
        "ru_maxrss_bytes_per_worker": sorted(inherited.values()),
        "ru_maxrss_note": "not the worker's: starts at the benchmark process's peak when the worker was started",
        "benchmark_process_peak_rss_bytes": dist.peak_rss(),
        "model_builds_per_worker": sorted(len(b) for b in builds.values()),
        "note": "model builds include the warm-up run's (same model: still one per worker)",
    }


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def renumbering_check(labels: np.ndarray, reference: np.ndarray) -> dict:
    """Objects on both sides and pixels that differ after matching each object to the one it overlaps most."""
    pairs, counts = np.unique(
        np.stack([labels.ravel().astype(np.int64), reference.ravel().astype(np.int64)]), axis=1, return_counts=True
    )
    best = {}
    for (a, b), n in zip(pairs.T.tolist(), counts.tolist()):
        if a not in best or n > best[a][1]:
            best[a] = (b, n)
    matched = sum(n for _, n in best.values())
    return {
        "objects": int(len(np.unique(labels)) - 1),
        "reference_objects": int(reference.max()),
        "pairs": int(pairs.shape[1]),
        "pixels_differing": int(labels.size - matched),
        "equal_up_to_renumbering": bool(pairs.shape[1] == len(np.unique(pairs[0])) == len(np.unique(pairs[1]))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1024² and 2048² instead of 4096² and 16384²")
    parser.add_argument("--equal-size", type=int, default=4096)
    parser.add_argument("--big-size", type=int, default=16384)
    parser.add_argument("--series", default="4096,8192", help="smaller sizes for the peak memory per worker")
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument(
        "--parts", default="equality,killed,large", help="what to run: equality (and throughput), killed, large"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "distributed.json")
    args = parser.parse_args()
    if args.quick:
        args.equal_size, args.big_size, args.series, args.block = 1024, 2048, "1024", 512
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    result: dict = {"machine": machine(load), "block": args.block, "margin": MARGIN}
    samples, stop = [], threading.Event()
    sampler = threading.Thread(target=sample_load, args=(samples, stop), daemon=True)
    sampler.start()
    try:
        warmup = work / "warmup.zarr"
        write_zarr(warmup, 1024, 512)
        if "equality" in args.parts or "killed" in args.parts:
            result |= equality_and_throughput(args, work, warmup)
        if "large" in args.parts:
            result["large"] = large_image(args, work, warmup, args.big_size)
            result["peak_rss_by_size"] = {
                size: max(large_image(args, work, warmup, size)["peak_rss_bytes_per_worker"])
                for size in map(int, filter(None, args.series.split(",")))
            } | {args.big_size: max(result["large"]["peak_rss_bytes_per_worker"])}
    finally:
        stop.set()
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["load_average_after"] = os.getloadavg()[0]
    result["machine"]["load_average_during"] = {
        "min": min(samples, default=load),
        "median": statistics.median(samples or [load]),
        "max": max(samples, default=load),
        "note": "1-minute load average every 10 s on the shared machine (its other users' work included)",
    }
    write_results(args.out, result)
    print(f"wrote {args.out}")


def sample_load(samples: list[float], stop: threading.Event) -> None:
    """Append the 1-minute load average to `samples` every 10 s until `stop` is set."""
    while not stop.wait(10):
        samples.append(os.getloadavg()[0])


def equality_and_throughput(args, work: Path, warmup: Path) -> dict:
    """The `--equal-size`² image: single process against 1 and 2 workers."""
    result = {}
    torch.manual_seed(0)
    equal_net = UNetConfig(depth=2, base_channels=4)
    image_path = work / "equal.zarr"
    write_zarr(image_path, args.equal_size, args.block)
    bundle = with_threshold(UNet(equal_net), image_path)
    torch.set_num_threads(1)
    image, _ = read_input(image_path)
    start = time.perf_counter()
    probs = bundle.predict(image, device="cpu")[1]
    reference = probs_to_labels(probs, bundle.postprocess)
    single = time.perf_counter() - start
    counts = (1, 2) if "equality" in args.parts else (2,)
    runs = {n: distributed_run(bundle, image_path, work / f"out{n}", n, args.block, warmup) for n in counts}
    import zarr

    got_probs = zarr.open_group(str(work / "out2" / "equal_probs.ome.zarr"), mode="r")["0"][:]
    got_labels = zarr.open_group(str(work / "out2" / "equal_labels.ome.zarr"), mode="r")["0"][:]
    b = args.block
    crossing = np.union1d(
        np.intersect1d(reference[b - 1 : -1 : b], reference[b::b]),
        np.intersect1d(reference[:, b - 1 : -1 : b], reference[:, b::b]),
    )
    crossing = crossing[crossing > 0]
    result["equality"] = {
        "size": args.equal_size,
        "network": equal_net.to_dict(),
        "threshold": bundle.postprocess.threshold,
        "probs_bit_equal": bool(np.array_equal(got_probs, probs)),
        "probs_max_abs_difference": float(np.abs(got_probs - probs).max()),
        "labels": renumbering_check(got_labels, reference),
        "objects_touching_block_borders": int(crossing.size),
        "cut_objects": runs[2]["cut_objects"],
    }
    if 1 in runs:
        result["throughput"] = {
            "size": args.equal_size,
            "single_process_seconds": single,
            "one_worker": runs[1],
            "two_workers": runs[2],
            "two_vs_one_workers": runs[1]["seconds"] / runs[2]["seconds"],
            "two_vs_one_workers_note": (
                "wall-clock ratio; on a loaded machine it also measures CPU share (2 processes get a larger share "
                "of the cores than 1): worker_cpu_seconds says how much work each run did"
            ),
            "two_workers_vs_single_process": single / runs[2]["seconds"],
        }
        print("throughput", {k: v for k, v in result["throughput"].items() if "worker" not in k or "vs" in k})
    print("equality", result["equality"])
    if "killed" in args.parts:
        result["killed_worker"] = killed_worker(bundle, image_path, work, args.block // 2, got_probs, got_labels)
        print("killed worker", result["killed_worker"])
    shutil.rmtree(work / "out1", ignore_errors=True)
    shutil.rmtree(work / "out2", ignore_errors=True)
    return result


def killed_worker(bundle, image_path: Path, work: Path, block: int, probs: np.ndarray, labels: np.ndarray) -> dict:
    """The image on 2 workers in blocks of `block`, one worker killed (SIGKILL) after a quarter of the tasks;
    its output against the undisturbed run's (`probs`, `labels`)."""
    import zarr

    out = work / "outkilled"
    with dist.connect(workers=2, torch_threads=1) as client:
        start = time.perf_counter()
        events, killed_at = [], None
        for event in dist.segment_batch(
            client, bundle, [image_path], out, block_size=block, margin=MARGIN, device="cpu", probabilities=True
        ):
            events.append(event)
            if killed_at is None and event.done >= event.total // 4:
                os.kill(next(iter(client.run(os.getpid).values())), signal.SIGKILL)
                killed_at = event.done
        elapsed = time.perf_counter() - start
    complete = dist.is_complete(out / "equal_labels.ome.zarr")
    got_probs = zarr.open_group(str(out / "equal_probs.ome.zarr"), mode="r")["0"][:]
    got_labels = zarr.open_group(str(out / "equal_labels.ome.zarr"), mode="r")["0"][:]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "block": block,
        "blocks": len(events) // 2,
        "tasks": events[-1].total,
        "killed_after_tasks": killed_at,
        "events": len(events),
        "complete": complete and len(events) == events[-1].total,
        "probs_bit_equal_to_undisturbed": bool(np.array_equal(got_probs, probs)),
        "labels_identical_to_undisturbed": bool(np.array_equal(got_labels, labels)),
        "cut_objects": sum(e.cut_objects for e in events),
        "seconds": elapsed,
    }


def large_image(args, work: Path, warmup: Path, size: int) -> dict:
    """A `size`² zarr on 2 workers: throughput and peak memory per worker."""
    big_net = UNetConfig(depth=2, base_channels=4)
    big_path = work / "big.zarr"
    shutil.rmtree(big_path, ignore_errors=True)
    start = time.perf_counter()
    write_zarr(big_path, size, args.block)
    written = time.perf_counter() - start
    torch.manual_seed(1)
    big_bundle = with_threshold(UNet(big_net), big_path)
    run = distributed_run(big_bundle, big_path, work / "outbig", 2, args.block, warmup)
    shutil.rmtree(work / "outbig", ignore_errors=True)
    result = {
        "size": size,
        "network": big_net.to_dict(),
        "workers": 2,
        "seconds_writing_input": written,
        **run,
        "megapixels_per_second": size**2 / 1e6 / run["seconds"],
        "peak_rss_gb_max": max(run["peak_rss_bytes_per_worker"]) / 1e9,
        "goal_peak_rss_gb": 1.5,
    }
    print("large", result)
    return result


if __name__ == "__main__":
    main()
