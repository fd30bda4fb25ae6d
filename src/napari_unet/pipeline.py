"""Files in, files out: the glue between folders of images and the core, used by the command line.

- `list_files` / `match_files`: the image files of a folder (or one file), and pairs matched by base name
  (`01.png` with `01.tif`; a `_labels` or `_probs` suffix is tolerated, so predictions match their truth).
- `separate_outputs`: of listed images, those that `predict` wrote for another beside it (results written into
  the input folder), which are not inputs; `list_inputs` lists and separates in one call.
- `read_training_pair`: an image normalised with the model's percentiles and its labels, checked together.
- `split_by_image`: a deterministic train/validation split by whole images (never crops of one image).
- `read_input` / `segment_file`: segment a file plane by plane (stacks, time series), with bounded memory; a
  `.zarr` store is read by `ome_zarr.read_zarr`. `output_settings` / `read_settings`: the settings an output is
  written with, recorded in it (`SETTINGS_TAG`) so that a rerun knows its own outputs (`same_settings`), or
  says how they differ (`settings_difference`, `existing_output`).

>>> base_name("cells/01_labels.ome.tif")
'01'
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .channels import ChannelChoice, ChannelChoiceError
from .io import (
    PILLOW_SUFFIXES,
    TIFF_SUFFIXES,
    ZARR_SUFFIX,
    channel_values,
    check_image,
    normalize_percentile,
    read_image,
    read_labels,
    remove_stale_temporaries,
    temporary_sibling,
    tiff_layout,
)
from .metadata import StackSpacing
from .ome_zarr import ZARR_METADATA, is_zarr_store, read_zarr
from .ome_zarr import write_ome_zarr as write_ome_zarr  # re-exported: cli/predict.py imports it from here
from .scale import diameter_factor

IMAGE_SUFFIXES = TIFF_SUFFIXES + PILLOW_SUFFIXES
TOLERATED_SUFFIXES = ("_labels", "_probs")
ANNOTATION_SUFFIX = ".unet-labels.tif"  # the napari plugin's annotations autosaved beside an image (plugin/_autosave)
LARGE_OUTPUT_BYTES = 1 << 30  # a plane's probabilities above this go to a temporary memory-mapped file
SETTINGS_TAG = 65421  # private TIFF tag (reusable range): the JSON settings an output was written with

T = TypeVar("T")


# ------------------------------------------------------------------------------------------- finding files


def base_name(path: str | Path) -> str:
    """The name that pairs files: without its image suffix (`.tif`, `.ome.tif`, `.png`, ...) and without one
    trailing `_labels` or `_probs` (what `predict` appends); the napari plugin's autosaved annotations are named
    by their image (`cells.tif.unet-labels.tif`, and the older `cells.unet-labels.tif`: `cells`).

    >>> base_name("a/cells.ome.tif.unet-labels.tif"), base_name("cells.unet-labels.tif")
    ('cells', 'cells')
    """
    if is_annotation(path):
        return base_name(Path(path).name[: -len(ANNOTATION_SUFFIX)])
    inside = _store_member(Path(path))
    if inside is not None:  # `slide.zarr/0`: "slide_0", not "0" (two slides' arrays would share their outputs)
        store, parts = inside
        return "_".join((file_stem(store), *parts))
    name = file_stem(Path(path))
    for suffix in TOLERATED_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def list_files(path: str | Path, what: str = "image", zarr: bool = False, annotations: bool = True) -> list[Path]:
    """The image files of a folder, sorted by name (hidden files skipped), or `[path]` for a single file.

    what: how to name the files in error messages ("image", "label", ...). zarr: also accept `.zarr` folders
    (as the path itself, or inside the folder), and as the path itself any zarr array or group, whatever its name
    (`ome_zarr.is_zarr_store`: the array `slide.zarr/0`). annotations: False skips the annotations the napari plugin
    autosaves beside their images (`*.unet-labels.tif`, `ANNOTATION_SUFFIX`): listing images, they are not.
    """
    path = Path(path)
    if zarr and path.is_dir() and (path.suffix.lower() == ZARR_SUFFIX or is_zarr_store(path)):
        return [path]
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileNotFoundError(f"no {what} file or folder at {path}")
    suffixes = IMAGE_SUFFIXES + ((ZARR_SUFFIX,) if zarr else ())
    files = sorted(
        p
        for p in path.iterdir()
        if not p.name.startswith(".")
        and p.suffix.lower() in suffixes
        and (p.is_file() or (zarr and p.suffix.lower() == ZARR_SUFFIX and p.is_dir()))
        and (annotations or not p.name.endswith(ANNOTATION_SUFFIX))
    )
    if not files:
        raise ValueError(f"no {what} files in {path}: expected {', '.join(suffixes)} files")
    return files


@dataclass(frozen=True)
class FileMatch:
    """Files of two lists paired by base name, and those left without a partner."""

    pairs: list[tuple[Path, Path]]
    unmatched_first: list[Path]
    unmatched_second: list[Path]


def match_files(
    first: Sequence[Path],
    second: Sequence[Path],
    names: tuple[str, str] = ("images", "labels"),
    prefer: str | None = None,
    by_name: bool = False,
) -> FileMatch:
    """Pair `first` and `second` by `base_name`; two single files are paired whatever their names, unless
    `by_name` (`evaluate` given a folder: a folder's one file pairs by name, as a folder's many files do). A file
    named as other tools name label files (Cellpose's `01_cp_masks.png`, `01_masks.tif`; `01_mask.png`) pairs with
    `01.*` of the other list when nothing else does.

    prefer: a tolerated suffix ("_labels" or "_probs") that settles a tie: of `01_labels.tif` and `01_probs.tif`
    in `first`, the one with this suffix is used.
    Raises ValueError when nothing pairs (naming both files when each list holds one), or when two files of one
    list share a base name (01.png and 01.tif).
    """
    if len(first) == 1 and len(second) == 1 and not by_name:
        return FileMatch([(Path(first[0]), Path(second[0]))], [], [])
    keyed = [_by_base_name(first, names[0], prefer), _by_base_name(second, names[1])]
    keyed[1] = _other_tools_names(keyed[1], keyed[0])
    keyed[0] = _other_tools_names(keyed[0], keyed[1])  # measure takes the labels first
    common = [key for key in keyed[0] if key in keyed[1]]
    if not common and len(first) == 1 and len(second) == 1:
        (first_key, first_path), (second_key, second_path) = (next(iter(k.items())) for k in keyed)
        raise ValueError(
            f"{first_path.name} ({names[0]}) and {second_path.name} ({names[1]}) have different base names, "
            f"{first_key!r} and {second_key!r}, so they do not pair: files in folders pair by name without "
            "extension (01_labels.tif with 01.png); rename one, or give the two files themselves to pair them "
            "whatever their names"
        )
    if not common:
        raise ValueError(
            f"no {names[0]} and {names[1]} share a base name: {names[0]} {_few(keyed[0])}, "
            f"{names[1]} {_few(keyed[1])} (files pair by name without extension, e.g. 01.png with 01.tif)"
        )
    return FileMatch(
        [(keyed[0][key], keyed[1][key]) for key in common],
        [path for key, path in keyed[0].items() if key not in keyed[1]],
        [path for key, path in keyed[1].items() if key not in keyed[0]],
    )


OTHER_TOOLS_SUFFIXES = ("_cp_masks", "_masks", "_mask")  # Cellpose's label files (x_cp_masks.png, x_masks.tif), ...


def _other_tools_names(second: dict[str, Path], first: dict[str, Path]) -> dict[str, Path]:
    """`second` (files by base name) with the names other tools give label files (`x_cp_masks.png`, `x_masks.tif`,
    `x_mask.png`: `OTHER_TOOLS_SUFFIXES`) keyed by their image's base name, where that image is in `first` and no
    file of `second` has its name already. Other keys are kept.

    >>> sorted(_other_tools_names({"a_cp_masks": Path("a_cp_masks.png"), "b": Path("b.tif")}, {"a": Path("a.png")}))
    ['a', 'b']
    """
    renamed: dict[str, Path] = {}
    for key, path in second.items():
        if key not in first:
            for suffix in OTHER_TOOLS_SUFFIXES:
                stem = key.removesuffix(suffix)
                if stem != key and stem in first and stem not in second and stem not in renamed:
                    key = stem
                    break
        renamed[key] = path
    return renamed


LABEL_FILE_SUFFIXES = ("_labels", *OTHER_TOOLS_SUFFIXES)  # a label file's name: x_labels.tif, x_cp_masks.png, ...


def split_beside(files: Sequence[str | Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """(images, labels, others) of the files of one folder that holds images and their labels side by side
    (Cellpose's layout; the napari plugin's autosaved annotations): labels are the annotations the plugin
    autosaved (`cells.tif.unet-labels.tif`) and the files named as label files of another file there (`x_labels`,
    `x_cp_masks`, `x_masks`, `x_mask` beside `x.*`), one per image (`_label_file_rank`); others are `predict`'s
    probability maps of another file (`x_probs.tif`) and the label files set aside for another of the same
    image; the rest are images. Order kept; reads nothing.

    >>> images, labels, others = split_beside(["a.png", "a_cp_masks.png", "b.tif", "b.tif.unet-labels.tif",
    ...     "c_masks.png", "d.png", "d_probs.tif"])
    >>> [p.name for p in images], [p.name for p in labels], [p.name for p in others]
    (['a.png', 'b.tif', 'c_masks.png', 'd.png'], ['a_cp_masks.png', 'b.tif.unet-labels.tif'], ['d_probs.tif'])
    """
    files = [Path(f) for f in files]
    stems = {file_stem(f) for f in files}

    def named_after_another(path: Path, suffixes: Sequence[str]) -> bool:
        stem = file_stem(path)
        return any(stem.endswith(s) and stem[: -len(s)] in stems for s in suffixes if len(stem) > len(s))

    labels = [f for f in files if is_annotation(f) or named_after_another(f, LABEL_FILE_SUFFIXES)]
    others = [f for f in files if f not in labels and named_after_another(f, ("_probs",))]
    images = [f for f in files if f not in labels and f not in others]
    kept: dict[str, Path] = {}
    for path in sorted(labels, key=_label_file_rank):  # one label file per image: the most recent kind first
        key = base_name(path) if is_annotation(path) else _image_stem(path)
        if key in kept:
            others.append(path)
        else:
            kept[key] = path
    return images, [f for f in labels if f in kept.values()], others


def list_label_files(path: str | Path, what: str = "label") -> list[Path]:
    """The label files of `path` (`list_files`): of a folder that holds images and their labels side by side
    (Cellpose's layout, `split_beside`; `predict`'s outputs there set aside), the label files alone; else every
    image file."""
    files = list_files(path, what)
    if not Path(path).is_dir():
        return files
    _, labels, _ = split_beside(separate_outputs(files)[0])  # predict's x_labels.tif beside x.png is no truth
    return labels or files


def _image_stem(path: Path, suffixes: Sequence[str] = LABEL_FILE_SUFFIXES) -> str:
    """`x` of a label file named after its image (`x_labels`, `x_cp_masks`, `x_masks`, `x_mask`: `suffixes`)."""
    stem = file_stem(path)
    for suffix in suffixes:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _label_file_rank(path: Path) -> int:
    """Which of several label files of one image `split_beside` keeps (lowest): the plugin's annotations as saved
    now (`x.tif.unet-labels.tif`), as saved before 2026-12 (`x.unet-labels.tif`), then `_labels` (a corrected
    `predict` result) and the other tools' names in `LABEL_FILE_SUFFIXES` order."""
    if is_annotation(path):
        image_name = path.name[: -len(ANNOTATION_SUFFIX)]
        return 0 if file_stem(image_name) != image_name else 1
    stem = file_stem(path)
    return 2 + next(i for i, suffix in enumerate(LABEL_FILE_SUFFIXES) if stem.endswith(suffix))


def _by_base_name(files: Sequence[Path], name: str, prefer: str | None = None) -> dict[str, Path]:
    """`files` by base name; of two files with one base name, the one with the suffix `prefer`, or of the napari
    plugin's annotations of one image saved under both names (`x.tif.unet-labels.tif`, the older
    `x.unet-labels.tif`), the newer name's; any other two are refused."""
    keyed: dict[str, Path] = {}
    for path in map(Path, files):
        key = base_name(path)
        two = (keyed[key], path) if key in keyed else ()
        if two and all(map(is_annotation, two)) and _label_file_rank(two[0]) != _label_file_rank(two[1]):
            path = min(two, key=_label_file_rank)
        elif key in keyed:
            preferred = [p for p in (keyed[key], path) if prefer and file_stem(p).endswith(prefer)]
            if len(preferred) != 1:
                raise ValueError(f"two {name} files have the base name {key!r}: {keyed[key].name} and {path.name}")
            path = preferred[0]
        keyed[key] = path
    return keyed


def check_distinct_names(inputs: Sequence[str | Path], out_dir: str | Path) -> None:
    """Refuse two inputs with the same base name (`a.tif` and `a.png`, `a.zarr` and `a.tif`): their outputs in
    `out_dir` would overwrite each other. Reads nothing.

    >>> check_distinct_names(["x/a.tif", "y/a.png"], "out")
    Traceback (most recent call last):
    ...
    ValueError: x/a.tif and y/a.png would both be written to out/a_labels.*: rename one
    """
    seen: dict[str, Path] = {}
    for path in map(Path, inputs):
        name = base_name(path)
        if name in seen:
            raise ValueError(
                f"{seen[name]} and {path} would both be written to {Path(out_dir) / name}_labels.*: rename one"
            )
        seen[name] = path


def predict_output_names(path: str | Path) -> tuple[str, ...]:
    """The names of the image files `predict` may write for the input `path` (with or without --workers).

    >>> predict_output_names("cells/01.png")
    ('01_labels.tif', '01_probs.tif', '01_labels.ome.zarr', '01_probs.ome.zarr')
    """
    stem = base_name(path)
    return tuple(f"{stem}_{kind}{suffix}" for suffix in (".tif", ".ome.zarr") for kind in ("labels", "probs"))


def separate_outputs(files: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(inputs, outputs): `files` without, and the files among them that `predict` writes for another of `files`
    in the same folder (`predict_output_names`): results written into the input folder are not inputs of the
    next run. Only a file named without `_labels`/`_probs` owns outputs: `x_labels.tif` without an `x.*` beside
    it stays an input. Order kept; reads nothing.

    >>> inputs, outputs = separate_outputs(["in/a.png", "in/a_labels.tif", "in/b_labels.tif", "other/a_probs.tif"])
    >>> [p.as_posix() for p in inputs], [p.as_posix() for p in outputs]
    (['in/a.png', 'in/b_labels.tif', 'other/a_probs.tif'], ['in/a_labels.tif'])
    """
    files = [Path(f) for f in files]
    owners = {(f.parent, base_name(f)) for f in files if file_stem(f) == base_name(f)}
    outputs = [
        f
        for f in files
        if file_stem(f) != base_name(f) and (f.parent, base_name(f)) in owners and f.name in predict_output_names(f)
    ]
    return [f for f in files if f not in outputs], outputs


def list_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(inputs, outputs): the image files and `.zarr` stores of `paths` (files or folders; `list_files`, without the
    plugin's autosaved annotations), and those of them left out as `predict`'s outputs of another
    (`separate_outputs`), as the plugin's annotations named as files (`data/*.tif` in a shell), or as label files
    named after an image beside them (Cellpose's `x_cp_masks.png`, `x_masks.tif`, `x_mask.png`), to be named in a
    note (`describe_own_outputs`)."""
    listed = [f for path in paths for f in list_files(path, "input image", zarr=True, annotations=False)]
    inputs, outputs = separate_outputs([f for f in listed if not is_annotation(f)])
    stems = {(f.parent, file_stem(f)) for f in listed}
    masks = [
        f for f in inputs if (f.parent, _image_stem(f, OTHER_TOOLS_SUFFIXES)) in stems - {(f.parent, file_stem(f))}
    ]
    return [f for f in inputs if f not in masks], outputs + masks + [f for f in listed if is_annotation(f)]


def is_annotation(path: str | Path) -> bool:
    """A file the napari plugin autosaved annotations to (`cells.tif.unet-labels.tif`; `ANNOTATION_SUFFIX`)."""
    name = Path(path).name
    return name.endswith(ANNOTATION_SUFFIX) and len(name) > len(ANNOTATION_SUFFIX)


def describe_own_outputs(outputs: Sequence[Path], shown: int = 5) -> str:
    """What was left out of the inputs as `predict`'s outputs (`separate_outputs`), naming the first `shown`.

    >>> describe_own_outputs([Path("in/a_labels.tif")])
    "skipped 1 file that is predict's output of another input: a_labels.tif"
    """
    annotations = [p for p in outputs if is_annotation(p)]
    masks = [p for p in outputs if not is_annotation(p) and file_stem(p).endswith(OTHER_TOOLS_SUFFIXES)]
    outputs = [p for p in outputs if p not in annotations and p not in masks]
    if len(outputs) == 1:
        what = "file that is predict's output of another input"
    else:
        what = "files that are predict's outputs of other inputs"
    said = [
        f"skipped {len(paths)} {what}: " + ", ".join(p.name for p in paths[:shown]) + (", ..." * (len(paths) > shown))
        for paths, what in (
            (outputs, what),
            (annotations, "file(s) of the napari plugin's annotations, not images"),
            (masks, "label file(s) named after an image beside them (x_masks.png)"),
        )
        if paths
    ]
    return "; ".join(said)


def _store_member(path: Path) -> tuple[Path, tuple[str, ...]] | None:
    """(the outermost zarr store holding `path`, `path`'s parts inside it) for an array or group given by its
    path inside a store (`slide.zarr/0`, `plate.zarr/A/1/0`, also as `0` or `../0` from inside the store); None
    for anything else, a store itself included. Only folders that hold zarr metadata count: a plain folder named
    `project.zarr` around `slide.zarr` is not part of the name."""
    if path.suffix.lower() == ZARR_SUFFIX or not is_zarr_store(path):
        return None
    path = Path(os.path.normpath(path.absolute()))  # `0` and `../0` from inside the store: its own name
    store = None
    for parent in path.parents:
        if not is_zarr_store(parent):
            break
        store = parent
    return None if store is None else (store, path.relative_to(store).parts)


def file_stem(path: str | Path) -> str:
    """The file name without its image suffix ('01_labels' for '01_labels.ome.tif', 'a.v2' for 'a.v2.tif').

    >>> file_stem("cells.OME.TIF"), file_stem("a.v2.tif"), file_stem("run.zarr"), file_stem("x_labels.ome.zarr")
    ('cells', 'a.v2', 'run', 'x_labels')
    """
    name = Path(path).name
    lower = name.lower()
    for suffix in (*(".ome" + s for s in TIFF_SUFFIXES), ".ome" + ZARR_SUFFIX, *IMAGE_SUFFIXES, ZARR_SUFFIX):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _few(keys: Sequence[str] | dict[str, Any], shown: int = 4) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
    return "(" + ", ".join(keys[:shown]) + more + ")"


# ---------------------------------------------------------------------------------------------- training


def read_training_image(path: str | Path, low: float = 1.0, high: float = 99.8, channels=None) -> np.ndarray:
    """An image file as the network sees it: (H, W) or (C, H, W) float32, normalised with its percentiles.

    channels: a `channels.ChannelChoice` applied first (channels picked, or grey conversion); None keeps all.
    """
    image, axes = read_image(path)
    if channels is not None:
        try:
            image, axes = channels.apply(image, axes)
        except ChannelChoiceError as error:
            raise ChannelChoiceError(f"{path}: {error}") from None
    if axes not in ("YX", "CYX"):
        raise ValueError(
            f"training images must be single 2-D planes (axes YX or CYX); {path} has axes {axes!r} "
            f"and shape {tuple(image.shape)}: save each plane with its labels as a separate file"
        )
    try:
        check_image(image, axes)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return np.asarray(normalize_percentile(np.asarray(image), low, high, axes), dtype=np.float32)


def read_training_pair(
    image_path: str | Path,
    labels_path: str | Path,
    mask_path: str | Path | None = None,
    low: float = 1.0,
    high: float = 99.8,
    channels=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(image (H, W) or (C, H, W) float32 normalised, labels (H, W), mask (H, W) bool or None), shapes checked.

    mask file: nonzero = annotated (sparse annotation); labels may also use the reserved "not annotated"
    value (see `napari_unet.targets`). channels: see `read_training_image`. Labels that look like an image (many
    values, each over many separate regions: an image given as labels, or image and labels swapped) are refused
    as `evaluate` refuses them (`validation.check_instance_regions`); a binary mask (Fiji's 0/255) is used as it
    is (its cells are its connected components, `targets`).
    """
    from .targets import reserved_value
    from .validation import check_instance_regions

    image = read_training_image(image_path, low, high, channels)
    labels = read_labels(labels_path)
    if labels.shape != image.shape[-2:]:
        raise ValueError(
            f"labels {Path(labels_path).name} have shape {labels.shape} but image {Path(image_path).name} "
            f"has {image.shape[-2:]} (height, width): they must be the same size"
        )
    check_instance_regions(labels, f"the labels file {labels_path}", ignore=reserved_value(labels))
    mask = None
    if mask_path is not None:
        mask = read_labels(mask_path) != 0
        if mask.shape != labels.shape:
            raise ValueError(
                f"mask {Path(mask_path).name} has shape {mask.shape} but labels {Path(labels_path).name} "
                f"have {labels.shape}: they must be the same size"
            )
    return image, labels, mask


def split_by_image(items: Sequence[T], fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """(train, validation): a random `fraction` of whole `items` (at least one) held out, deterministic in `seed`.

    Order within each part follows `items`. At least one item stays for training.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    n = len(items)
    if n < 2:
        raise ValueError(f"splitting by image needs at least 2 images, got {n}: give validation images instead")
    n_val = min(n - 1, max(1, round(fraction * n)))
    held = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


# ------------------------------------------------------------------------------------------- segmentation


def read_input(path: str | Path, axes: str | None = None) -> tuple[Any, str]:
    """(image, axes) of a file to segment: TIFF (memory-mapped when possible), PNG/JPEG or a `.zarr` array.

    Axes are canonical ("TZCYX" order). A zarr store (a `.zarr` folder, or any zarr array or group:
    `ome_zarr.is_zarr_store`) is read lazily through dask (`ome_zarr.read_zarr`): its axes come from `axes`,
    OME-Zarr multiscales metadata, or are guessed from the shape; a group is read at its full resolution.
    """
    path = Path(path)
    if path.suffix.lower() != ZARR_SUFFIX and not is_zarr_store(path):
        return read_image(path, axes)
    return read_zarr(path, axes)


def plane_indices(shape: tuple[int, ...], axes: str) -> list[tuple[int, ...]]:
    """Indices over the leading T and Z axes: one per 2-D plane ((Y, X) or (C, Y, X)) to segment."""
    lead = [n for n, a in zip(shape, axes) if a in "TZ"]
    return [tuple(int(i) for i in index) for index in np.ndindex(*lead)] if lead else [()]


@dataclass(frozen=True)
class Outputs:
    """Where `segment_file` writes: `<stem>_labels.tif` and, on request, `<stem>_probs.tif`."""

    labels: Path
    probs: Path | None


def output_paths(path: str | Path, out_dir: str | Path, probabilities: bool = False) -> Outputs:
    stem = base_name(path)
    out_dir = Path(out_dir)
    return Outputs(out_dir / f"{stem}_labels.tif", out_dir / f"{stem}_probs.tif" if probabilities else None)


@dataclass(frozen=True)
class PlaneDone:
    """Progress of `segment_file`: plane `index` (0-based) of `total` is written, with `objects` objects."""

    index: int
    total: int
    objects: int
    diameter: float | None = None  # the objects' diameter (px) the image was scaled by; None: none given or found


def _sized_plane(image, planes: list[tuple[int, ...]], axes: str):
    """The plane the objects' diameter of a stack is estimated on: the first that is not constant (a black first
    frame has no object to measure), else the first. Each is judged on a bounded strided sample
    (`io.channel_values`), so a lazy plane is never read whole."""
    plane_axes = "".join(a for a in axes if a in "CYX")
    for index in planes:
        values = channel_values(image[index], plane_axes)
        if values.size and values.min() != values.max():
            return image[index]
    return image[planes[0]]


def network_axes(bundle, image, axes: str, name: str = "the image", choice: ChannelChoice | None = None) -> str:
    """The axes of `image` (canonical `axes`) once the channel `choice` (None: the model's) is applied, its channel
    count checked against the network's (`ModelBundle.prepare`'s error, naming `name`): from the shape alone,
    nothing is read, copied or converted (the choice is applied to a lazy stand-in of the same shape and dtype;
    `dask.array.from_array` would copy a memory-mapped array whole)."""
    import dask.array as da

    stand_in = da.zeros(tuple(image.shape), dtype=image.dtype, chunks=-1)
    return bundle.prepare(stand_in, axes, name, choice)[1]


@dataclass(frozen=True)
class _ChosenPlanes:
    """The planes of `image` (canonical `axes`, as read from a file) by their index over T and Z, each given the
    channel `choice` as it is read (`ModelBundle.prepare`): a grey conversion or a pick of channels holds one
    plane, never the whole stack. With `choice` None, the planes as they are."""

    bundle: Any
    image: Any
    axes: str
    choice: ChannelChoice | None = None

    def __getitem__(self, index: tuple[int, ...]) -> Any:
        plane = self.image[index] if index else self.image
        if self.choice is None:
            return plane
        return self.bundle.prepare(plane, self.axes[len(index) :], choice=self.choice)[0]


def segment_file(
    bundle,
    image,
    axes: str,
    outputs: Outputs,
    *,
    postprocess=None,
    tile_size: int | None = None,
    device="auto",
    batch_size: int = 1,
    tta: bool = False,
    pixel_size=None,
    spacing: StackSpacing | None = None,
    diameter: float | str | None = "auto",
    settings: dict[str, Any] | None = None,
    channels: ChannelChoice | None = None,
) -> Iterator[PlaneDone]:
    """Segment `image` (axes over "TZCYX", canonical) plane by plane into TIFF files; yields after each plane.

    labels: int32 instance ids with the image's axes minus C (ids restart at 1 in every plane); probs: float32
    foreground probability, same axes. Both are written through memory-mapped TIFFs, so at most one plane's
    probabilities are in memory (on a temporary memory-mapped file when a plane's exceed `LARGE_OUTPUT_BYTES`).
    The files are written under temporary names (`io.temporary_sibling`) and renamed to `outputs` once the last
    plane is done: a run that is stopped (the generator closed), fails or is killed leaves no file that looks
    finished (an existing output stays as it was until the rename).
    Each plane is normalised with its own percentiles, as the training images were.
    postprocess: a `PostprocessConfig` (default: the bundle's). pixel_size: a `metadata.PixelSize` stored in
    the output TIFFs (None: none); spacing: the input's Z step and frame interval (`metadata.StackSpacing`, from
    `metadata.read_spacing`), stored beside it (`io.tiff_layout`: the int32 labels of such a stack are an OME-TIFF).
    diameter: the objects' diameter (px), "auto" or None (`ModelBundle.scale_factor`), resolved once, on the first
    plane that is not constant (`_sized_plane`), for the whole file; with a factor other than 1 each plane is
    rescaled in memory (planes too large for that are refused: `scale.check_rescalable`).
    settings: what the outputs depend on (JSON-serialisable), recorded in each output TIFF (`SETTINGS_TAG`, read
    back by `read_settings`), so that a rerun knows whether a finished output is its own; None records nothing.
    channels: a channel choice (`channels.ChannelChoice`) applied to each plane as it is read (`ModelBundle.prepare`,
    which checks the channel count): `image` is then as read from its file, and a stack is never converted whole
    (a grey conversion holds one float32 plane); None: `image` is the network's input already.
    """
    from .device import select_device

    postprocess = bundle.postprocess if postprocess is None else postprocess
    device = select_device(device)
    out_axes = axes.replace("C", "")
    out_shape = tuple(n for n, a in zip(image.shape, axes) if a != "C")
    planes = plane_indices(tuple(image.shape), axes)
    chosen = _ChosenPlanes(bundle, image, axes, channels)
    chosen_axes = axes if channels is None else network_axes(bundle, image, axes, choice=channels)
    sized = None  # a plane is read to estimate the objects' diameter only when it is estimated
    if diameter == "auto" and bundle.object_diameter is not None:
        sized = _sized_plane(chosen, planes, chosen_axes) if len(planes) > 1 else chosen[planes[0]]
    used = bundle.resolve_diameter(sized, diameter, device=device)
    factor = 1.0 if used is None else diameter_factor(bundle.object_diameter, used)
    finals = [path for path in (outputs.labels, outputs.probs) if path is not None]
    for path in finals:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
    staging = [temporary_sibling(path) for path in finals]
    complete = False
    try:
        labels_out = _create_tiff(staging[0], out_shape, np.int32, out_axes, pixel_size, spacing, settings)
        probs_out = (
            _create_tiff(staging[1], out_shape, np.float32, out_axes, pixel_size, spacing, settings)
            if outputs.probs
            else None
        )
        for number, index in enumerate(planes):
            plane = chosen[index]
            fg = _foreground(bundle, plane, factor, tile_size, device, batch_size, tta)
            labels = bundle.labels_of(fg, factor, postprocess)
            labels_out[index] = labels
            if probs_out is not None:
                probs_out[index] = fg
            del fg
            last = number + 1 == len(planes)
            if last:  # the files are renamed into place before the last plane is reported
                for out in (labels_out, probs_out):
                    if out is not None:
                        out.flush()
                del labels_out, probs_out
                for temporary, path in zip(staging, finals):
                    os.replace(temporary, path)
                complete = True
            yield PlaneDone(number, len(planes), int(labels.max(initial=0)), used)
    finally:
        if not complete:  # stopped, interrupted or failed: no file that looks finished
            for temporary in staging:
                temporary.unlink(missing_ok=True)


def _foreground(bundle, plane, factor: float, tile_size, device, batch_size: int, tta: bool) -> np.ndarray:
    """The foreground probability (H, W) float32 of one raw plane (H, W) or (C, H, W), the plane resized by
    `factor` before the network (`ModelBundle.predict_rescaled`; `tta`: mean over the 8 symmetries)."""
    classes, (h, w) = bundle.net.config.num_classes, plane.shape[-2:]
    options = {"tile_size": tile_size, "device": device, "batch_size": batch_size, "tta": tta}
    if classes * h * w * 4 <= LARGE_OUTPUT_BYTES:
        return bundle.predict_rescaled(plane, factor, **options)[1]
    with tempfile.TemporaryFile() as scratch:
        out = np.memmap(scratch, dtype=np.float32, mode="w+", shape=(classes, h, w))
        bundle.predict_rescaled(plane, factor, out=out, **options)
        return np.array(out[1])


def _create_tiff(
    path: Path,
    shape: tuple[int, ...],
    dtype,
    axes: str,
    pixel_size=None,
    spacing: StackSpacing | None = None,
    settings: dict[str, Any] | None = None,
) -> np.memmap:
    """A new TIFF at `path`, memory-mapped for writing, in the layout `io.write_tiff` uses (`io.tiff_layout`: read
    back with axes), with `pixel_size` (a `metadata.PixelSize` or None), `spacing` (Z step, frame interval) and
    `settings` (JSON in the tag `SETTINGS_TAG` of the first page; None: no tag)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    layout = tiff_layout(shape, dtype, axes, pixel_size, spacing)
    if settings is not None:
        layout["extratags"] = [(SETTINGS_TAG, "s", 0, json.dumps(settings, sort_keys=True), True)]
    mapped = tifffile.memmap(path, shape=shape, dtype=dtype, **layout)
    reserve(path)
    return mapped


def output_settings(
    bundle,
    postprocess,
    *,
    model: str,
    diameter: float | str | None,
    tta: bool = False,
    precision: str = "auto",
    channels=None,
    axes: str | None = None,
    pixel_size=None,
) -> dict[str, Any]:
    """What the outputs of a `predict` run depend on, as `segment_file` records them (`settings`) and
    `read_settings` reads them back: the model (`model`, its name, for messages; "weights", `model_digest`: whether
    it is the same model), the post-processing (a `PostprocessConfig`), `diameter` (--diameter; None for a model
    without an object diameter, which never rescales), `tta`, `precision` (--precision), the channel choice
    (`channels`, a `ChannelChoice`; None: the model's), `axes` (--axes) and the given `pixel_size` (--pixel-size, a
    `metadata.PixelSize`; None: each input's own). Not the device, tile or batch size (the same labels, up to
    rounding). Returned as read back from JSON (tuples become lists), so that it compares equal to a record."""
    settings = {
        "model": model,
        "weights": model_digest(bundle),
        "postprocess": postprocess.to_dict(),
        "diameter": diameter if bundle.object_diameter is not None else None,
        "tta": tta,
        "precision": precision,
        "channels": (channels or bundle.channels).describe(),
        "axes": axes,
        "pixel_size": f"{pixel_size.y:g} x {pixel_size.x:g} {pixel_size.unit}" if pixel_size else None,
    }
    return json.loads(json.dumps(settings))


def read_settings(path: str | Path) -> dict[str, Any] | None:
    """The settings an output TIFF was written with (`segment_file`'s `settings`), or None: none recorded (written
    by another program or an earlier version), or not a TIFF that can be read."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            tag = tiff.pages[0].tags.get(SETTINGS_TAG)
            settings = json.loads(tag.value) if tag is not None else None
    except (OSError, ValueError, IndexError):  # tifffile's errors are ValueErrors; JSON's too
        return None
    return settings if isinstance(settings, dict) else None


def same_settings(recorded: dict | None, wanted: dict) -> bool:
    """Whether an output recorded with `recorded` (None: none) is one this run would write (the model's name
    aside: `nuclei` and `builtin:nuclei`, or a moved model folder, are the same weights; the input's identity,
    `input_identity`, is compared on its own by `same_input`)."""
    if recorded is None:
        return False
    aside = ("model", "input")
    return {k: v for k, v in recorded.items() if k not in aside} == {k: v for k, v in wanted.items() if k not in aside}


def input_identity(path: str | Path) -> dict[str, Any] | None:
    """What tells a file from a replaced one of the same name, recorded with its outputs (`settings["input"]`):
    its size in bytes and its modification time (ns). For a folder (a zarr store): a digest of its metadata files
    (shapes, chunks, dtypes, attributes), and the number, total size and newest modification time of its other
    files (the chunks), found by walking the folder without reading them. None for anything else."""
    path = Path(path)
    if path.is_file():
        status = path.stat()
        return {"bytes": status.st_size, "modified_ns": status.st_mtime_ns}
    if not path.is_dir():
        return None
    metadata, chunks, size, newest = hashlib.sha1(), 0, 0, 0
    for folder, subfolders, names in os.walk(path):
        subfolders.sort()
        for name in sorted(names):
            file = Path(folder, name)
            if name in ZARR_METADATA:
                metadata.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
            else:
                status = file.stat()
                chunks, size, newest = chunks + 1, size + status.st_size, max(newest, status.st_mtime_ns)
    return {"metadata": metadata.hexdigest()[:16], "chunks": chunks, "bytes": size, "modified_ns": newest}


def file_settings(settings: dict | None, path: str | Path) -> dict | None:
    """A run's `settings` as recorded in the outputs of the input `path`: with its identity (`input_identity`),
    so that an image replaced under its name is not skipped as done (`same_input`)."""
    return None if settings is None else {**settings, "input": input_identity(path)}


def replaced_input(output: str | Path, path: str | Path) -> str:
    """The error for an output of `path` segmented from another version of it (`same_input`)."""
    return (
        f"the output {output} was segmented from another version of {path} (its size or modification time "
        "differ): segment it again with --overwrite, or choose another --out"
    )


def same_input(recorded: dict | None, path: str | Path) -> bool:
    """Whether the output recorded with `recorded` was segmented from `path` as it is now (True when the record
    holds no identity: written before it was recorded, or, before December 2026, from a folder)."""
    was = (recorded or {}).get("input")
    return was is None or was == input_identity(path)


def settings_difference(recorded: dict, wanted: dict, shown: int = 4) -> str:
    """The settings that differ, in words: "threshold 0.5 (now 0.3), tta false (now true)".

    >>> settings_difference({"model": "a", "weights": "1", "tta": False}, {"model": "b", "weights": "2", "tta": True})
    'model a (now b), tta false (now true)'
    """

    def flat(settings: dict) -> dict:
        return {k: v for k, v in settings.items() if not isinstance(v, dict)} | settings.get("postprocess", {})

    def text(value) -> str:
        return "not given" if value is None else json.dumps(value) if isinstance(value, bool) else str(value)

    old, new = flat(recorded), flat(wanted)
    changed = []
    if old.get("weights") != new.get("weights"):
        same_name = old.get("model") == new.get("model")
        changed.append(f"model {old.get('model')} " + ("(other weights now)" if same_name else f"(now {new['model']})"))
    for key in sorted((old.keys() | new.keys()) - {"model", "weights"}):
        if old.get(key) != new.get(key):
            changed.append(f"{key} {text(old.get(key))} (now {text(new.get(key))})")
    more = f" and {len(changed) - shown} more" if len(changed) > shown else ""
    return ", ".join(changed[:shown]) + more


def existing_output(path: Path, recorded: dict[str, Any] | None, wanted: dict[str, Any]) -> str:
    """The refusal of an existing output `path` recorded with other settings (`recorded`; None: none recorded)."""
    why = "" if recorded is None else f" from a run with {settings_difference(recorded, wanted)}"
    return f"the output {path} exists{why}: replace it with --overwrite, or choose another path"


def model_digest(bundle) -> str:
    """A short hash of what a model computes before post-processing: its network's configuration, its
    normalisation and its weights (two loads of one model folder give the same digest)."""
    digest = hashlib.sha1(
        json.dumps([bundle.net.config.to_dict(), bundle.normalization.to_dict()], sort_keys=True).encode()
    )
    for key, weights in sorted(bundle.net.state_dict().items()):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(weights.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()[:16]


def reserve(path: Path) -> None:
    """Allocate the disk space of the (sparse) file `path` now: writing into a memory-mapped page the disk cannot
    hold kills the process with SIGBUS, which no handler catches; a full disk is an OSError here instead. File
    systems that cannot allocate ahead (EOPNOTSUPP, EINVAL) are left as they are."""
    import errno

    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, os.fstat(file.fileno()).st_size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def count_planes(image, axes: str) -> int:
    return math.prod(n for n, a in zip(image.shape, axes) if a in "TZ")
