"""`napari-unet measure` (a table of per-object measurements) and `napari-unet rois` (labels <-> ImageJ ROIs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._args import EXIT_OK, add_command, add_overwrite, add_quiet, positive_float
from .progress import note, warn_unmatched


def add_parser(subparsers) -> None:
    sub = add_command(
        subparsers,
        "measure",
        "Measure every object of label images and write one CSV table.",
        "One row per object (and per plane of a stack, named by its plane, t and z): label, area, centroid, "
        "bounding box, perimeter, eccentricity, solidity in pixels; with IMAGES the mean/min/max intensity (per "
        "channel); with a pixel size (read from the OME-TIFF, ImageJ or TIFF resolution metadata of the image or "
        "labels file, or given with --pixel-size) area, centroid and perimeter in physical units. LABELS and "
        "IMAGES are files or folders paired by base name (a '_labels' suffix is tolerated). The 'not annotated' "
        "value (-1, or 65535 in uint16) is background. The columns: docs/formats.md.",
        "  napari-unet measure results data/new --out table.csv\n"
        "  napari-unet measure cells_labels.tif cells.tif --out cells.csv --pixel-size 0.65",
        run,
    )
    sub.add_argument("labels", type=Path, help="label image file or folder")
    sub.add_argument("images", type=Path, nargs="?", help="image file or folder for the intensities (optional)")
    sub.add_argument("--out", type=Path, required=True, metavar="CSV", help="table to write")
    add_pixel_size(sub)
    add_overwrite(sub)
    add_quiet(sub)

    sub = add_command(
        subparsers,
        "rois",
        "Convert labels to an ImageJ/Fiji ROI zip, or an ROI zip back to labels.",
        "A label image (TIFF, PNG) becomes a .zip of polygon ROIs, one per object, named by its label id, that "
        "Fiji's ROI Manager opens (stack planes are the ROIs' positions). A .zip or .roi file becomes an int32 "
        "label TIFF (int64 or uint64 when the ROIs' ids need it); --like gives the image whose size (and planes) "
        "the labels take, and its pixel size, Z step and frame interval (from labels, --like is only checked to "
        "have their size: ROIs hold no calibration). The 'not annotated' value (-1, or 65535 in uint16) is "
        "background. Polygons cannot hold holes, and of an object in several pieces only the largest is kept.",
        "  napari-unet rois results/cells_labels.tif --out cells_rois.zip\n"
        "  napari-unet rois RoiSet.zip --like cells.tif --out cells_labels.tif",
        run,
    )
    sub.add_argument("input", type=Path, help="label image, or ImageJ ROI .zip/.roi file")
    sub.add_argument("--out", type=Path, required=True, metavar="FILE", help=".zip (from labels) or .tif (from ROIs)")
    sub.add_argument(
        "--like",
        type=Path,
        metavar="IMAGE",
        help="from ROIs: the image whose height, width, planes and calibration (pixel size, Z step, frame "
        "interval) the labels take; from labels (optional): checked to have the labels' size",
    )
    add_overwrite(sub)
    add_quiet(sub)


def run(args: argparse.Namespace) -> int:
    return {"measure": run_measure, "rois": run_rois}[args.command](args)


def check_output(out: Path, inputs: list[Path], overwrite: bool, suffixes: tuple[str, ...], kind: str) -> None:
    """Before any work: --out is none of the inputs, replaces an existing file only with --overwrite, ends in one
    of `suffixes` (the format written, `kind` in words), and its folder can be written."""
    from ..validation import check_output_free, check_output_not_input, check_writable_folder

    check_output_not_input([out], inputs)
    if out.is_dir():  # before check_output_free, which would suggest --overwrite for it
        raise ValueError(f"--out {out} is a folder: {kind} is written as a {suffixes[0]} file; choose a file name")
    check_output_free(out, overwrite)
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"--out {out.name}: {kind} is written as a {suffixes[0]} file: name it {suffixes[0]}")
    check_writable_folder(out.parent, f"--out {out}")


def file_instance_labels(labels, axes: str, path: Path, quiet: bool):
    """`labels` (a label image or stack, as read) as instance ids (`measure.instance_labels`, decided for the
    whole file), with a note when the file is a binary mask, naming it. Channels are left to the callers' checks,
    which explain them."""
    from ..measure import MASK_NOTE, instance_labels

    if "C" in axes:
        return labels
    labels, was_mask = instance_labels(labels, f"the labels file {path.name}")
    if was_mask:
        note(f"note: {path.name} {MASK_NOTE}", quiet)
    return labels


def add_pixel_size(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--pixel-size",
        type=positive_float,
        nargs="+",
        metavar="SIZE",
        help="pixel size (one value, or Y X) overriding the files' metadata",
    )
    sub.add_argument("--unit", default="um", help="length unit of --pixel-size")


def pixel_size_option(args: argparse.Namespace):
    """The `PixelSize` given on the command line, or None."""
    from ..metadata import PixelSize

    if not args.pixel_size:
        return None
    if len(args.pixel_size) > 2:
        raise ValueError(f"--pixel-size takes one value or two (Y X), got {len(args.pixel_size)}")
    y, x = args.pixel_size if len(args.pixel_size) == 2 else args.pixel_size * 2
    return PixelSize(y, x, args.unit)


def run_measure(args: argparse.Namespace) -> int:
    from ..io import read_image, read_label_image
    from ..measure import measure_planes, write_csv
    from ..metadata import read_pixel_size
    from ..pipeline import base_name, list_files, match_files

    labels_files = list_files(args.labels, "label")
    if Path(args.labels).is_dir():  # a `predict --probabilities` results folder: its probability maps are not labels
        probability_maps = [path for path in labels_files if path.stem.endswith("_probs")]
        labels_files = [path for path in labels_files if path not in probability_maps]
        if probability_maps:
            note(f"skipped {len(probability_maps)} probability map(s) (*_probs) in {args.labels}", args.quiet)
        if not labels_files:
            raise ValueError(f"no label files in {args.labels}: only probability maps (*_probs)")
    if args.images is None:
        pairs = [(path, None) for path in labels_files]
    else:
        match = match_files(
            labels_files, list_files(args.images, "image", annotations=False), ("labels", "images"), prefer="_labels"
        )
        warn_unmatched(match, ("label files without an image", "images without labels"), args.quiet)
        pairs = match.pairs
    inputs = [path for pair in pairs for path in pair if path is not None]
    check_output(args.out, inputs, args.overwrite, (".csv",), "the table")
    given = pixel_size_option(args)
    tables = []
    for labels_path, image_path in pairs:
        labels, axes = read_label_image(labels_path)
        labels = file_instance_labels(labels, axes, labels_path, args.quiet)
        image, image_axes = read_image(image_path) if image_path is not None else (None, None)
        pixel_size = given or (read_pixel_size(image_path) if image_path else None) or read_pixel_size(labels_path)
        name = base_name(image_path or labels_path)
        try:
            planes = measure_planes(labels, axes, image, image_axes, pixel_size)
        except ValueError as error:
            raise ValueError(f"{labels_path.name}: {error}") from None
        tables.extend(({"image": name, **extra}, table) for extra, table in planes)
    path = write_csv(tables, args.out)
    count = sum(len(table["label"]) for _, table in tables)
    units = sorted({n.split("_")[-1] for _, t in tables for n in t if n.startswith("centroid_y_")})
    print(
        f"measured {count} objects in {len(pairs)} image(s)"
        + (f" (physical units: {', '.join(units)})" if units else " (pixel units: no pixel size found)")
        + f" -> {path}"
    )
    return EXIT_OK


def run_rois(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io import read_image, read_label_image, write_tiff
    from ..metadata import read_pixel_size, read_spacing
    from ..roi import read_rois, write_rois

    inputs = [args.input] + ([args.like] if args.like is not None else [])
    for path, what in ((args.input, "a label image or an ROI file"), (args.like, "--like IMAGE")):
        if path is not None and path.is_dir():
            raise ValueError(f"{path} is a folder: rois takes one file as {what}")
    from_rois = args.input.suffix.lower() in (".zip", ".roi")
    if from_rois and args.like is None:
        raise ValueError("converting ROIs to labels needs --like IMAGE (the image the ROIs were drawn on)")
    suffixes, kind = ((".tif", ".tiff"), "labels from ROIs") if from_rois else ((".zip",), "an ImageJ ROI set")
    check_output(args.out, inputs, args.overwrite, suffixes, kind)
    if from_rois:
        image, axes = read_image(args.like)
        spatial_axes = axes.replace("C", "")
        shape = tuple(n for n, a in zip(image.shape, axes) if a != "C")
        if len(shape) > 3:
            raise ValueError(f"--like {args.like} has axes {axes}: ROIs map to one plane or one stack (ZYX or TYX)")
        labels = read_rois(args.input, shape)
        pixel_size = read_pixel_size(args.like)
        write_tiff(args.out, labels, spatial_axes, pixel_size=pixel_size, spacing=read_spacing(args.like, pixel_size))
        print(f"{int(np.count_nonzero(np.unique(labels)))} objects -> {args.out}")
        return EXIT_OK
    labels, axes = read_label_image(args.input)
    if "C" in axes or len(axes) > 3:
        raise ValueError(f"{args.input} has axes {axes}: expected a label image (YX) or stack (ZYX or TYX)")
    if args.like is not None:
        check_same_size(labels, axes, args.input, args.like)
    labels = file_instance_labels(labels, axes, args.input, args.quiet)
    count = write_rois(args.out, labels)
    note(f"open {args.out.name} in Fiji with File > Open (or the ROI Manager's More > Open)", args.quiet)
    print(f"{count} ROIs -> {args.out}")
    return EXIT_OK


def check_same_size(labels, axes: str, path: Path, like: Path) -> None:
    """From labels to ROIs, --like only checks that the ROIs fit the image (ImageJ ROIs hold no calibration):
    the labels must have its height, width and planes."""
    from ..io import read_image

    image, image_axes = read_image(like)
    shape = tuple(n for n, a in zip(image.shape, image_axes) if a != "C")
    if image_axes.replace("C", "") != axes or shape != tuple(labels.shape):
        labels_size, image_size = describe_size(labels.shape, axes), describe_size(shape, image_axes)
        raise ValueError(
            f"{path.name} is {labels_size} but --like {like.name} is {image_size}: the ROIs would not fit the "
            "image; give the image the labels were made from, or no --like (from labels, it is only checked)"
        )


def describe_size(shape: tuple[int, ...], axes: str) -> str:
    """'64 x 64', or '64 x 64 (Z 5)' for a stack: height x width, and the plane axis with its length."""
    spatial = [(a, n) for n, a in zip(shape, axes) if a != "C"]
    planes = "".join(f" ({a} {n})" for a, n in spatial[:-2])
    return f"{spatial[-2][1]} x {spatial[-1][1]}{planes}"
