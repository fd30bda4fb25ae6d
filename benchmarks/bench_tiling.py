"""Tiled inference: overhead against the bare network, achieved GFLOP/s against a 3x3-conv peak, peak memory.

    .venv/bin/python benchmarks/bench_tiling.py [--quick] [--out benchmarks/results/tiling.json]

Figures (each a ratio against a reference measured in this run):
- throughput of `predict_tiled` on a 2048x2048 image / throughput of the bare model run repeatedly on one
  tile of the same size (output megapixels per second; goal >= 0.9);
- GFLOP/s of the bare tile / GFLOP/s of a 64->64 3x3 convolution at 512x512 (channels_last, the CPU's
  practical peak; goal >= 0.8), and / GFLOP/s of the network's own convolution layers each timed alone
  (what the net could reach if ReLU, pooling, crop and concatenation were free);
- output throughput for several tile sizes (why the CPU default caps tiles at 1024 px);
- peak RSS of a subprocess predicting an 8192x8192 memory-mapped TIFF into a zarr array (goal < 2 GB),
  against the RSS of the same process before predicting.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import write_results  # benchmarks/ is on sys.path when run as a script

from napari_unet.model import UNet
from napari_unet.tiling import predict_tiled, prepare_model, tile_grid

RESULTS = Path(__file__).parent / "results"


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv_peak(repeats: int) -> float:
    """GFLOP/s of a 64->64 3x3 convolution over a 512x512 map, channels_last, inference mode."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(1, 64, 512, 512).contiguous(memory_format=torch.channels_last)
    flops = 2 * 512 * 512 * 64 * 64 * 9
    with torch.inference_mode():
        seconds = median_time(lambda: conv(x), repeats)
    return flops / seconds / 1e9


