"""Per-object measurements of a label image: one row per object, computed by scikit-image's `regionprops_table`.

Columns (pixel units; documented in docs/formats.md):
``label, area, centroid_y, centroid_x, bbox_y0, bbox_x0, bbox_y1, bbox_x1, perimeter, eccentricity, solidity``,
then with an image ``intensity_mean, intensity_min, intensity_max`` (one ``_c<i>`` suffix per channel for a
``(C, H, W)`` image), then with a pixel size in ``unit`` (``"um"`` ...) ``area_<unit>2, centroid_y_<unit>,
centroid_x_<unit>`` and, for square pixels, ``perimeter_<unit>``. bbox is half-open: rows y0..y1-1. eccentricity
is measured on the pixel grid, whatever the pixel size (with anisotropic pixels it is not the object's physical
eccentricity); solidity, a ratio of areas, is the same on the grid as in physical units.

>>> labels = np.zeros((6, 8), np.int32); labels[1:3, 1:5] = 7
>>> table = measure(labels, pixel_size=PixelSize(0.5, 0.5, "um"))
>>> int(table["label"][0]), float(table["area"][0]), float(table["area_um2"][0])
(7, 8.0, 2.0)
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

from .metadata import PixelSize

SHAPE_PROPERTIES = ("label", "area", "centroid", "bbox", "perimeter", "eccentricity", "solidity")
INTENSITY_PROPERTIES = ("intensity_mean", "intensity_min", "intensity_max")
RENAMED = {
    "centroid-0": "centroid_y",
    "centroid-1": "centroid_x",
    "bbox-0": "bbox_y0",
    "bbox-1": "bbox_x0",
    "bbox-2": "bbox_y1",
    "bbox-3": "bbox_x1",
}
Table = dict[str, np.ndarray]


def compact_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(labels, ids)``: labels whose largest id exceeds their number of pixels (ids from a hash or a
    counter, up to 2**64 - 1) renumbered 1..n in increasing order, with ``ids[k]`` the original id of object
    k (``ids[0]`` = 0); other labels unchanged, with None. scikit-image's region functions allocate by the
    largest id, so ids of 3e9 would ask for gigabytes.

    >>> compact, ids = compact_ids(np.array([[0, 4_000_000_000], [7, 7]], np.uint64))
    >>> compact.tolist(), ids.tolist()
    ([[0, 2], [1, 1]], [0, 7, 4000000000])
    """
    if labels.size == 0 or labels.min() < 0 or int(labels.max()) <= labels.size:
        return labels, None
    ids, compact = np.unique(labels, return_inverse=True)
    if ids[0] != 0:  # no background: object k is ids[k - 1]
        ids, compact = np.concatenate([np.zeros(1, ids.dtype), ids]), compact + 1
    return compact.reshape(labels.shape).astype(np.int64), ids


def measured_ids(labels: np.ndarray, what: str = "labels") -> np.ndarray:
    """Integer `labels` as they are measured: the "not annotated" value (-1, or the maximum of uint16 and wider:
    `targets.unannotated_as_background`) as background, as in training and in `napari-unet measure`; other
    negative values refused, naming `what`. Decided on the whole array: give a stack whole, not plane by plane
    (a plane whose only nonzero value is 65535 is "not annotated" when other planes hold ids)."""
    from .targets import unannotated_as_background

    labels = unannotated_as_background(labels)
    if labels.size and labels.dtype.kind == "i" and int(labels.min()) < 0:
        raise ValueError(
            f"{what} must be ids >= 0 (0 = background, -1 = not annotated); found the value {int(labels.min())}"
        )
    return labels


MASK_NOTE = (
    "looks like a binary mask (one value over many separate regions), not instance labels: its objects are its "
    "connected components (4-connected), so touching objects count as one"
)


