"""Nothing the user made is lost: where annotations and models are autosaved, and how they are found again.

Annotations used for training go next to the image's file (`cells.tif` -> `cells.tif.unet-labels.tif`); when that
folder is not writable, or the image was opened from a URL, they go to `<root>/annotations/` (one file per image file
or URL), and `<root>/annotations/index.json` maps each image file (its full path) or URL to its annotations so that
they are offered back when the image is opened again; an image without either (made in napari) gets one file per
session there. A dock remembers what it wrote or restored for each image (`Saved`: the file, its stamp, a hash of
the labels, whether it was only restored), so that annotations it wrote are replaced at its next save, unchanged
ones not written again, and an earlier session's (restored or not) are first copied to
`<root>/annotations/previous/`, once, before a save replaces them with other labels. Models go to
`<root>/models/<time>-<image name>/` (written atomically by `modelfile.save_model`; -2, -3, … for runs started in
the same second).

The annotations keep the image's calibration: the pixel size of its layer, else of its file, and the file's Z step
and frame interval are written into their TIFF (`io.write_tiff`), so that opened on their own they lie over it.

Every file is written atomically (`io.atomic_write`): a napari killed mid-save leaves the previous annotations,
never a half-written file. Beside each annotation file in `<root>/annotations/` a small record
(`<name>.unet-labels.json`: the image it belongs to) is written, so that an index that cannot be read (a disk
error, a hand edit) is kept aside as `index.json.unreadable-<time>` and rebuilt from the records, never
overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
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
    """8 hex digits of the image file's full path (or URL): a/cells.tif and b/cells.tif saved in one folder stay
    apart."""
    return hashlib.sha1(image_id(image_path).encode()).hexdigest()[:8]


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


def model_folder(root: str | Path, name: str, taken: Collection[Path] = ()) -> Path:
    """A new folder name for a model trained on the layer `name`: <root>/models/<YYYYmmdd-HHMMSS>-<name>, with -2,
    -3, … when a folder of that name exists or is `taken` (handed out for a run that has saved nothing yet: runs
    started in the same second). Not created: a napari killed before the first save leaves no empty folder."""
    models = Path(root) / "models"
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_name(name)}"
    return next(models / n for n in _numbered(stem) if models / n not in taken and not (models / n).exists())


def _numbered(name: str) -> Iterator[str]:
    """name, name-2, name-3, …"""
    yield name
    for n in itertools.count(2):
        yield f"{name}-{n}"


@dataclass(frozen=True)
class Saved:
    """Annotations that a session wrote or restored: their file, that file's `file_stamp` then (a file written
    again since, by anyone, has another), the `labels_digest` of the labels, and whether the file was only
    restored (read: an earlier session's annotations, copied before a save first replaces them with others)."""

    path: Path
    stamp: tuple[int, ...] | None
    digest: str
    restored: bool = False

    def on_disk(self) -> bool:
        """Whether `path` is still the file that was written or read."""
        return self.stamp is not None and file_stamp(self.path) == self.stamp


def file_stamp(path: str | Path) -> tuple[int, ...] | None:
    """(device, inode, size, modification time in ns) of the file `path`, None when there is none. Every write of
    `io.atomic_write` makes a new file (renamed over the old one), so a file written again has another stamp."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def is_url(image: str | Path) -> bool:
    """Whether the image source `image` is a URL ('https://…/cells.png'): no file here, known by its address."""
    return "://" in str(image)


def image_id(image: str | Path) -> str:
    """How the index knows an image: a file by its full path, a URL (`is_url`) as it is."""
    return str(image) if is_url(image) else str(Path(image).resolve())


def labels_digest(labels: np.ndarray) -> str:
    """A hash of the labels' values, shape and dtype."""
    labels = np.ascontiguousarray(labels)
    digest = hashlib.sha1(f"{labels.dtype.str}{labels.shape}".encode())
    digest.update(memoryview(labels).cast("B"))
    return digest.hexdigest()


def save_annotations(
    labels: np.ndarray, root: str | Path, image_path: str | Path | None, name: str, **options: Any
) -> Path:
    """Write `labels` (..., H, W) as a TIFF and remember it for `image_path`; returns where it went. One save with
    nothing known of earlier ones: `autosave_annotations` (which a dock calls with what it wrote before; its
    keyword `options`: pixel_size, on_kept, axes, last) says more."""
    return autosave_annotations(labels, root, image_path, name, **options).path


def autosave_annotations(
    labels: np.ndarray,
    root: str | Path,
    image_path: str | Path | None,
    name: str,
    pixel_size: PixelSize | None = None,
    on_kept: Callable[[Path], Any] | None = None,
    axes: str | None = None,
    last: Saved | None = None,
) -> Saved:
    """Write `labels` (..., H, W) as a TIFF for the image file, or URL (`is_url`), `image_path` (None: an image
    without either, called `name`) and remember it for that image; returns what was written.

    Where: beside the image file (`sidecar_path`); when that folder cannot be written, or the image is a URL, in
    `<root>/annotations/`: one file per image file or URL (`<stem>-<path tag>.unet-labels.tif`, recorded in the
    index), one per session for an image without either (`<name>-<time>.unet-labels.tif`, then `last`'s).
    last: what this session last wrote or restored for this image. Labels unchanged since (the same digest, its
    file untouched) are not written again. The file a save replaces is first copied to
    `<root>/annotations/previous/`, and `on_kept` called with the copy's path, unless it is the file `last` wrote,
    as it was written (this session's own annotations are replaced), holds these very labels, or was copied
    already: an earlier session's annotations, restored or not, are never overwritten unkept.

    The TIFF carries `pixel_size` (the image layer's), else the image file's (`metadata.read_pixel_size`), and the
    file's Z step (in that pixel size's unit) and frame interval (`metadata.read_spacing`). axes: the labels' axes
    over "TZYX" (the image's, without C: "TYX" for a time series); None: "YX", "ZYX" or "TZYX" by their
    dimensions."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"annotations must be integer labels, got dtype {labels.dtype}")
    if axes is not None and (len(axes) != labels.ndim or not axes.endswith("YX") or set(axes) - set("TZYX")):
        axes = None  # not the labels' (a layer changed since it was read): by their dimensions
    axes = axes or ("TZYX"[-labels.ndim :] if 2 <= labels.ndim <= 4 else None)
    if axes is None:
        raise ValueError(f"annotations must be (H, W), (Z, H, W) or (T, Z, H, W), got shape {labels.shape}")
    digest = labels_digest(labels)
    if last is not None and last.digest == digest and last.on_disk():
        return last  # what this session wrote or restored, unchanged: nothing to write (nor to read back)
    labels = labels.astype(np.uint16) if labels.max(initial=0) < 65535 and labels.min(initial=0) >= 0 else labels
    spacing = None
    folder = Path(root) / "annotations"

    def write(target: Path) -> Saved:
        kept = _keep_previous(target, labels, root, last)
        write_tiff(target, labels, axes, pixel_size=pixel_size, spacing=spacing)
        if kept is not None and on_kept is not None:
            on_kept(kept)
        return Saved(target, file_stamp(target), digest)

    if image_path is None:
        if last is not None and last.path.parent == folder:
            target = last.path
        else:
            stem = f"{safe_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
            target = next(
                folder / f"{n}{SIDECAR_SUFFIX}"
                for n in _numbered(stem)
                if not (folder / f"{n}{SIDECAR_SUFFIX}").exists()
            )
        folder.mkdir(parents=True, exist_ok=True)
        return write(target)
    if not is_url(image_path):
        pixel_size = pixel_size or read_pixel_size(image_path)
        spacing = read_spacing(image_path, pixel_size)
        sidecar = sidecar_path(image_path)
        if os.access(sidecar.parent, os.W_OK):  # a read-only data folder: to the autosave root, without trying
            try:
                saved = write(sidecar)
            except OSError:
                pass  # a full disk, say: to the autosave root
            else:
                with contextlib.suppress(OSError):  # the index only matters for saves that went to the root
                    _remember(root, image_path, sidecar)
                return saved
    folder.mkdir(parents=True, exist_ok=True)
    # a/cells.tif and b/cells.tif (saved in one folder) stay apart
    saved = write(folder / f"{safe_name(Path(image_path).stem)}-{_path_tag(image_path)}{SIDECAR_SUFFIX}")
    record = {"image": image_id(image_path), "labels": saved.path.name}
    with atomic_write(saved.path.with_name(saved.path.name.removesuffix(SIDECAR_SUFFIX) + RECORD_SUFFIX)) as staging:
        staging.write_text(json.dumps(record))
    _remember(root, image_path, saved.path)
    return saved


def _keep_previous(target: Path, labels: np.ndarray, root: str | Path, last: Saved | None) -> Path | None:
    """Copy the annotations at `target`, about to be replaced by `labels`, to `<root>/annotations/previous/`, unless
    they are the file `last` wrote, as it was (a file `last` only restored is an earlier session's: copied), equal
    to `labels`, or copied already (a copy is named by the time the file was written and a hash of its bytes: a
    save that failed after the copy, on a full data disk, is tried again at every Start); returns the copy's path,
    None when nothing was copied."""
    stamp = file_stamp(target)
    if stamp is None or (last is not None and not last.restored and last.stamp == stamp):
        return None
    with open(target, "rb") as file:
        content = hashlib.file_digest(file, "sha1").hexdigest()[:12]
    written = time.strftime("%Y%m%d-%H%M%S", time.localtime(stamp[3] // 10**9))
    stem = safe_name(target.name.removesuffix(SIDECAR_SUFFIX)) + "-" + _path_tag(target)
    kept = Path(root) / "annotations" / "previous" / f"{stem}-{written}-{content}{SIDECAR_SUFFIX}"
    if kept.is_file():
        return None  # this very file was copied before
    try:
        if np.array_equal(load_annotations(target), labels):
            return None
    except (OSError, ValueError):
        pass  # unreadable as annotations here: kept all the same
    kept.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(kept) as staging:
        shutil.copy2(target, staging)
    return kept


def find_annotations(image_path: str | Path, root: str | Path) -> Path | None:
    """The autosaved annotations of the image file `image_path`: the newer of the side-car file and the one
    recorded in the index (a save that could not write beside the image, a full disk say, went to the autosave
    root and left an older side-car), else a side-car of the former naming (`legacy_sidecar_path`); of a URL
    (`is_url`), the one recorded in the index."""
    try:
        recorded = _index(root).get(image_id(image_path))
    except OSError:  # an unreadable index that could not be moved aside
        recorded = None
    url = is_url(image_path)
    sidecar = None if url else sidecar_path(image_path)
    found = [p for p in (sidecar, Path(recorded) if recorded else None) if p and p.is_file()]
    if found:
        return max(found, key=lambda p: p.stat().st_mtime_ns)
    if url:
        return None
    legacy = legacy_sidecar_path(image_path)
    return legacy if legacy.is_file() and legacy != Path(image_path) else None


def load_annotations(path: str | Path) -> np.ndarray:
    """Read autosaved annotations back: (H, W), (Z, H, W) or (T, Z, H, W) integer labels, in memory and writable
    (they are painted on; `io.read_image` memory-maps the file read-only)."""
    from napari_unet.io import read_image

    labels, axes = read_image(path)
    if axes == "YX":
        return read_labels(path)
    return np.array(labels)


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
    index[image_id(image_path)] = str(labels_path.resolve())
    _write_index(folder, index)


def _write_index(folder: Path, index: dict[str, str]) -> None:
    with atomic_write(folder / INDEX_FILE) as staging:
        staging.write_text(json.dumps(index, indent=1))
