"""The commands that look at results and models without training: `evaluate` (scores), `weights` (the loss
weight map of a label image), `info` (what a model folder holds) and `models` (the built-in models)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._args import (
    EXIT_OK,
    add_command,
    add_quiet,
    non_negative_float,
    non_negative_int,
    positive_float,
    probability,
)
from .progress import note, note_shadowed, warn_unmatched

INFO_ROOM = 120  # characters of a value `info` shows whole; longer lists and mappings are summarised
SHOWN_ITEMS = 3  # the first items of a summarised list
SCORE_COLUMNS = {
    "isbi": ("vrand", "vinfo", "iou", "pixel_error"),
    "instances": ("ap50", "map", "f1_50", "seg", "n_pred", "n_true"),
    "pixels": ("iou", "pixel_error"),
}


def add_parser(subparsers) -> None:
    _add_weights(subparsers)
    _add_evaluate(subparsers)
    _add_info(subparsers)
    _add_models(subparsers)


def run(args: argparse.Namespace) -> int:
    return {"evaluate": _evaluate, "weights": _weights, "info": _info, "models": _models}[args.command](args)


def _add_weights(subparsers) -> None:
    sub = add_command(
        subparsers,
        "weights",
        "Write the loss weight map of a label image (the paper's eq. 2) as a float32 TIFF.",
        "w = w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2)) on the background, with d1, d2 the distances to the two "
        "nearest cells after cutting borders between touching cells; w_c balances the class frequencies.",
        "  napari-unet weights labels/01.png --out weights_01.tif\n"
        "  napari-unet weights labels/01.png --out weights_01_paper.tif --w0 10 --sigma 5",
        run,
    )
    sub.add_argument("labels", type=Path, help="label image file")
    sub.add_argument("--out", type=Path, required=True, metavar="FILE", help="TIFF file to write")
    sub.add_argument(
        "--w0",
        type=non_negative_float,
        metavar="W",
        help="weight of the border term (default: the paper's 10, the paper preset's)",
    )
    sub.add_argument(
        "--sigma",
        type=positive_float,
        metavar="PX",
        help="width (px) of the border term (default: the paper's 5)",
    )
    sub.add_argument(
        "--border",
        type=non_negative_int,
        metavar="PX",
        help="background border (px) between touching cells (default: the paper preset's 1; 0: none, the fast "
        "preset's)",
    )
    sub.add_argument("--no-balance", action="store_true", help="w_c = 1 instead of balancing class frequencies")
    sub.add_argument("--mask", type=Path, metavar="FILE", help="annotated region (nonzero); weight 0 elsewhere")
    sub.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    add_quiet(sub, "no notes on stderr")


def _add_evaluate(subparsers) -> None:
    sub = add_command(
        subparsers,
        "evaluate",
        "Score predictions against ground truth.",
        "PRED and TRUTH are files or folders paired by base name (a '_labels' or '_probs' suffix on predictions "
        "is tolerated). Kinds: instances (AP at IoU 0.5, mAP over 0.5:0.95, F1, SEG; integer labels); isbi "
        "(ISBI 2012 V_rand and V_info, best over the challenge's thresholds 0.0, 0.1, ..., 0.9999999999999999 of a "
        "float probability TIFF, thinned; "
        "truth: nonzero = cell interior, 0 = membrane; plus IoU and pixel error); pixels (IoU, pixel error). "
        "Stacks are scored plane by plane.",
        "  napari-unet evaluate results data/test/labels\n"
        "  napari-unet evaluate results isbi/labels --kind isbi --json > scores.json",
        run,
    )
    sub.add_argument("pred", type=Path, help="prediction file or folder")
    sub.add_argument("truth", type=Path, help="ground-truth file or folder")
    sub.add_argument(
        "--kind", choices=("instances", "isbi", "pixels"), default="instances", help="which scores (see above)"
    )
    sub.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    sub.add_argument(
        "--threshold",
        type=probability,
        default=0.5,
        metavar="T",
        help="binarise float predictions at this probability for the pixel scores",
    )
    sub.add_argument("--no-thinning", action="store_true", help="isbi: score without thinning the borders")
    add_quiet(sub, "no notes on stderr (binary masks scored by their components, touching objects)")


def _add_info(subparsers) -> None:
    sub = add_command(
        subparsers,
        "info",
        "Show a model's architecture, settings and training metadata.",
        "",
        "  napari-unet info cells.model\n  napari-unet info cells.model --json",
        run,
    )
    sub.add_argument("model", help="model folder or built-in model name")
    sub.add_argument("--json", action="store_true", help="print the stored configuration as JSON")


def _add_models(subparsers) -> None:
    sub = add_command(
        subparsers,
        "models",
        "List the built-in models: use them by name wherever a model folder is accepted.",
        "Each: what it is for, the object diameter it expects (images are rescaled to it, see predict "
        "--diameter), its size, what it was trained on and what to cite. A local model folder with a built-in's "
        "name wins over the built-in; builtin:NAME always means the built-in.",
        "  napari-unet models\n  napari-unet models --json\n  napari-unet predict nuclei images --out results",
        run,
    )
    sub.add_argument("--json", action="store_true", help="print a JSON list instead of text")


# ----------------------------------------------------------------------------------------------- weights


def _weights(args: argparse.Namespace) -> int:
    from .._config import with_overrides
    from ..io import read_labels, write_tiff
    from ..metadata import read_pixel_size
    from ..train_config import settings_for_labels
    from ..training import PRESETS
    from ..validation import check_output_free, check_output_not_input, check_writable_folder
    from ..weights import weight_map

    if args.labels.is_dir():
        raise ValueError(f"{args.labels} is a folder; weights takes one label image file")
    if args.out.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"--out {args.out.name}: the weight map is written as a float32 TIFF: name it .tif")
    check_output_not_input([args.out], [p for p in (args.labels, args.mask) if p is not None])
    check_output_free(args.out, args.overwrite)
    check_writable_folder(args.out.parent, f"--out {args.out}")
    labels = read_labels(args.labels)
    mask = read_labels(args.mask) if args.mask is not None else None
    # the paper's loss, which the paper preset trains with (the fast preset has no border term: w0 0), with the
    # settings training gives this kind of labels (binary masks: no border term, no balancing) unless given here
    given = {"w0": args.w0, "sigma": args.sigma, "border": args.border}
    given = {name: value for name, value in given.items() if value is not None}
    if args.no_balance:
        given["class_weights"] = "none"
    config, kind = settings_for_labels(with_overrides(PRESETS["paper"][1], **given), [labels], given)
    if kind == "binary" and {"w0", "class_weights"} - set(given):
        note(
            f"note: {args.labels.name} is a binary mask (one value over many regions, as ISBI's membranes): training "
            f"gives such masks no border term and no class balancing, whatever the preset (w0 {config.w0:g}, class "
            "weights none); give --w0 to see a border term anyway",
            args.quiet,
        )
    weights = weight_map(
        labels,
        config.w0,
        config.sigma,
        class_weights=None if config.class_weights == "none" else config.class_weights,
        mask=mask,
        border=config.border,
    )
    write_tiff(args.out, weights, "YX", pixel_size=read_pixel_size(args.labels))  # lies over the labels
    print(
        f"weight map {weights.shape[0]}x{weights.shape[1]} (min {np.min(weights):.3g}, mean "
        f"{np.mean(weights):.3g}, max {np.max(weights):.3g}) written to {args.out}"
    )
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- evaluate


def _evaluate(args: argparse.Namespace) -> int:
    from ..io import read_label_image
    from ..metrics import as_objects, average_scores, evaluate_pair
    from ..metrics.instances import check_fully_annotated
    from ..pipeline import list_files, list_label_files, match_files
    from ..validation import check_instance_labels, check_label_axes

    match = match_files(
        list_files(args.pred, "prediction"),
        list_label_files(args.truth, "ground-truth"),  # a folder of images and their x_masks.png: the masks
        ("predictions", "ground truth"),
        prefer="_probs" if args.kind == "isbi" else "_labels",
        by_name=args.pred.is_dir() or args.truth.is_dir(),  # two files given as such pair whatever their names
    )
    warn_unmatched(
        match, ("predictions without ground truth (skipped)", "ground truth without predictions"), args.quiet
    )
    scores: dict[str, dict[str, Any]] = {}
    masks: list[str] = []  # files read as binary masks: scored by their connected components
    touching: list[str] = []  # --kind isbi: instance truths whose objects touch, merged by the ISBI convention
    for pred_path, truth_path in match.pairs:
        (pred, pred_axes), (truth, truth_axes) = read_label_image(pred_path), read_label_image(truth_path)
        pred, truth = np.asarray(pred), np.asarray(truth)
        check_label_axes(pred_axes, pred.shape, f"prediction {pred_path.name}")
        check_label_axes(truth_axes, truth.shape, f"ground truth {truth_path.name}")
        if pred.shape != truth.shape:
            raise ValueError(
                f"prediction {pred_path.name} has shape {pred.shape} but its ground truth "
                f"{truth_path.name} has {truth.shape}"
            )
        if truth.dtype != bool:
            check_fully_annotated(truth, f"ground truth {truth_path.name}")
            check_instance_labels(truth, f"ground truth {truth_path.name}", ground_truth=True)
        for index in np.ndindex(*pred.shape[:-2]):
            name = pred_path.name if pred.ndim == 2 else f"{pred_path.name}{list(index)}"
            pair = [pred[index], truth[index]]
            for side, (path, role) in enumerate(((pred_path, "prediction"), (truth_path, "ground truth"))):
                try:
                    pair[side], mask = as_objects(pair[side], f"{role} {path.name}")  # every kind: refuses images
                except ValueError as error:
                    if args.kind == "isbi" and side == 0:  # an 8-bit probability map, as ISBI submissions often are
                        raise ValueError(
                            f"{error}. For --kind isbi a prediction is a probability map: save it as floats in "
                            "[0, 1] (an 8-bit map divided by 255), or give labels"
                        ) from error
                    raise
                if mask and args.kind == "instances" and path.name not in masks:
                    masks.append(path.name)
            if args.kind == "isbi" and truth_path.name not in touching and _objects_touch(pair[1]):
                touching.append(truth_path.name)
            try:
                scores[name] = evaluate_pair(*pair, args.kind, threshold=args.threshold, thinned=not args.no_thinning)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{pred_path.name} against {truth_path.name}: {error}") from error
    if masks:
        shown = ", ".join(masks[:5]) + (", ..." if len(masks) > 5 else "")
        looks, its = ("look like binary masks", "their") if len(masks) > 1 else ("looks like a binary mask", "its")
        note(
            f"note: {shown} {looks} (one value over many separate regions), not instance labels: scored by {its} "
            "connected components (4-connected), so touching objects count as one; give instance labels (one id "
            "per object) for exact scores",
            args.quiet,
        )
    if touching:
        shown = ", ".join(touching[:5]) + (", ..." if len(touching) > 5 else "")
        note(
            f"note: the ground truth {shown} holds objects that touch: --kind isbi scores the connected components "
            "of its foreground (the challenge's convention: membranes, 0, part the cells), so touching objects "
            "count as one; score objects with --kind instances",
            args.quiet,
        )
    mean = average_scores(list(scores.values()))
    if args.json:
        print(json.dumps({"kind": args.kind, **mean, "images": scores}, indent=2, default=float))
    else:
        print(_table(scores, mean, SCORE_COLUMNS[args.kind]))
    return EXIT_OK


def _objects_touch(labels: np.ndarray) -> bool:
    """Whether two objects (different nonzero ids) of integer `labels` are 4-neighbours (`touching_pairs`).

    >>> _objects_touch(np.array([[1, 1, 2], [0, 0, 0]])), _objects_touch(np.array([[1, 0, 2]]))
    (True, False)
    """
    from ..synthetic import touching_pairs

    return labels.dtype.kind in "iu" and bool(touching_pairs(labels, connectivity=1))


def _table(scores: dict[str, dict[str, Any]], mean: dict[str, Any], columns: Sequence[str]) -> str:
    columns = [c for c in columns if c in mean]
    rows = [[name] + [_cell(s[c]) for c in columns] for name, s in scores.items()]
    rows.append([f"mean ({mean['n_images']})"] + [_cell(mean[c]) for c in columns])
    header = ["image", *columns]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        return "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) <= 1 else f"{value:.1f}"
    return str(value)


# -------------------------------------------------------------------------------------------------- info


def _info(args: argparse.Namespace) -> int:
    from ..builtin import resolve
    from ..modelfile import CONFIG_FILE, STATE_FILE, load_model
    from ..train_config import UNTIL_BUDGET

    note_shadowed(args.model, False)
    bundle = load_model(args.model)
    folder = resolve(args.model)
    if args.json:
        print((folder / CONFIG_FILE).read_text())
        return EXIT_OK
    net = bundle.net
    parameters = sum(p.numel() for p in net.parameters())
    meta = dict(bundle.metadata)
    training = meta.pop("training") if isinstance(meta.get("training"), dict) else None  # else shown as metadata
    resumable = _resumable(folder / STATE_FILE, training)
    lines = [
        f"model: {folder}",
        f"network: {_fields(net.config.to_dict())}",
        f"  {parameters:,} parameters; halo {net.halo} px; input sizes in steps of {net.step}",
        f"input: {bundle.describe_input()}",
        f"normalization: percentiles {bundle.normalization.low} - {bundle.normalization.high}",
        f"post-processing: {_fields(bundle.postprocess.to_dict())}",
        "object diameter: "
        + (
            f"{bundle.object_diameter:g} px (images are rescaled to it)"
            if bundle.object_diameter is not None
            else "none (images are never rescaled)"
        ),
    ]
    if training:
        training = dict(training)
        augment = training.pop("augment", None)
        done = meta.get("iterations")
        if training.get("iterations") == UNTIL_BUDGET:
            training["iterations"] = "until the time budget"
        elif training.get("time_budget") and isinstance(done, int) and done < training.get("iterations", done):
            training["iterations"] = f"{training['iterations']} (a cap: the time budget ended the run at {done})"
        lines.append(f"training: {_fields(training)}")
        if augment:
            lines.append(f"  augmentation: {_fields(augment) if isinstance(augment, dict) else _brief(augment)}")
    shown = {key: _brief(value) for key, value in meta.items()}
    summarised = any(text != _plain(meta[key]) for key, text in shown.items())
    lines.append("metadata" + (" (summarised; --json shows it whole)" if summarised else "") + ":")
    lines += [f"  {key}: {text}" for key, text in shown.items()]
    lines.append(f"resumable: {resumable}")
    print("\n".join(lines))
    return EXIT_OK


def _resumable(state_file: Path, training: dict[str, Any] | None) -> str:
    """Whether `train --resume` can continue the run saved with `state_file` and the metadata's `training`, read
    as `Trainer.resume` reads them: "yes (at iteration n)", "yes (at iteration n; complete: ...)" for a run with no
    step left (`Trainer.finished`: what to give --resume to train on) or "no (why)"."""
    import torch

    from ..train_config import TrainConfig

    if not state_file.is_file():
        return "no (no training state)"
    try:
        config = TrainConfig.from_dict(training)
    except (TypeError, ValueError, AttributeError):
        return "no (the metadata holds no valid training configuration)"
    try:  # weights-only: a hostile file cannot run code
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        iteration, elapsed = int(state["iteration"]), float(state.get("elapsed", 0.0))
    except Exception as error:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...)
        return f"no ({state_file.name} cannot be read: {type(error).__name__})"
    if iteration >= config.iterations:
        return f"yes (at iteration {iteration}; complete: give --iterations above {iteration} to train on)"
    if config.time_budget is not None and elapsed >= config.time_budget:
        return f"yes (at iteration {iteration}; complete: its time budget is spent, give a larger --time-budget)"
    return f"yes (at iteration {iteration})"


def _fields(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_brief(v, INFO_ROOM // 2)}" for k, v in values.items())


def _brief(value: Any, room: int = INFO_ROOM, nested: bool = False) -> str:
    """`value` for a person in about `room` characters, or whole when short: a long list as its length and first
    items (data hashes, file names), a long mapping entry by entry, or by its keys; inside a mapping (`nested`)
    as "[n items]" or "{n entries}". Floats to 6 digits; strings stay whole. `info --json` shows everything.

    >>> _brief(list(range(1000)), 40), _brief({"a": ["x.png"] * 500, "b": 0.8620187612415251})
    ('1000 items: 0, 1, 2, ...', '{a: [500 items], b: 0.862019}')
    """
    text = _plain(value)
    if len(text) <= room or not isinstance(value, (list, dict)):
        return text
    if nested:
        return f"[{len(value)} items]" if isinstance(value, list) else f"{{{len(value)} entries}}"
    if isinstance(value, list):
        first = ", ".join(_plain(item) for item in value[:SHOWN_ITEMS])
        scalars = not any(isinstance(item, (list, dict)) for item in value[:SHOWN_ITEMS])
        return f"{len(value)} items" + (f": {first}, ..." if scalars and len(first) <= room else "")
    entries = "{" + ", ".join(f"{key}: {_brief(item, room // 4, True)}" for key, item in value.items()) + "}"
    keys = ", ".join(map(str, list(value)[:SHOWN_ITEMS])) + (", ..." if len(value) > SHOWN_ITEMS else "")
    return entries if len(entries) <= 2 * room else f"{len(value)} entries: {keys}"


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return repr(float(f"{value:.6g}"))
    if isinstance(value, list):
        return "[" + ", ".join(_plain(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_plain(item)}" for key, item in value.items()) + "}"
    return str(value)


# ------------------------------------------------------------------------------------------------ models


def _models(args: argparse.Namespace) -> int:
    from ..builtin import describe, names

    found = [describe(name) for name in names()]
    if args.json:
        print(json.dumps(found, indent=2))
        return EXIT_OK
    if not found:
        print("no built-in models are installed (the package's builtin_models folder is empty)")
        return EXIT_OK
    blocks = []
    for info in found:
        data = ", ".join(f"{name} ({count} images)" for name, count in info["training_data"].items()) or "unknown"
        held_out = ", ".join(f"{name} ({count} images)" for name, count in info["held_out"].items())
        diameter = f"{info['object_diameter']:g} px" if info["object_diameter"] else "none (never rescales)"
        lines = [
            f"{info['name']}: {info['description']}",
            f"  object diameter: {diameter}",
            f"  network: {info['architecture']}; weights {info['weights_bytes'] / 1e6:.1f} MB",
            f"  trained on: {data}",
        ]
        if held_out:
            lines.append(f"  held out (validation, never trained on): {held_out}")
        if info["license"]:
            lines.append(f"  license: {info['license']}")
        lines += ["  cite:"] + [f"    {citation}" for citation in info["citations"]]
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return EXIT_OK