def is_mask(labels: np.ndarray, what: str = "labels") -> bool:
    """Whether integer (or bool) ``labels`` (H, W), or a stack (..., H, W), are a binary mask rather than instance
    labels, decided once for the whole array; ValueError, naming `what`, when they look like an image.

    The rule is `validation.check_instance_regions` (about one region per id; one value over many regions is a
    mask, many values each over many regions an image) with the planes pooled and each (plane, value) counted as
    one id: an object spanning planes (a 3-D object, a tracked cell) is one region per plane, and an object in
    two pieces in one plane (the top of a 3-D object) leaves the file instance labels.

    >>> stack = np.zeros((2, 6, 6), np.uint16); stack[:, :3, :3] = 7; stack[1, 4:, 4:] = 7
    >>> is_mask(stack), is_mask(stack[1:])
    (False, True)
    """
    from .validation import check_instance_regions

    labels = np.asarray(labels)
    if labels.dtype == bool:
        return True
    if labels.size == 0:
        return False
    height, width = labels.shape[-2:]
    planes = labels.reshape(-1, height * width)
    values, index = np.unique(planes, return_inverse=True)
    foreground = planes != 0
    # plane p's k-th value is id p * len(values) + k + 1: ids of different planes never meet in the pooled image
    ids = index.reshape(planes.shape) + 1 + np.arange(len(planes))[:, None] * values.size
    pooled = np.where(foreground, ids, 0).reshape(-1, width)  # (planes * H, W): the planes one under another
    try:
        return check_instance_regions(pooled, what)
    except ValueError:
        if np.count_nonzero(values) == 1:  # one value over many regions, in several planes: a mask
            return True
        if len(planes) == 1:
            raise
        raise ValueError(
            f"{what} does not look like instance labels: in its {len(planes)} planes, most of the foreground has "
            "values found in several separate regions of a plane, where labels have one region per id and plane; "
            "is it an image? give label images (one id per object, 0 = background)"
        ) from None


def several_ids(labels: np.ndarray) -> bool:
    """Whether ids ``labels`` (>= 0) hold more than one nonzero value: then they are no binary mask.

    >>> several_ids(np.array([[0, 3], [3, 0]])), several_ids(np.array([[0, 3], [4, 0]]))
    (False, True)
    """
    top = labels.max(initial=0)
    return bool(top > 0 and np.any((labels != 0) & (labels != top)))


def instance_labels(labels: np.ndarray, what: str = "labels") -> tuple[np.ndarray, bool]:
    """``(objects, was_mask)``: a label image or stack (..., H, W) as the instance ids that are measured and
    exported, as `napari-unet measure` and `rois` and the Measure dock read them.

    The "not annotated" value becomes background (`measured_ids`, over the whole array); a binary mask (`is_mask`,
    decided for the whole array: one value over many separate regions, as Fiji's 0/255 masks) becomes its
    4-connected components plane by plane (ids 1..n in every plane), with ``was_mask`` True (say `MASK_NOTE`); an
    image given as labels and ids below -1 are refused, naming `what`. Floats are returned as they are, for the
    callers' checks to explain.

    >>> mask = np.zeros((4, 6), np.uint8); mask[:2, :2] = mask[:2, 4:] = 255
    >>> objects, was_mask = instance_labels(mask)
    >>> objects.tolist()[0], was_mask
    ([1, 1, 0, 0, 2, 2], True)
    """
    from .metrics import components

    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu" or labels.ndim < 2:
        return labels, False
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    labels = measured_ids(labels, what)
    if not is_mask(labels, what):
        return labels, False
    objects = np.zeros(labels.shape, np.int32)
    for index in np.ndindex(*labels.shape[:-2]):
        objects[index] = components(labels[index] != 0)
    return objects, True


