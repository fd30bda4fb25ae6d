"""`napari-unet predict`: segment image files plane by plane with a saved model (`pipeline.segment_file`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._args import (
    EXIT_OK,
    add_channel_options,
    add_command,
    add_device,
    add_diameter,
    add_precision,
    add_quiet,
    channel_choice_option,
    non_negative_int,
    positive_int,
    probability,
)
from .measure import add_pixel_size, pixel_size_option
from .progress import Progress, describe, duration, note, note_shadowed


def add_parser(subparsers) -> None:
    sub = add_command(
        subparsers,
        "predict",
        "Segment images with a trained model.",
        "Writes OUT/<name>_labels.tif (int32 instance ids, 0 = background) for each input, and with "
        "--probabilities OUT/<name>_probs.tif (float32 foreground probability). INPUT: files (TIFF, PNG, JPEG, "
        ".zarr) or folders of them. Stacks and time series are segmented plane by plane (ids restart in each "
        "plane); large images are read and written through memory maps, one plane at a time. The input's pixel "
        "size (OME-TIFF, ImageJ or TIFF resolution metadata, or --pixel-size), Z step and frame interval are "
        "stored in the outputs. --measure adds OUT/measurements.csv (one row per object, see 'napari-unet "
        "measure'); --rois adds OUT/<name>_rois.zip (ImageJ ROIs for Fiji's ROI Manager); --zarr adds "
        "OUT/<name>_labels.ome.zarr. With --workers or --cluster the files run as dask.distributed tasks, and an "
        "image larger than one block (any .zarr) is segmented block by block into OUT/<name>_labels.ome.zarr "
        "(see docs/distributed.md). A rerun of the same command skips the images already segmented with the "
        "same settings (an interrupted run continues; --overwrite redoes them); outputs written with other "
        "settings are refused. Outputs of an earlier run in an input folder are not inputs.",
        "  napari-unet predict nuclei data/new --out results\n"
        "  napari-unet predict nuclei big_nuclei.tif --out results --diameter 45\n"
        "  napari-unet predict cells.model movie.tif --out results --probabilities --tta\n"
        "  napari-unet predict cells.model data/new --out results --measure --rois\n"
        "  napari-unet predict cells.model slide.zarr --out results --workers 4\n"
        "  napari-unet predict cells.model screen/ --out results --cluster tcp://head-node:8786",
        run,
    )
    sub.add_argument(
        "model",
        help="model folder, or the name of a built-in model ('napari-unet models'; a local "
        "model folder of the same name wins, builtin:NAME always means the built-in)",
    )
    sub.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="image file or folder")
    sub.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the results")
    sub.add_argument("--probabilities", action="store_true", help="also write the foreground probability")
    sub.add_argument(
        "--overwrite",
        action="store_true",
        help="segment again the images whose results are already in --out (without it they are skipped, and "
        "results written with other settings are refused)",
    )
    sub.add_argument(
        "--tta", action="store_true", help="test-time augmentation: mean over the 8 flips and rotations (8x slower)"
    )
    sub.add_argument(
        "--tile-size",
        type=positive_int,
        metavar="N",
        help="output side of a tile (default: the largest that fits in memory)",
    )
    sub.add_argument(
        "--batch-size", type=positive_int, default=1, metavar="N", help="tiles per forward pass (GPU: try 4-8)"
    )
    add_precision(sub)
    add_diameter(sub)
    sub.add_argument(
        "--axes",
        metavar="AXES",
        help="axes of the inputs as stored, e.g. YXC, TYX (default: read from the file's metadata or guessed)",
    )
    add_channel_options(sub, "the model sees (default: the choice saved with the model)")
    sub.add_argument("--measure", action="store_true", help="also write OUT/measurements.csv")
    sub.add_argument("--rois", action="store_true", help="also write OUT/<name>_rois.zip for Fiji")
    sub.add_argument(
        "--zarr",
        action="store_true",
        help="also write the labels as OME-Zarr, OUT/<name>_labels.ome.zarr (with the pixel size)",
    )
    add_pixel_size(sub)
    post = sub.add_argument_group("post-processing (the model's saved settings by default)")
    post.add_argument("--threshold", type=probability, metavar="T", help="foreground where probability > T")
    post.add_argument("--min-size", type=non_negative_int, metavar="N", help="remove objects under N pixels")
    post.add_argument(
        "--watershed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="split merged cells with a distance-transform watershed",
    )
    post.add_argument(
        "--flood",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cells fill the image: the objects grow until they meet, parted by 1-pixel lines (membrane images)",
    )
    post.add_argument(
        "--grow-threshold",
        type=probability,
        metavar="G",
        help="objects grow into the neighbouring pixels with probability > G (a value >= the threshold turns this off)",
    )
    post.add_argument(
        "--seed-threshold",
        type=probability,
        metavar="S",
        help="objects are seeded by their cores, probability > S, and spread over the foreground: touching cells "
        "part where the network is least sure (a value <= the threshold turns this off)",
    )
    scale = sub.add_argument_group("scaling out on dask.distributed (pip install 'napari-unet-2015[distributed]')")
    where = scale.add_mutually_exclusive_group()
    where.add_argument("--cluster", metavar="ADDRESS", help="scheduler of a running cluster, e.g. tcp://head:8786")
    where.add_argument("--workers", type=positive_int, metavar="N", help="start N local worker processes")
    scale.add_argument(
        "--block-size",
        type=positive_int,
        default=1024,
        metavar="N",
        help="side of the blocks of a large image (rounded up to whole tiles; default 1024)",
    )
    scale.add_argument(
        "--margin",
        type=non_negative_int,
        default=128,
        metavar="N",
        help="pixels of context around a block for the post-processing: more than the largest object (default 128)",
    )
    scale.add_argument(
        "--torch-threads",
        type=positive_int,
        metavar="N",
        help="torch threads per worker (default: the cores divided among the workers)",
    )
    add_device(sub)
    add_quiet(sub)


def run(args: argparse.Namespace) -> int:
    from .._config import with_overrides
    from ..device import select_device
    from ..metadata import read_pixel_size, read_spacing
    from ..modelfile import load_model
    from ..pipeline import (
        count_planes,
        describe_own_outputs,
        file_settings,
        list_inputs,
        output_paths,
        read_input,
        segment_file,
    )
    from ..precision import autocast_iterator
    from ..validation import check_writable_folder

    bundle = load_model(args.model)
    note_shadowed(args.model, args.quiet)
    if args.rois:  # its package is optional: missing, say so now rather than after the first image
        from ..roi import check_roifile

        check_roifile()
    postprocess = with_overrides(
        bundle.postprocess,
        threshold=args.threshold,
        min_size=args.min_size,
        watershed=args.watershed,
        grow_threshold=args.grow_threshold,
        seed_threshold=args.seed_threshold,
        flood=args.flood,
    )
    if (args.cluster or args.workers) and (args.batch_size != 1 or args.precision != "auto"):
        raise ValueError("--batch-size and --precision are not available with --cluster or --workers")
    device = select_device(args.device) if not args.cluster else None
    files, own = list_inputs(args.inputs)  # without results written into the input folder by an earlier run
    if own and not files:
        raise ValueError(f"no image to segment: {describe_own_outputs(own)}")
    if own:
        note(f"note: {describe_own_outputs(own)}", args.quiet)
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder")
    outputs = [output_paths(f, args.out, args.probabilities) for f in files]
    given = pixel_size_option(args)
    choice = channel_choice_option(args)
    distributed = bool(args.cluster or args.workers)
    if distributed:  # before any input is read: the options that distributed mode refuses
        _check_distributed_options(args, bundle)
    settings = None if distributed else _run_settings(args, bundle, postprocess, choice, given)
    finished = _check_outputs(files, outputs, args, settings)
    _check_inputs(files, finished, args, bundle, choice, args.block_size if distributed else None)
    check_writable_folder(args.out)  # created only now: a refused input leaves no empty folder behind
    if distributed:
        return run_distributed(args, bundle, postprocess, files)
    skipped = sum(finished)
    if skipped:
        note(
            f"note: {skipped} image(s) already segmented in {args.out} with these settings are skipped "
            "(--overwrite segments them again)",
            args.quiet,
        )
    note(
        f"segmenting {len(files) - skipped} image(s) on {describe(device)}"
        + (" with 8x test-time augmentation" if args.tta else ""),
        args.quiet,
    )
    extras = args.measure or args.rois or args.zarr
    tables: list = []
    started, planes, objects, done = time.perf_counter(), 0, 0, 0
    try:
        with Progress(len(files), "predicting", "image", args.quiet) as bar:
            for path, out, skip in zip(files, outputs, finished):
                if skip and not extras:  # finished by an earlier run: nothing to do
                    bar.update(1, file=path.name)
                    done += 1
                    continue
                # a finished image is read again only to be measured
                image, axes = read_input(path, args.axes) if not skip or args.measure else (None, "")
                pixel_size = given or read_pixel_size(path)
                if skip:
                    bar.update(1, file=path.name)
                else:
                    spacing = read_spacing(path, pixel_size)
                    n = count_planes(image, axes)
                    found, size = 0, ""
                    for plane in autocast_iterator(
                        device,
                        args.precision,
                        segment_file(
                            bundle,
                            image,
                            axes,
                            out,
                            postprocess=postprocess,
                            tile_size=args.tile_size,
                            device=device,
                            batch_size=args.batch_size,
                            tta=args.tta,
                            pixel_size=pixel_size,
                            spacing=spacing,
                            diameter=args.diameter,
                            settings=file_settings(settings, path),
                            channels=choice or bundle.channels,  # plane by plane: a stack is never converted whole
                        ),
                    ):
                        found += plane.objects
                        size = object_size(plane.diameter, args.diameter, bundle.object_diameter)
                        bar.update(int(plane.index + 1 == n), file=path.name, plane=f"{plane.index + 1}/{n}")
                    bar.write(f"{path.name}: {found} objects in {n} plane(s){size} -> {out.labels}")
                    planes, objects = planes + n, objects + found
                if extras:  # a finished image's extras again, from its labels: the table holds every image
                    tables += _extras(args, path, image, axes, out.labels, pixel_size, again=skip)
                done += 1
                del image
    except KeyboardInterrupt:
        if args.measure and done:
            _write_table(tables, args.out / "measurements.csv")
        print(_interrupted_note(args, done, len(files)), file=sys.stderr)
        raise
    if args.measure:
        _write_table(tables, args.out / "measurements.csv")
    print(
        f"segmented {len(files) - skipped} image(s) ({planes} plane(s), {objects} objects)"
        + (f", {skipped} skipped (already done)" if skipped else "")
        + f" in {duration(time.perf_counter() - started)}; results in {args.out}"
    )
    return EXIT_OK


def _run_settings(args: argparse.Namespace, bundle, postprocess, choice, pixel_size) -> dict:
    """What the outputs of a single-process run depend on, recorded in each output TIFF (`pipeline.output_settings`,
    read back by `pipeline.read_settings`). A rerun with the same settings skips the finished images; with others it
    is refused (`_check_outputs`)."""
    from ..pipeline import output_settings

    return output_settings(
        bundle,
        postprocess,
        model=str(args.model),
        diameter=args.diameter,
        tta=args.tta,
        precision=args.precision,
        channels=choice,
        axes=args.axes,
        pixel_size=pixel_size,
    )


def _table_record(table: Path) -> Path:
    """Where predict notes the digest of the measurements.csv it wrote, or what an ROI zip was made from (a hidden
    file beside it)."""
    return table.with_name(f".{table.name}.napari-unet")


EXTRAS_RECORD = "napari_unet_made_from"  # the attribute of a --zarr store that says which labels it copies


def _made_from(labels: Path) -> str:
    """What the --rois and --zarr files of the labels TIFF `labels` are made from, as each records it (an OME-Zarr
    in its attribute `EXTRAS_RECORD`, an ROI zip in a hidden file beside it, `_table_record`): a digest of the
    settings the TIFF records and of its size and modification time. A rerun writes again an extra that records
    another (made from other labels: a run with other settings, or --overwrite without that extra, came since)."""
    import hashlib
    import json

    from ..pipeline import input_identity, read_settings

    made_from = {"settings": read_settings(labels), "labels": input_identity(labels)}
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()[:16]


def _recorded_made_from(extra: Path) -> str | None:
    """What the --rois or --zarr file `extra` records it was made from (`_made_from`); None: nothing readable."""
    if extra.suffix.lower() == ".zip":
        try:
            return _table_record(extra).read_text().strip()
        except OSError:
            return None
    import zarr

    try:
        return zarr.open_group(str(extra), mode="r").attrs.get(EXTRAS_RECORD)
    except Exception:  # noqa: BLE001 - not a readable store: made from nothing known
        return None


def _write_table(tables: list, table: Path) -> None:
    """Write --measure's table and note it as predict's own: a rerun may rewrite it, never another table."""
    import hashlib

    from ..measure import write_csv

    write_csv(tables, table)
    _table_record(table).write_text(hashlib.sha256(table.read_bytes()).hexdigest())


def _own_table(table: Path) -> bool:
    """Whether `table` is the measurements.csv an earlier predict wrote there, unchanged since."""
    import hashlib

    record = _table_record(table)
    try:
        return record.read_text().strip() == hashlib.sha256(table.read_bytes()).hexdigest()
    except OSError:
        return False


def _interrupted_note(args: argparse.Namespace, done: int, total: int) -> str:
    table = f" ({args.out / 'measurements.csv'} holds their rows only)" if args.measure and done else ""
    return (
        f"napari-unet: {done} of {total} image(s) finished before the interrupt{table}: run the same command "
        "again to continue (finished images are skipped)"
    )


def _check_outputs(files: list[Path], outputs: list, args: argparse.Namespace, settings: dict | None) -> list[bool]:
    """No output is an input (or the model), none is written twice; --out is not a file. Returns, per file, whether
    an earlier run with these `settings` finished it (its labels, and its probabilities when asked, are there):
    it is skipped, and segmented again with --overwrite. Without --overwrite, an existing output written with
    other settings (or not by predict) is refused, naming the difference, as are the --rois/--zarr outputs of an
    image not begun and a measurements.csv when the run continues none; those of a begun image (its labels record
    these settings) are written again from its labels unless they record these (`_recorded_made_from`; one that
    records nothing is an earlier version's: predict's name for it beside predict's labels). With
    --cluster/--workers existing outputs are skipped by `distributed.segment_plan` instead. (Whether --out is
    writable is checked once the inputs are: `check_writable_folder` creates it.)"""
    from ..pipeline import (
        base_name,
        check_distinct_names,
        existing_output,
        read_settings,
        replaced_input,
        same_input,
        same_settings,
    )
    from ..validation import check_output_free, check_output_not_input

    check_distinct_names(files, args.out)  # as `distributed.plan_batch` does
    extras = {path: _extra_paths(args, path) for path in files}
    table = args.out / "measurements.csv"
    written = [p for out in outputs for p in (out.labels, out.probs) if p is not None]
    written += [p for paths in extras.values() for p in paths] + ([table] if args.measure else [])
    check_output_not_input(written, [*files, args.model])
    for path, out in zip(files, outputs):  # x_labels.tif beside x.tif: another tool's, or the user's annotations
        if out.labels.exists() and out.labels.parent == path.parent and read_settings(out.labels) is None:
            raise ValueError(
                f"{out.labels} lies beside {path.name} and was not written by napari-unet predict (it records no "
                "settings): it may be annotations of it, which this run would replace (even with --overwrite); "
                "choose another --out, or move the file away if it is not"
            )
    if args.cluster or args.workers:
        return [False] * len(files)
    if args.overwrite:
        for path in written:
            check_output_free(path, True, "the output")  # (a folder where a TIFF goes is refused still)
        return [False] * len(files)
    finished, continued = [], False
    for path, out in zip(files, outputs):
        tiffs = [p for p in (out.labels, out.probs) if p is not None]
        for tiff in (p for p in tiffs if p.exists()):
            recorded = read_settings(tiff)
            if not same_settings(recorded, settings):
                raise ValueError(existing_output(tiff, recorded, settings))
            if not same_input(recorded, path):
                raise ValueError(replaced_input(tiff, path))
        finished.append(all(p.exists() for p in tiffs))
        if out.labels.exists():  # begun by an earlier run like this one: its extras are written again from them
            continued = True  # (also those under predict's names that record nothing: an earlier version's)
            for extra in (e for e in extras[path] if e.exists()):
                _check_extra_replaceable(extra)
            continue
        for extra in extras[path]:
            check_output_free(extra, False, "the output")
    if args.measure and not (continued and _own_table(table)):  # a table predict did not write there: refused
        check_output_free(table, False, "the output")
    elif args.measure and table.exists():  # ours: rewritten whole, so it must not hold images this run leaves out
        left_out = sorted(_table_images(table) - {base_name(path) for path in files})
        if left_out:
            raise ValueError(
                f"{table} holds the measurements of {len(left_out)} image(s) this run does not segment "
                f"({', '.join(left_out[:3])}{', ...' if len(left_out) > 3 else ''}), which rewriting it would drop: "
                "give them too, choose another --out, or replace the table with --overwrite"
            )
    return finished


def _check_extra_replaceable(extra: Path) -> None:
    """Refuse, before any work, an existing --rois or --zarr output `extra` that its rewrite cannot replace: a
    folder where the ROI zip goes, or anything but a zarr store where the OME-Zarr goes (`write_ome_zarr` would
    refuse it only once the image is segmented)."""
    from ..ome_zarr import _check_replaceable

    if extra.suffix.lower() == ".zip" and extra.is_dir():
        raise ValueError(f"the output {extra} is a folder; it cannot be replaced by an ROI zip: choose another --out")
    if extra.suffix.lower() != ".zip":
        _check_replaceable(extra)


def _table_images(table: Path) -> set[str]:
    """The images (their base names) whose rows the measurements table `table` holds; none if unreadable."""
    import csv

    try:
        with table.open(newline="") as handle:
            return {row.get("image") or "" for row in csv.DictReader(handle)} - {""}
    except (OSError, csv.Error, UnicodeDecodeError):
        return set()


def _extra_paths(args: argparse.Namespace, path: Path) -> list[Path]:
    """The outputs of --rois and --zarr for the input `path`."""
    from ..pipeline import base_name

    paths = []
    if args.rois:
        paths.append(args.out / f"{base_name(path)}_rois.zip")
    if args.zarr:
        paths.append(args.out / f"{base_name(path)}_labels.ome.zarr")
    return paths


def _check_inputs(
    files: list[Path], finished: list[bool], args: argparse.Namespace, bundle, choice, block_size: int | None
) -> None:
    """Every input, before the first is segmented: a bad fifth file fails now, not in an hour; all the bad ones
    in one error, one line each (`_bad_inputs`). An image an earlier run finished is not read again (with --rois,
    only its shape and axes)."""
    from ..io import reading_notes
    from ..pipeline import read_input

    problems = []
    for path, skip in zip(files, finished):
        try:
            if skip and args.rois:
                image, axes = read_input(path, args.axes)
                _check_rois(path, tuple(image.shape), axes)
            elif not skip:
                for said in reading_notes(path) if args.axes is None else ():  # what reading it had to assume
                    note(f"note: {path.name}: {said}", args.quiet)
                _check_input(path, args.axes, bundle, choice, block_size, rois=args.rois)
        except (ValueError, OSError) as error:
            problems.append(error)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ValueError(_bad_inputs(problems, len(files)))


def _bad_inputs(problems: list[Exception], total: int, shown: int = 10) -> str:
    """One message for several bad inputs: a first line, then one line each (the first `shown`)."""
    lines = [f"  {str(error).splitlines()[0] if str(error) else type(error).__name__}" for error in problems[:shown]]
    more = [f"  and {len(problems) - shown} more"] if len(problems) > shown else []
    return "\n".join(
        [
            f"{len(problems)} of {total} inputs cannot be segmented; fix them, or move them out of the input",
            *lines,
            *more,
        ]
    )


def _check_rois(path: Path, shape: tuple[int, ...], axes: str) -> None:
    """--rois: an ROI zip holds one plane or one stack, so an image (`shape`, `axes`) with more than one axis
    longer than 1 besides C, Y and X (a time series of stacks) is refused; a 2-D image stored as 5-D is not."""
    long = "".join(a for a, n in zip(axes, shape) if a not in "CYX" and n > 1)
    if len(long) > 1:
        raise ValueError(
            f"{path}: --rois writes one plane or one stack (ZYX or TYX) per file, and this image has axes {axes} "
            f"(shape {shape}): run without --rois (then 'napari-unet rois' on planes or stacks of its labels)"
        )


def _check_input(
    path: Path, axes: str | None, bundle, choice, block_size: int | None = None, rois: bool = False
) -> str:
    """Read `path` as `predict` will and check it (`validation.check_image`; its channels, after the channel
    choice, against the model's, from the shape alone: `pipeline.network_axes`); returns its axes. With
    `block_size` (--cluster/--workers), every input is opened lazily and its channels checked against the model's
    own choice (`_check_distributed_channels`); one that goes block by block (`distributed.goes_by_blocks`) only
    that and its dtype: its values are read when the batch is planned (`distributed.plan_batch`). Any error names
    the file (a corrupt chunk's too). rois: refuse an image whose labels an ROI zip cannot hold (`_check_rois`)."""
    from ..pipeline import network_axes, read_input
    from ..validation import check_image, check_image_dtype

    try:
        if block_size is not None:
            from ..distributed import goes_by_blocks
            from ..distributed.tasks import read_lazily

            image, found = read_lazily(path, axes)
            _check_distributed_channels(path, image, found, bundle)  # reads nothing, names the file
            if goes_by_blocks(path, tuple(image.shape), found, block_size):
                check_image_dtype(image.dtype)
                return found
        image, found = read_input(path, axes)
        if rois:
            _check_rois(path, tuple(image.shape), found)
        check_image(image, found)
        network_axes(bundle, image, found, path.name, choice)  # the channels, from the shape: nothing converted
        return found
    except ValueError as error:  # named once: the readers' messages often begin with the path already
        raise ValueError(str(error) if str(path) in str(error) else f"{path}: {error}") from error
    except (OSError, MemoryError):
        raise
    except Exception as error:  # noqa: BLE001 - a corrupt chunk: codecs raise what they like (RuntimeError, ...)
        raise ValueError(f"{path}: cannot be read ({type(error).__name__}: {error})") from error


def _extras(
    args: argparse.Namespace, path: Path, image, axes: str, labels_path: Path, pixel_size, again: bool = False
) -> list:
    """--measure: the tables of every plane of `labels_path` (`[(extra columns, table), ...]`, empty without it);
    --rois: write its ROI zip; --zarr: copy it to OME-Zarr; each records the labels it was made from
    (`_made_from`). again: an earlier run finished the image, so its ROI zip and OME-Zarr (each written whole,
    under a temporary name) are written only where missing (that run was stopped between its labels and them) or
    made from other labels or from none recorded (`_recorded_made_from`: a run with other settings, or --overwrite
    without them, came since; an earlier version wrote them); its table is measured again (`image` is needed for
    that only)."""
    from ..io import read_image
    from ..measure import measure_planes
    from ..metadata import read_spacing
    from ..pipeline import base_name, write_ome_zarr
    from ..roi import write_rois

    zarr = args.out / f"{base_name(path)}_labels.ome.zarr" if args.zarr else None
    rois = args.out / f"{base_name(path)}_rois.zip" if args.rois else None
    made_from = _made_from(labels_path) if zarr or rois else None  # read only for the extras that record it
    if again:  # kept where present and made from these labels
        zarr, rois = (
            p if p is not None and not (p.exists() and _recorded_made_from(p) == made_from) else None
            for p in (zarr, rois)
        )
    if not (args.measure or zarr or rois):
        return []
    labels, labels_axes = read_image(labels_path)
    if zarr is not None:
        spacing = read_spacing(path, pixel_size)
        write_ome_zarr(zarr, labels, labels_axes, pixel_size, spacing, attributes={EXTRAS_RECORD: made_from})
    tables = []
    if args.measure:
        for extra, table in measure_planes(labels, labels_axes, image, axes, pixel_size):
            tables.append(({"image": base_name(path), **extra}, table))
    if rois is not None and labels.max(initial=0) > 0:
        write_rois(rois, _planes_only(labels, labels_axes))
        _table_record(rois).write_text(made_from)
    elif rois is not None:  # no object: no ROI file, and none left from an earlier run (--overwrite) to contradict it
        rois.unlink(missing_ok=True)
        _table_record(rois).unlink(missing_ok=True)
    return tables


def _planes_only(labels, axes: str):
    """`labels` as an ROI zip holds them, (H, W) or (N, H, W): those with more axes (a 2-D image or a time series
    stored as 5-D OME-Zarr, Z = 1) without their axes of length 1 other than Y and X, the rule of `_check_rois`."""
    if labels.ndim > 3:
        labels = labels[tuple(0 if a not in "YX" and n == 1 else slice(None) for a, n in zip(axes, labels.shape))]
    if labels.ndim > 3:  # T and Z both longer than 1: `_check_rois` refuses them before any work
        raise ValueError(f"an ROI zip holds one plane or one stack; these labels have axes {axes}")
    return labels


def _check_distributed_options(args: argparse.Namespace, bundle) -> None:
    """Refuse, before any input is read, what --cluster/--workers do not do: the single-process options, a model
    with several input channels, and a model that would rescale the images (`distributed.check_scale`)."""
    from ..distributed import check_scale

    unsupported = [
        flag
        for flag, given in (
            ("--measure", args.measure),
            ("--rois", args.rois),
            ("--zarr", args.zarr),
            ("--channels/--grey", args.channels is not None or args.grey),
        )
        if given
    ]
    if unsupported or bundle.net.config.in_channels != 1:
        raise ValueError(
            f"--cluster/--workers segment grey images with a 1-channel model and write labels only; "
            f"run without them for {', '.join(unsupported) or 'a multichannel model'}"
        )
    check_scale(bundle, args.diameter, give="--diameter {:g}", instead="run without --cluster/--workers")


def _check_distributed_channels(path: Path, image, axes: str, bundle) -> None:
    """With --cluster/--workers the workers apply the model's own channel choice (--channels and --grey are
    single-process options): refuse an image it does not turn into the network's channels, with advice that works
    there (`ModelBundle.prepare`'s suggests --channels or --grey). Reads nothing."""
    from ..pipeline import network_axes

    try:
        network_axes(bundle, image, axes, path.name)
    except ValueError:
        expected = bundle.net.config.in_channels
        raise ValueError(
            f"{path}: the model expects {expected} channel(s) ({bundle.describe_input()}), which this image (axes "
            f"{axes}, shape {tuple(image.shape)}) does not give; --cluster/--workers apply the model's own channel "
            f"choice: convert the images to {expected} channel(s) first, use a model trained with the --channels "
            "or --grey that fits them (the choice is saved with the model), or run without --cluster/--workers, "
            "with --channels or --grey"
        ) from None


def run_distributed(args: argparse.Namespace, bundle, postprocess, files: list[Path]) -> int:
    """`predict` with --cluster or --workers: every file planned (`distributed.plan_batch`: a bad input is refused
    before the workers start), then the files and blocks as tasks (`distributed.segment_plan`)."""
    from ..distributed import connect, plan_batch, segment_plan

    started, cut = time.perf_counter(), 0
    where = f"the cluster at {args.cluster}" if args.cluster else f"{args.workers} local worker(s)"
    note(
        f"segmenting {len(files)} image(s) on {where}" + (" with 8x test-time augmentation" if args.tta else ""),
        args.quiet,
    )
    plan = plan_batch(  # every input read and planned before the workers start: a bad one is refused first
        bundle,
        files,
        args.out,
        block_size=args.block_size,
        margin=args.margin,
        tile_size=args.tile_size,
        device=args.device,
        axes=args.axes,
        tta=args.tta,
        pixel_size=pixel_size_option(args),
    )
    with connect(args.cluster, args.workers, args.torch_threads) as client:
        events = segment_plan(
            client,
            bundle,
            plan,
            probabilities=args.probabilities,
            postprocess=postprocess,
            overwrite=args.overwrite,
            model_name=str(args.model),
        )
        bar, skipped = None, 0
        for event in events:
            if bar is None:
                bar = Progress(event.total, "predicting", "task", args.quiet)
            if event.skipped:
                skipped += 1
                bar.write(f"{event.item}: skipped; --overwrite segments it again")
            bar.update(1, task=event.item)
            cut += event.cut_objects
        if bar is not None:
            bar.close()
    if cut:
        print(
            f"warning: {cut} object(s) reached the edge of a block's margin and may be labelled differently "
            f"from a single-process run: rerun with a larger --margin (now {args.margin})",
            file=sys.stderr,
        )
    print(
        f"segmented {len(files) - skipped} image(s)"
        + (f", {skipped} skipped (already done)" if skipped else "")
        + f" in {duration(time.perf_counter() - started)}; results in {args.out}"
    )
    return EXIT_OK


def object_size(used: float | None, asked: float | str, model: float | None) -> str:
    """How the file was scaled, for its summary line: " (objects ~23.4 px, estimated; rescaled x0.85)"."""
    if model is None:
        return ""
    if used is None:
        return " (no objects found to estimate their size from; not rescaled)" if asked == "auto" else ""
    how = "estimated" if asked == "auto" else "given"
    scale = f"rescaled x{model / used:.3g}" if abs(model / used - 1) > 1e-9 else "not rescaled"
    return f" (objects ~{used:.1f} px, {how}; {scale})"
