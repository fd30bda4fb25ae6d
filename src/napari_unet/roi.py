"""Labels to ImageJ/Fiji ROIs and back: one polygon ROI per object, in a `.zip` that Fiji's ROI Manager opens.

An object's outline is the 0.5 iso-contour of its mask (`skimage.measure.find_contours`), which runs half-way
between the object's boundary pixels and their outside neighbours; stored in ImageJ coordinates, where pixel
(row r, column c) spans [c, c + 1) x [r, r + 1), with sub-pixel precision. Filling the polygon back (pixels
whose centre is inside) returns the object, except what a polygon cannot hold: holes are filled, and of an
object in several pieces only the largest is kept. The ROI's name is the label id; a stack plane is its
ROI position (1-based in the file, as ImageJ counts) and prefixes the zip entry ("0003-12.roi"). Labels are read
as `napari-unet rois` reads them (`measure.objects_of`): a binary mask (0/255, bool) gives one ROI per connected
component, with a warning.

>>> labels = np.zeros((8, 8), np.int32); labels[2:5, 1:6] = 3
>>> rois = labels_to_rois(labels)
>>> rois[0].name, bool((rois_to_labels(rois, labels.shape) == labels).all())
('3', True)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROI_EXTRA = "rois"


def _roifile():
    try:
        import roifile
    except ImportError:
        raise ImportError(
            f"ImageJ ROI files need the 'roifile' package: pip install 'napari-unet-2015[{ROI_EXTRA}]'"
        ) from None
    return roifile


def check_roifile() -> None:
    """Raise the ImportError that says how to install `roifile` when it is missing (before any work is done)."""
    _roifile()


def outline(mask: np.ndarray) -> np.ndarray | None:
    """The outer outline (n, 2) of the largest connected piece of ``mask`` (H, W) (pixels touching by a corner
    are connected) as (row, col) pixel coordinates, closed (first point == last), without collinear points;
    None for an empty mask.

    Its holes are filled first, so the one contour left is the outer one (a winding hole can have a longer
    outline than the object); the contour keeps pixels that touch by a corner together, as the pieces are
    counted, so a diagonal line or blocks meeting at a corner come back whole.
    """
    from scipy import ndimage as ndi
    from skimage.measure import approximate_polygon, find_contours
    from skimage.measure import label as connected

    pieces = connected(mask, connectivity=2)
    if pieces.max() == 0:
        return None
    if pieces.max() > 1:
        mask = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
    padded = np.pad(ndi.binary_fill_holes(mask), 1).astype(np.float32)
    (contour,) = find_contours(padded, 0.5, fully_connected="high")
    return approximate_polygon(contour - 1.0, tolerance=0)


def labels_to_rois(labels: np.ndarray, position: int | None = None) -> list:
    """One `roifile.ImagejRoi` polygon per object of ``labels`` (H, W), named by its id, in increasing id order.

    position: the 0-based stack plane the ROIs belong to (None for a single image). The "not annotated" value
    is background, and a binary mask (0/255, bool) is its connected components, with a warning
    (`measure.objects_of`).
    """
    from .measure import objects_of

    _roifile()
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be a 2-D integer array (H, W), got shape {labels.shape}, dtype {labels.dtype}")
    return _plane_rois(objects_of(labels), position)


def _plane_rois(labels: np.ndarray, position: int | None) -> list:
    """`labels_to_rois` of 2-D labels already read as objects (`measure.instance_labels`)."""
    roifile = _roifile()
    from skimage.measure import regionprops

    from .measure import compact_ids

    compact, ids = compact_ids(labels)  # ids of 3e9 would make regionprops allocate gigabytes
    rois = []
    for region in regionprops(compact):
        y0, x0, _, _ = region.bbox
        points = outline(region.image)
        if points is None:
            continue
        xy = np.stack([points[:, 1] + x0 + 0.5, points[:, 0] + y0 + 0.5], axis=1)[:-1]
        name = str(region.label if ids is None else ids[region.label])
        roi = roifile.ImagejRoi.frompoints(xy, name=name, position=position)
        roi.roitype = roifile.ROI_TYPE.POLYGON
        rois.append(roi)
    return rois


def stack_to_rois(labels: np.ndarray) -> list:
    """ROIs of a label image (H, W), or of every plane of a stack (N, H, W) with the plane as ROI position. The
    "not annotated" value is background, and a binary mask is its connected components (with a warning), both
    decided on the whole stack (`measure.objects_of`): a plane whose only nonzero value is 65535 gives no ROI when
    other planes hold ids."""
    from .measure import objects_of

    _roifile()
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3) or labels.dtype.kind not in "biu":
        raise ValueError(
            f"labels must be integer ids (H, W) or a stack (N, H, W), got shape {labels.shape}, dtype {labels.dtype}"
        )
    labels = objects_of(labels)
    if labels.ndim == 2:
        return _plane_rois(labels, None)
    return [roi for n, plane in enumerate(labels) for roi in _plane_rois(plane, n)]


def rois_to_labels(rois: list, shape: tuple[int, ...]) -> np.ndarray:
    """Fill ``rois`` into an int32 label image of ``shape`` (H, W) or (N, H, W); later ROIs paint over earlier.

    An ROI named by an integer keeps it as its id (ids beyond int32 make the labels int64, ids beyond int64 up to
    2**64 - 2 uint64, as `napari-unet rois` names the objects of uint64 labels); the others get the next free ids.
    Polygons, freehand, traced, rectangle and oval ROIs are filled, and composite ROIs (an object with holes, as
    Fiji's Create Selection or XOR saves it) with their holes (even-odd rule over their paths); lines and points
    are skipped. On a stack, an ROI with a position goes to that plane (1-based in the file),
    one without to every plane. An ROI that extends past the image's edge is cut there; one wholly outside it,
    or on a plane the stack (or single image) does not have, is a ValueError (ROIs drawn on another image).
    """
    from skimage.draw import ellipse, polygon

    roifile = _roifile()
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (H, W) or (N, H, W), got {shape}")
    named = [int(roi.name) if roi.name and roi.name.isdigit() and int(roi.name) > 0 else None for roi in rois]
    next_id = max([n for n in named if n] or [0]) + 1
    labels = np.zeros(shape, label_dtype(next_id - 1 + named.count(None)))
    filled = (
        roifile.ROI_TYPE.POLYGON,
        roifile.ROI_TYPE.FREEHAND,
        roifile.ROI_TYPE.TRACED,
        roifile.ROI_TYPE.RECT,
        roifile.ROI_TYPE.OVAL,
    )
    height, width = shape[-2:]
    for roi, value in zip(rois, named):
        if roi.roitype not in filled and not roi.composite:
            continue
        if value is None:
            value, next_id = next_id, next_id + 1
        if roi.composite:
            rows, cols = _composite_pixels(roi, (height, width))
        elif roi.roitype == roifile.ROI_TYPE.OVAL:
            rows, cols = ellipse(
                (roi.top + roi.bottom) / 2 - 0.5,
                (roi.left + roi.right) / 2 - 0.5,
                (roi.bottom - roi.top) / 2,
                (roi.right - roi.left) / 2,
                shape=(height, width),
            )
        else:
            xy = roi.coordinates()
            if roi.roitype == roifile.ROI_TYPE.RECT:
                xy = np.array(
                    [[roi.left, roi.top], [roi.right, roi.top], [roi.right, roi.bottom], [roi.left, roi.bottom]]
                )
            rows, cols = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(height, width))
        if not len(rows) and (roi.left >= width or roi.top >= height or roi.right <= 0 or roi.bottom <= 0):
            raise ValueError(
                f"ROI {roi.name or value!r} (x {roi.left}..{roi.right}, y {roi.top}..{roi.bottom}) lies outside the "
                f"{height} x {width} image: were the ROIs drawn on another image?"
            )
        if len(shape) == 2:
            plane = _plane(roi)
            if plane:  # position 1 is the single image's plane
                raise ValueError(f"ROI {roi.name!r} is on plane {plane + 1} but the image is a single plane")
            labels[rows, cols] = value
        else:
            plane = _plane(roi)
            if plane is not None and not 0 <= plane < shape[0]:
                raise ValueError(f"ROI {roi.name!r} is on plane {plane + 1} but the stack has {shape[0]} planes")
            targets = range(shape[0]) if plane is None else [plane]
            for n in targets:
                labels[n, rows, cols] = value
    return labels


def label_dtype(largest: int) -> np.dtype:
    """The narrowest of int32, int64 and uint64 that holds the ids 0..``largest``; ValueError beyond 2**64 - 2
    (2**64 - 1 is uint64's "not annotated" value, `targets.unannotated_value`).

    >>> [label_dtype(n).name for n in (7, 2**31, 2**63)]
    ['int32', 'int64', 'uint64']
    """
    for dtype in (np.int32, np.int64):
        if largest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    if largest < np.iinfo(np.uint64).max:
        return np.dtype(np.uint64)
    raise ValueError(
        f"ROI names are label ids; {largest} is beyond what a label image holds (uint64, up to 2**64 - 2: "
        "2**64 - 1 is its 'not annotated' value)"
    )


def _composite_pixels(roi, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The pixels (rows, cols) of a composite ROI: inside an odd number of its paths (holes stay empty)."""
    from skimage.draw import polygon

    inside = np.zeros(shape, bool)
    for xy in roi.coordinates(multi=True):
        path = np.zeros(shape, bool)
        rows, cols = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=shape)
        path[rows, cols] = True
        inside ^= path
    return np.nonzero(inside)


def _plane(roi) -> int | None:
    """The 0-based stack plane of an ROI: its position, else its hyperstack z or t position (Fiji's ROI Manager
    stores a time-lapse ROI as z 1, t n: the plane is the one that is not 1); None when it has none.

    >>> from types import SimpleNamespace as Roi
    >>> _plane(Roi(position=0, z_position=1, t_position=3)), _plane(Roi(position=2, z_position=0, t_position=0))
    (2, 1)
    """
    if roi.position:
        return int(roi.position) - 1
    z, t = int(roi.z_position or 0), int(roi.t_position or 0)
    if z > 1 and t > 1:
        raise ValueError(
            f"ROI {roi.name!r} is on z {z}, t {t} of a hyperstack: napari-unet reads ROIs of one stack axis "
            "(save the ROIs of each time point, or of each slice, separately)"
        )
    return max(z, t) - 1 if max(z, t) else None


def write_rois(path: str | Path, labels: np.ndarray) -> int:
    """Write the ROIs of ``labels`` (H, W) or (N, H, W) to the ImageJ ROI zip ``path``; returns how many.
    Written under a temporary name and renamed (`io.atomic_write`): a crash leaves ``path`` as it was."""
    from .io import atomic_write

    roifile = _roifile()
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ValueError(f"an ImageJ ROI set is a .zip file, got {path.name}")
    rois = stack_to_rois(labels)
    if not rois:
        raise ValueError("the labels hold no objects: there is no ROI to write")
    entries = [f"{roi.name}" if _plane(roi) is None else f"{_plane(roi) + 1:04d}-{roi.name}" for roi in rois]
    with atomic_write(path) as staging:
        roifile.roiwrite(staging, rois, name=entries, mode="w")  # a list of ROIs: a zip, whatever the name
    return len(rois)


def read_rois(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """Labels (int32, or wider for big ids; ``shape``) from an ImageJ ROI zip or single `.roi` file (see
    :func:`rois_to_labels`)."""
    roifile = _roifile()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ROI file at {path}")
    try:
        rois = roifile.roiread(path)
    except Exception as error:  # roifile raises ValueError, zipfile.BadZipFile, struct.error ...
        raise ValueError(f"cannot read {path} as ImageJ ROIs ({type(error).__name__}: {error})") from None
    rois = rois if isinstance(rois, list) else [rois]
    return rois_to_labels(rois, shape)