def objects_of(labels: np.ndarray, what: str = "the label image", stacklevel: int = 3) -> np.ndarray:
    """`instance_labels` for the Python functions (`measure`, `measure_planes`, `roi.labels_to_rois` ...): the
    objects they measure or export are those of `napari-unet measure` and `rois` and the Measure dock, and a binary
    mask is said with `MASK_NOTE` as a ``UserWarning`` (the command line and the dock say it their own way).
    stacklevel: of the warning, pointing at the caller's caller by default.

    >>> mask = np.zeros((4, 6), np.uint8); mask[:2, :2] = mask[:2, 4:] = 255
    >>> with warnings.catch_warnings(record=True):
    ...     objects_of(mask).tolist()[0]
    [1, 1, 0, 0, 2, 2]

    Labels of 16 bits or more with several nonzero ids (`several_ids`: label images, and the objects
    `instance_labels` made of a mask) are no mask, which has one nonzero value: they are taken as they are,
    without the mask test (`is_mask`, slow on a stack), so an image given as such labels is not refused here as
    `instance_labels` refuses it for the command line and the dock.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind in "iu" and labels.dtype.itemsize > 1 and labels.ndim >= 2:
        labels = measured_ids(labels, what)
        if several_ids(labels):
            return labels
    objects, was_mask = instance_labels(labels, what)
    if was_mask:
        warnings.warn(f"{what} {MASK_NOTE}", UserWarning, stacklevel=stacklevel)
    return objects


def as_pixel_size(pixel_size: PixelSize | tuple[float, float] | None) -> PixelSize | None:
    """A `PixelSize`, or two numbers ``(y, x)`` as one in `PixelSize`'s default unit (um); None stays None.

    >>> as_pixel_size((0.5, 0.25))
    PixelSize(y=0.5, x=0.25, unit='um')
    """
    if pixel_size is None or isinstance(pixel_size, PixelSize):
        return pixel_size
    numbers = (int, float, np.integer, np.floating)
    if isinstance(pixel_size, (tuple, list)) and len(pixel_size) == 2:
        if all(isinstance(v, numbers) and not isinstance(v, bool) for v in pixel_size):
            return PixelSize(float(pixel_size[0]), float(pixel_size[1]))
    raise TypeError(
        f"pixel_size must be a PixelSize (e.g. PixelSize(0.5, 0.5, 'nm')) or two numbers (y, x) in "
        f"{PixelSize.unit}, got {pixel_size!r}"
    )


def measure(
    labels: np.ndarray, image: np.ndarray | None = None, pixel_size: PixelSize | tuple[float, float] | None = None
) -> Table:
    """The measurement table of ``labels`` (H, W) ints, 0 = background: column name -> values, one per object.

    image: raw intensities (H, W) or (C, H, W) of the same plane, or None (no intensity columns).
    pixel_size: adds the physical columns (see the module docstring); a `PixelSize`, or ``(y, x)`` in um
    (`as_pixel_size`). Objects are in increasing label order; the "not annotated" value is background
    (`measured_ids`); a binary mask (0/255, bool) is measured as its connected components, with a warning
    (`objects_of`), as `napari-unet measure` reads it.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be a 2-D integer array (H, W), got shape {labels.shape}, dtype {labels.dtype}")
    pixel_size = as_pixel_size(pixel_size)
    return _measure_objects(objects_of(labels), image, pixel_size)


def _measure_objects(labels: np.ndarray, image, pixel_size: PixelSize | None) -> Table:
    """`measure` of 2-D labels already read as objects (`instance_labels`)."""
    from skimage.measure import regionprops_table

    properties = SHAPE_PROPERTIES
    intensity = None
    channels = 0
    if image is not None:
        image = np.asarray(image)
        if image.shape[-2:] != labels.shape or image.ndim not in (2, 3):
            raise ValueError(
                f"image must be (H, W) or (C, H, W) with (H, W) = the labels' {labels.shape}, got {image.shape}"
            )
        channels = image.shape[0] if image.ndim == 3 else 0
        intensity = np.moveaxis(image, 0, -1) if channels else image
        properties = properties + INTENSITY_PROPERTIES
    compact, ids = compact_ids(labels)
    raw = regionprops_table(compact.astype(np.int64, copy=False), intensity, properties=properties)
    if ids is not None:  # the objects' own ids in the table
        raw["label"] = ids[np.asarray(raw["label"])]
    table: Table = {}
    for key, values in raw.items():
        name, _, channel = key.partition("-")
        if key in RENAMED:
            name = RENAMED[key]
        elif channel:
            name = f"{name}_c{channel}"
        table[name] = np.asarray(values)
    if pixel_size is not None:
        table.update(physical_columns(table, pixel_size))
    return table


def physical_columns(table: Table, pixel_size: PixelSize) -> Table:
    """Area, centroid and (square pixels only) perimeter of ``table`` in ``pixel_size.unit``."""
    unit = pixel_size.unit
    columns = {
        f"area_{unit}2": table["area"] * (pixel_size.y * pixel_size.x),
        f"centroid_y_{unit}": table["centroid_y"] * pixel_size.y,
        f"centroid_x_{unit}": table["centroid_x"] * pixel_size.x,
    }
    if pixel_size.isotropic:
        columns[f"perimeter_{unit}"] = table["perimeter"] * pixel_size.x
    return columns


