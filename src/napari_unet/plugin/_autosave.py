"""Nothing the user made is lost: where annotations and models are autosaved, and how they are found again.

Annotations used for training go next to the image's file (`cells.tif` -> `cells.tif.unet-labels.tif`); when that
folder is not writable, or the image has no file, they go to `<root>/annotations/`, and `<root>/annotations/
index.json` maps each image file to its annotations so that they are offered back when the image is opened
again. Annotations beside an image that a new save would replace with different ones (an earlier session's,
not restored before painting anew) are first copied to `<root>/annotations/previous/`. Models go to
`<root>/models/<time>-<image name>/` (written atomically by `modelfile.save_model`).

The annotations keep the image's calibration: the pixel size of its layer, else of its file, and the file's Z step
and frame interval are written into their TIFF (`io.write_tiff`), so that opened on their own they lie over it.

Every file is written atomically (`io.atomic_write`): a napari killed mid-save leaves the previous annotations,
never a half-written file. Beside each annotation file in `<root>/annotations/` a small record
(`<name>.unet-labels.json`: the image it belongs to) is written, so that an index that cannot be read (a disk
error, a hand edit) is kept aside as `index.json.unreadable-<time>` and rebuilt from the records, never
overwritten.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.io import atomic_write, read_labels, write_tiff
from napari_unet.metadata import PixelSize, read_pixel_size, read_spacing
from napari_unet.pipeline import ANNOTATION_SUFFIX

SIDECAR_SUFFIX = ANNOTATION_SUFFIX  # ".unet-labels.tif": image listings (`pipeline.list_files`) skip these
RECORD_SUFFIX = ".unet-labels.json"
INDEX_FILE = "index.json"


def default_root() -> Path:
    """~/.napari-unet/autosave (a dock's constructor can choose another root)."""
    return Path.home() / ".napari-unet" / "autosave"


def safe_name(name: str) -> str:
    """A file-name-safe version of a layer name: 'cells [1]' -> 'cells-1'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "image"


def _path_tag(image_path: str | Path) -> str:
    """8 hex digits of the image file's full path: a/cells.tif and b/cells.tif saved in one folder stay apart."""
    return hashlib.sha1(str(Path(image_path).resolve()).encode()).hexdigest()[:8]


def sidecar_path(image_path: str | Path) -> Path:
    """`cells.tif` -> `cells.tif.unet-labels.tif` in the same folder: the image's whole name, so that `cells.tif`,
    `cells.ome.tif` and `cells.png` side by side never share (and overwrite) one file of annotations."""
    image_path = Path(image_path)
    return image_path.with_name(image_path.name + SIDECAR_SUFFIX)


def legacy_sidecar_path(image_path: str | Path) -> Path:
    """Where versions before 2026-12 saved them: `cells.tif` -> `cells.unet-labels.tif` (`cells.ome.tif` and
    `cells.png` too, which is why that changed). Still offered back when nothing newer is found."""
    image_path = Path(image_path)
    stem = image_path.stem.removesuffix(".ome") if image_path.suffix else image_path.name
    return image_path.with_name(stem + SIDECAR_SUFFIX)


def is_annotation_file(path: str | Path) -> bool:
    """True for files written by `save_annotations` (never offered annotations of their own)."""
    return Path(path).name.endswith(SIDECAR_SUFFIX)


def model_folder(root: str | Path, name: str) -> Path:
    """A new folder name for a model trained on the layer `name`: <root>/models/<YYYYmmdd-HHMMSS>-<name>."""
    return Path(root) / "models" / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_name(name)}"


