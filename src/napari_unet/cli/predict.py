"""`napari-unet predict`: segment image files plane by plane with a saved model (`pipeline.segment_file`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ._args import (
    EXIT_OK,
    add_command,
    add_device,
    add_diameter,
    add_quiet,
    non_negative_int,
    positive_int,
    probability,
)
from .progress import Progress, describe, duration, note, note_shadowed


def add_parser(subparsers) -> None:
    sub = add_command(
        subparsers, "predict", "Segment images with a trained model.",
        "Writes OUT/<name>_labels.tif (int32 instance ids, 0 = background) for each input, and with "
        "--probabilities OUT/<name>_probs.tif (float32 foreground probability). INPUT: files (TIFF, PNG, JPEG, "
        ".zarr) or folders of them. Stacks and time series are segmented plane by plane (ids restart in each "
        "plane); large images are read and written through memory maps, one plane at a time.",
        "  napari-unet predict nuclei data/new --out results\n"
        "  napari-unet predict nuclei big_nuclei.tif --out results --diameter 45\n"
        "  napari-unet predict cells.model movie.tif --out results --probabilities --tta",
        run,
    )
    sub.add_argument("model", help="model folder, or the name of a built-in model ('napari-unet models'; a local "
                     "model folder of the same name wins, builtin:NAME always means the built-in)")
    sub.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="image file or folder")
    sub.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the results")
    sub.add_argument("--probabilities", action="store_true", help="also write the foreground probability")
    sub.add_argument("--tta", action="store_true",
                     help="test-time augmentation: mean over the 8 flips and rotations (8x slower)")
    sub.add_argument("--tile-size", type=positive_int, metavar="N",
                     help="output side of a tile (default: the largest that fits in memory)")
    sub.add_argument("--batch-size", type=positive_int, default=1, metavar="N", help="tiles per forward pass")
    add_diameter(sub)
    sub.add_argument("--axes", metavar="AXES", help="axes of the inputs as stored, e.g. YXC, TYX (default: read "
                     "from the file's metadata or guessed)")
    post = sub.add_argument_group("post-processing (the model's saved settings by default)")
    post.add_argument("--threshold", type=probability, metavar="T", help="foreground where probability > T")
    post.add_argument("--min-size", type=non_negative_int, metavar="N", help="remove objects under N pixels")
    post.add_argument("--watershed", action=argparse.BooleanOptionalAction, default=None,
                      help="split merged cells with a distance-transform watershed")
    post.add_argument("--grow-threshold", type=probability, metavar="G",
                      help="objects grow into the neighbouring pixels with probability > G (a value >= the "
                      "threshold turns this off)")
    add_device(sub)
    add_quiet(sub)


def run(args: argparse.Namespace) -> int:
    from ..device import select_device
    from ..modelfile import load_model
    from ..pipeline import count_planes, list_files, output_paths, read_input, segment_file, with_overrides

    bundle = load_model(args.model)
    note_shadowed(args.model, args.quiet)
    postprocess = with_overrides(bundle.postprocess, threshold=args.threshold, min_size=args.min_size,
                                 watershed=args.watershed, grow_threshold=args.grow_threshold)
    device = select_device(args.device)
    files = [f for path in args.inputs for f in list_files(path, "input image", zarr=True)]
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder")
    outputs = [output_paths(f, args.out, args.probabilities) for f in files]
    seen: dict[Path, Path] = {}
    for path, out in zip(files, outputs):
        if out.labels in seen:
            raise ValueError(f"{seen[out.labels]} and {path} would both be written to {out.labels}: rename one")
        seen[out.labels] = path
    note(f"segmenting {len(files)} image(s) on {describe(device)}" + (" with 8x test-time augmentation"
         if args.tta else ""), args.quiet)
    started, planes, objects = time.perf_counter(), 0, 0
    with Progress(len(files), "predicting", "image", args.quiet) as bar:
        for path, out in zip(files, outputs):
            image, axes = read_input(path, args.axes)
            n = count_planes(image, axes)
            found = 0
            size = ""
            for done in segment_file(bundle, image, axes, out, postprocess=postprocess, tile_size=args.tile_size,
                                     device=device, batch_size=args.batch_size, tta=args.tta,
                                     diameter=args.diameter):
                found += done.objects
                size = object_size(done.diameter, args.diameter, bundle.object_diameter)
                bar.update(int(done.index + 1 == n), file=path.name, plane=f"{done.index + 1}/{n}")
            bar.write(f"{path.name}: {found} objects in {n} plane(s){size} -> {out.labels}")
            planes, objects = planes + n, objects + found
            del image
    print(f"segmented {len(files)} image(s) ({planes} plane(s), {objects} objects) in "
          f"{duration(time.perf_counter() - started)}; results in {args.out}")
    return EXIT_OK


def object_size(used: float | None, asked: float | str, model: float | None) -> str:
    """How the file was scaled, for its summary line: " (objects ~23.4 px, estimated; rescaled x0.85)"."""
    if used is None or model is None:
        return ""
    how = "estimated" if asked == "auto" else "given"
    scale = f"rescaled x{model / used:.3g}" if abs(model / used - 1) > 1e-9 else "not rescaled"
    return f" (objects ~{used:.1f} px, {how}; {scale})"