def write_csv(tables: Table | list[tuple[dict[str, object], Table]], path: str | Path) -> Path:
    """Write one table, or several as ``[(extra, table), ...]``, to a comma-separated file with a header row.

    ``extra``: columns with one value for all the table's rows, put first (e.g. ``{"image": "01.tif"}``); a
    column missing from one table (no pixel size there, another channel count) is left empty in its rows.
    Floats are written in full precision. Written under a temporary name and renamed (`io.atomic_write`): a
    crash leaves the file as it was.
    """
    if isinstance(tables, dict):
        tables = [({}, tables)]
    extras: list[str] = []
    header: list[str] = []
    for extra, table in tables:
        extras += [name for name in extra if name not in extras]
        header += [name for name in table if name not in header and name not in extra]
    # every table's extra columns first (image, plane), whichever table has them: a header that does not depend
    # on the order of the files (a stack first put `plane` second, after a single image last)
    header = extras + [name for name in header if name not in extras]
    from .io import atomic_write

    path = Path(path)
    with atomic_write(path) as staging, open(staging, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for extra, table in tables:
            count = len(next(iter(table.values()))) if table else 0
            for i in range(count):
                values = {**extra, **{name: _cell(column[i]) for name, column in table.items()}}
                writer.writerow([values.get(name, "") for name in header])
    return path


def _cell(value) -> object:
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return repr(float(value))
    return value


def measure_planes(
    labels: np.ndarray,
    axes: str,
    image=None,
    image_axes: str | None = None,
    pixel_size: PixelSize | None = None,
) -> list[tuple[dict[str, object], Table]]:
    """Measure every 2-D plane of a label image or stack: ``[(extra, table), ...]``, one per plane.

    labels: axes ``axes`` over "TZYX" (canonical order); image: the raw image with ``image_axes`` (canonical,
    the same T/Z/Y/X sizes plus an optional C), or None. ``extra`` is ``{}`` for a single plane, else
    ``{"plane": i, "t": t, "z": z}`` with ``i`` the plane's 0-based number (``t * Z + z`` for TZYX) and a ``t``
    and ``z`` for the axes the labels have. The "not annotated" value and whether the labels are a binary mask
    (measured as its connected components, with a warning: `objects_of`) are decided on the whole stack.
    pixel_size: as `measure`'s.

    >>> stack = np.zeros((2, 3, 4, 4), np.int32); stack[1, 2, 1:3, 1:3] = 5
    >>> [extra for extra, table in measure_planes(stack, "TZYX") if len(table["label"])]
    [{'plane': 5, 't': 1, 'z': 2}]
    """
    from .pipeline import plane_indices

    if "C" in axes:
        raise ValueError(f"labels must not have a channel axis, got axes {axes!r}")
    if image is not None:
        image_axes = image_axes or ("CYX" if np.ndim(image) == 3 and len(axes) == 2 else axes)
        spatial = tuple(n for n, a in zip(np.shape(image), image_axes) if a != "C")
        if image_axes.replace("C", "") != axes or spatial != tuple(np.shape(labels)):
            raise ValueError(
                f"the image (axes {image_axes}, shape {tuple(np.shape(image))}) does not match the labels "
                f"(axes {axes}, shape {tuple(np.shape(labels))}): they must have the same planes and size"
            )
    pixel_size = as_pixel_size(pixel_size)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be an integer (or bool) array, got dtype {labels.dtype}")
    labels = objects_of(labels)
    planes = plane_indices(tuple(np.shape(labels)), axes)
    lead = [a.lower() for a in axes if a in "TZ"]
    tables = []
    for number, index in enumerate(planes):
        plane = np.asarray(labels[index] if index else labels)
        intensities = None if image is None else np.asarray(image[index] if index else image)
        extra: dict[str, object] = {"plane": number, **dict(zip(lead, index))} if len(planes) > 1 else {}
        tables.append((extra, _measure_objects(plane, intensities, pixel_size)))
    return tables