def save_annotations(
    labels: np.ndarray,
    root: str | Path,
    image_path: str | Path | None,
    name: str,
    pixel_size: PixelSize | None = None,
    on_kept: Callable[[Path], Any] | None = None,
    axes: str | None = None,
) -> Path:
    """Write `labels` (..., H, W) as a TIFF and remember it for `image_path`; returns where it went.

    The TIFF carries `pixel_size` (the image layer's), else the image file's (`metadata.read_pixel_size`), and the
    file's Z step (in that pixel size's unit) and frame interval (`metadata.read_spacing`). Annotations already
    beside the image that differ from `labels` (an earlier session's, not restored before painting anew) are
    copied to `<root>/annotations/previous/` first, and `on_kept` is called with the copy's path: they are never
    overwritten unkept. axes: the labels' axes over "TZYX" (the image's, without C: "TYX" for a time series);
    None: "YX", "ZYX" or "TZYX" by their dimensions."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"annotations must be integer labels, got dtype {labels.dtype}")
    if axes is not None and (len(axes) != labels.ndim or not axes.endswith("YX") or set(axes) - set("TZYX")):
        axes = None  # not the labels' (a layer changed since it was read): by their dimensions
    axes = axes or ("TZYX"[-labels.ndim :] if 2 <= labels.ndim <= 4 else None)
    if axes is None:
        raise ValueError(f"annotations must be (H, W), (Z, H, W) or (T, Z, H, W), got shape {labels.shape}")
    labels = labels.astype(np.uint16) if labels.max(initial=0) < 65535 and labels.min(initial=0) >= 0 else labels
    spacing = None
    if image_path is not None:
        pixel_size = pixel_size or read_pixel_size(image_path)
        spacing = read_spacing(image_path, pixel_size)
        target = sidecar_path(image_path)
        try:
            kept = _keep_previous(target, labels, root, image_path)
            write_tiff(target, labels, axes, pixel_size=pixel_size, spacing=spacing)
        except OSError:
            pass  # a read-only data folder (or the earlier annotations could not be kept): to the autosave root
        else:
            if kept is not None and on_kept is not None:
                on_kept(kept)
            try:
                _remember(root, image_path, target)
            except OSError:
                pass  # the index only matters for saves that went to the root: the side-car is looked for first
            return target
    folder = Path(root) / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    stem = safe_name(Path(image_path).stem if image_path is not None else name)
    if image_path is not None:  # a/cells.tif and b/cells.tif saved in the same second: two files, not one
        stem += "-" + _path_tag(image_path)
    target = folder / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}{SIDECAR_SUFFIX}"
    write_tiff(target, labels, axes, pixel_size=pixel_size, spacing=spacing)
    if image_path is not None:
        record = {"image": str(Path(image_path).resolve()), "labels": target.name}
        with atomic_write(target.with_name(target.name.removesuffix(SIDECAR_SUFFIX) + RECORD_SUFFIX)) as staging:
            staging.write_text(json.dumps(record))
        _remember(root, image_path, target)
    return target


def _keep_previous(target: Path, labels: np.ndarray, root: str | Path, image_path: str | Path) -> Path | None:
    """Copy the annotations at `target` to `<root>/annotations/previous/` when they differ from `labels` (or cannot
    be read to tell); returns the copy's path, None when there was nothing to keep."""
    if not target.is_file():
        return None
    try:
        if np.array_equal(load_annotations(target), labels):
            return None
    except (OSError, ValueError):
        pass  # unreadable here: kept all the same
    folder = Path(root) / "annotations" / "previous"
    folder.mkdir(parents=True, exist_ok=True)
    stem = safe_name(Path(image_path).name) + "-" + _path_tag(image_path)
    kept = folder / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}{SIDECAR_SUFFIX}"
    with atomic_write(kept) as staging:
        shutil.copy2(target, staging)
    return kept


def find_annotations(image_path: str | Path, root: str | Path) -> Path | None:
    """The autosaved annotations of `image_path`: the newer of the side-car file and the one recorded in the
    index (a save that could not write beside the image, a full disk say, went to the autosave root and left
    an older side-car), else a side-car of the former naming (`legacy_sidecar_path`)."""
    try:
        recorded = _index(root).get(str(Path(image_path).resolve()))
    except OSError:  # an unreadable index that could not be moved aside
        recorded = None
    found = [p for p in (sidecar_path(image_path), Path(recorded) if recorded else None) if p and p.is_file()]
    if found:
        return max(found, key=lambda p: p.stat().st_mtime_ns)
    legacy = legacy_sidecar_path(image_path)
    return legacy if legacy.is_file() and legacy != Path(image_path) else None


def load_annotations(path: str | Path) -> np.ndarray:
    """Read autosaved annotations back: (H, W), (Z, H, W) or (T, Z, H, W) integer labels."""
    from napari_unet.io import read_image

    labels, axes = read_image(path)
    if axes == "YX":
        return read_labels(path)
    return np.asarray(labels)


def _index(root: str | Path) -> dict[str, str]:
    """The index {image file: annotation file}; an unreadable one is kept aside and rebuilt from the records."""
    path = Path(root) / "annotations" / INDEX_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError(f"expected a JSON object of file names, got {type(data).__name__}")
        return data
    except (OSError, ValueError, RecursionError):
        return _rebuild_index(path)


def _rebuild_index(path: Path) -> dict[str, str]:
    """Move the unreadable index `path` aside (never deleted) and write a new one from the annotation records."""
    aside = path.with_name(f"{INDEX_FILE}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9}")
    try:
        path.replace(aside)
    except OSError:
        return {}  # cannot even move it: leave it alone, offer nothing from it
    index: dict[str, str] = {}
    # the newest wins: by the time the record was written (its name holds the image's name, then a hash)
    for record in sorted(path.parent.glob(f"*{RECORD_SUFFIX}"), key=lambda p: (p.stat().st_mtime_ns, p.name)):
        try:
            entry = json.loads(record.read_bytes())
            labels = path.parent / Path(entry["labels"]).name
            image = str(entry["image"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            continue
        if labels.is_file():
            index[image] = str(labels.resolve())
    _write_index(path.parent, index)
    return index


def _remember(root: str | Path, image_path: str | Path, labels_path: Path) -> None:
    folder = Path(root) / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    index = _index(root)
    index[str(Path(image_path).resolve())] = str(labels_path.resolve())
    _write_index(folder, index)


def _write_index(folder: Path, index: dict[str, str]) -> None:
    with atomic_write(folder / INDEX_FILE) as staging:
        staging.write_text(json.dumps(index, indent=1))