def layer_peak(model: UNet, window: int, repeats: int) -> float:
    """GFLOP/s of this network's own convolutions, each timed alone on its input shape: the net's ceiling."""
    shapes: list[tuple[torch.nn.Module, tuple[int, ...]]] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: shapes.append((mod, tuple(inp[0].shape))))
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
    ]
    prepare_model(model, torch.device("cpu"))
    with torch.inference_mode():
        model(torch.zeros(1, model.config.in_channels, window, window).contiguous(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()
    seconds = 0.0
    with torch.inference_mode():
        for module, shape in shapes:
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            seconds += median_time(lambda module=module, x=x: module(x), repeats)
    return model.flops((window, window)) / seconds / 1e9


def bare_tile(model: UNet, window: int, repeats: int) -> tuple[float, int]:
    """Seconds per forward pass of one (window x window) tile, and its output side."""
    prepare_model(model, torch.device("cpu"))
    x = torch.randn(1, model.config.in_channels, window, window).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = median_time(lambda: model(x), repeats)
    return seconds, model.output_shape((window, window))[0]


def overhead(base_channels: int, size: int, stride: int, repeats: int) -> dict:
    """Tiled vs bare throughput, interleaved: each repeat times one tiled prediction of the whole image and the
    bare net on one tile as many times as there are tiles, so both see the same load (ratio of medians)."""
    torch.manual_seed(0)
    model = UNet(base_channels=base_channels)
    grid = tile_grid(model, (size, size), stride)
    prepare_model(model, torch.device("cpu"))
    out_side = model.output_shape(grid.window)[0]
    x = torch.randn(1, 1, *grid.window).contiguous(memory_format=torch.channels_last)
    image = np.random.default_rng(0).random((size, size)).astype(np.float32)

    def bare() -> None:
        with torch.inference_mode():
            for _ in range(len(grid)):
                model(x)

    def tiled() -> None:
        predict_tiled(model, image, stride, device="cpu")

    bare(), tiled()  # warm-up
    bare_times, tiled_times = [], []
    for _ in range(repeats):
        for fn, times in ((bare, bare_times), (tiled, tiled_times)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    tile_seconds = statistics.median(bare_times) / len(grid)
    tiled_seconds = statistics.median(tiled_times)
    bare_rate = out_side**2 / tile_seconds / 1e6
    tiled_rate = size**2 / tiled_seconds / 1e6
    return {
        "base_channels": base_channels,
        "image": size,
        "tile_window": grid.window[0],
        "tile_output_kept": grid.stride[0],
        "tiles": len(grid),
        "repeats_interleaved": repeats,
        "bare_tile_seconds": tile_seconds,
        "bare_megapixels_per_s": bare_rate,
        "tiled_seconds": tiled_seconds,
        "tiled_megapixels_per_s": tiled_rate,
        "tiled_over_bare": tiled_rate / bare_rate,
        "tile_gflops": model.flops(grid.window) / tile_seconds / 1e9,
        "own_layers_gflops": layer_peak(model, grid.window[0], repeats),
    }


def tile_sizes(base_channels: int, strides: list[int], repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = UNet(base_channels=base_channels)
    rows = []
    for stride in strides:
        window = tile_grid(model, (stride, stride), stride).window[0]
        seconds, out_side = bare_tile(model, window, repeats)
        rows.append({"stride": stride, "window": window, "megapixels_per_s": stride**2 / seconds / 1e6})
    return rows


MEMORY_SCRIPT = r"""
import sys, numpy as np, tifffile, torch, zarr

def high_water_mark():  # VmHWM: peak RSS of this process image (ru_maxrss would include the parent's, kept over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

from napari_unet.model import UNet
from napari_unet.tiling import predict_tiled
path, size, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
image = tifffile.memmap(path)
torch.manual_seed(0)
model = UNet(base_channels=base)
before = high_water_mark()
out = zarr.open_array(path + ".zarr", mode="w", shape=(2, size, size), chunks=(2, 1024, 1024), dtype="f4")
predict_tiled(model, image, device="cpu", out=out)
after = high_water_mark()
print(before, after, float(out[1, size // 2, size // 2]))
"""


def peak_memory(size: int, base_channels: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        import tifffile

        path = str(Path(folder) / "big.tif")
        data = tifffile.memmap(path, shape=(size, size), dtype=np.uint8)
        data[:] = np.random.default_rng(0).integers(0, 255, (size, size), dtype=np.uint8)
        data.flush()
        del data
        start = time.perf_counter()
        output = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, path, str(size), str(base_channels)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        seconds = time.perf_counter() - start
    before, after = int(output[0]), int(output[1])
    return {
        "image": size,
        "base_channels": base_channels,
        "input_bytes": size * size,
        "output_bytes_zarr": 2 * 4 * size * size,
        "rss_before_predict_bytes": before,
        "peak_rss_bytes": after,
        "peak_rss_over_output_size": after / (2 * 4 * size * size),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller images and fewer repeats")
    parser.add_argument("--out", type=Path, default=RESULTS / "tiling.json")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    size = 1024 if args.quick else 2048
    peak = conv_peak(repeats)
    print(f"3x3 conv peak (64->64, 512^2, channels_last): {peak:.1f} GFLOP/s")
    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "conv_peak_gflops": peak}
    results["overhead"] = []
    for base in (16, 64):
        row = overhead(base, size, 516, repeats if base == 16 else 2)
        row["gflops_over_conv_peak"] = row["tile_gflops"] / peak
        row["gflops_over_own_layers"] = row["tile_gflops"] / row["own_layers_gflops"]
        results["overhead"].append(row)
        print(
            f"{base:2d}-channel net, {size}^2 image, {row['tiles']} tiles of {row['tile_window']} px: "
            f"tiled {row['tiled_megapixels_per_s']:.3f} MP/s vs bare tile {row['bare_megapixels_per_s']:.3f} MP/s "
            f"= {row['tiled_over_bare']:.3f}x; tile {row['tile_gflops']:.1f} GFLOP/s "
            f"= {row['gflops_over_conv_peak']:.2f} of the 64->64 conv peak, "
            f"{row['gflops_over_own_layers']:.2f} of its own convolutions timed alone"
        )
    results["tile_sizes"] = tile_sizes(
        16, [128, 256, 512, 1024] if args.quick else [128, 256, 512, 1024, 1536], repeats
    )
    best = max(r["megapixels_per_s"] for r in results["tile_sizes"])
    for row in results["tile_sizes"]:
        row["relative_to_best"] = row["megapixels_per_s"] / best
        print(
            f"  stride {row['stride']:5d} (window {row['window']}): {row['megapixels_per_s']:.3f} MP/s "
            f"= {row['relative_to_best']:.2f} of the best"
        )
    memory = peak_memory(2048 if args.quick else 8192, 16)
    results["memory"] = memory
    print(
        f"{memory['image']}^2 memory-mapped uint8 TIFF -> zarr: peak RSS {memory['peak_rss_bytes'] / 2**30:.2f} GiB "
        f"({memory['peak_rss_over_output_size']:.2f}x the float32 output it wrote; "
        f"{memory['rss_before_predict_bytes'] / 2**30:.2f} GiB before predicting), {memory['seconds']:.0f} s"
    )
    write_results(args.out, results)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
