"""Input checks, in one place: what the library, the command line and the napari docks accept and refuse.

Every check raises ``ValueError`` (`DtypeError`, also a ``TypeError``, for the wrong kind of numbers;
``FileNotFoundError`` / ``PermissionError`` for paths) with a message that
says what was expected and what was found. The rules are those of docs/formats.md:

- **image** (`check_image`): numbers (integers of any width, bool, float) along axes over ``TZCYX``; no NaN or
  infinite value; not constant; not empty. Complex numbers are refused.
- **labels** (`check_labels`): one 2-D plane of integers (any width, signed or unsigned) or bool; 0 =
  background, ids > 0; the sparse-annotation value ``-1`` in signed dtypes is accepted (and so is the
  unsigned dtypes' maximum, see `targets.unannotated_value`), other negative values are refused. Ids of any
  size are accepted: ids that do not fit in int32 are renumbered 1..n (their order kept), so nothing
  downstream wraps around.
- **mask** (`check_mask`): 2-D, the shape of its labels, bool or integers (nonzero = annotated).
- **instance labels to score** (`check_instance_labels`, `check_instance_regions`, `check_label_axes`): integers
  >= 0, no channel axis; a binary mask (one value over many separate regions) is told apart from labels, and
  an image (many values, each over many regions) is refused, as it is for training (`pipeline.read_training_pair`).
- **probabilities** (`check_probabilities`): float, finite, in [0, 1].
- **paths** (`check_output_not_input`, `check_writable_folder`): an output is never one of the inputs, and a
  folder is known to be writable before long work starts.
- **model folders** (`check_json_object`, `check_unet_entry`): config.json's entries are JSON objects, and the
  network it describes stays within `MODEL_CONFIG_LIMITS` (a file that asks for more is corrupted or hostile).

>>> check_labels(np.array([[0, 2**40], [-1, 3]])).dtype
dtype('int32')
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

BLOCK_ELEMENTS = 2**24
INT32_MAX = 2**31 - 1
# What a model folder's config may ask for: a file that asks for more is corrupted or hostile, not a model.
MODEL_CONFIG_LIMITS = {
    "in_channels": 4096,
    "num_classes": 4096,
    "depth": 16,
    "base_channels": 4096,
    "convs_per_level": 16,
}
SUPPORTED_AXES_HELP = (
    "axes over the letters T, Z, C, Y, X, each at most once and ending in Y and X, "
    "e.g. 'YX', 'CYX', 'ZYX', 'TCYX', 'TZCYX'"
)


class DtypeError(TypeError, ValueError):
    """An array of the wrong kind of numbers: a TypeError by Python's convention, and a ValueError (bad input)
    so that one ``except ValueError`` catches every refused input."""


# ------------------------------------------------------------------------------------------------- images


def _to_numpy(array: Any) -> np.ndarray:
    compute = getattr(array, "compute", None)
    return np.asarray(compute() if callable(compute) else array)


def _blocks(image: Any):
    """Numpy slabs along the first axis of at most ~``BLOCK_ELEMENTS`` values each."""
    if image.ndim == 0 or image.size <= BLOCK_ELEMENTS:
        yield _to_numpy(image)
        return
    rows = max(1, BLOCK_ELEMENTS // max(1, image.size // image.shape[0]))
    for start in range(0, image.shape[0], rows):
        yield _to_numpy(image[start : start + rows])


def check_image_dtype(dtype: Any, what: str = "image") -> np.dtype:
    """The dtype of an image: integers of any width, bool or real floats; complex and the rest are refused."""
    dtype = np.dtype(dtype)
    if dtype.kind in "biuf":
        return dtype
    hint = " (take its magnitude with np.abs first)" if dtype.kind == "c" else ""
    raise DtypeError(f"{what} must hold real numbers (integers, bool or floats), got dtype {dtype}{hint}")


def count_nonfinite(image: Any) -> int:
    """How many NaN or infinite values `image` holds (0 for integer images); lazy arrays are read slab by slab."""
    if np.dtype(image.dtype).kind not in "fc":
        return 0
    return sum(int(block.size - np.count_nonzero(np.isfinite(block))) for block in _blocks(image))


def check_finite(image: Any, what: str = "image") -> None:
    """Raise ValueError when `image` holds NaN or infinite values (their count is given)."""
    check_image_dtype(image.dtype, what)
    bad = count_nonfinite(image)
    if bad:
        raise ValueError(
            f"{what} has {bad} NaN or infinite values out of {int(np.prod(image.shape))}; "
            "replace them (e.g. with np.nan_to_num) before segmenting"
        )


def check_image(image: Any, axes: str) -> None:
    """Raise ``ValueError`` unless ``image`` (axes ``axes``) can be segmented.

    Checks: ``axes`` matches the array (letters ``TZCYX``, each once, in that order, with Y and X); real numbers
    (complex refused); not empty; no NaN or infinite values (their count is given); not constant. Lazy arrays
    (dask, zarr, memmap) are scanned slab by slab, never loaded whole.
    """
    from .io import canonical_axes, validate_axes

    if not hasattr(image, "shape"):
        image = np.asarray(image)
    try:
        axes = validate_axes(axes, image.ndim)
        if axes != canonical_axes(axes):
            raise ValueError(f"axes {axes!r} are not in canonical order {canonical_axes(axes)!r} (see to_canonical)")
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"unsupported image: {image.ndim}-D array of shape {tuple(image.shape)} with axes {axes!r} "
            f"({error}); supported: {SUPPORTED_AXES_HELP}"
        ) from None
    dtype = check_image_dtype(image.dtype)
    if 0 in image.shape:
        raise ValueError(f"image is empty: shape {tuple(image.shape)} with axes {axes!r}")
    inexact = dtype.kind == "f"
    bad = 0
    lo, hi = np.inf, -np.inf
    for block in _blocks(image):
        if inexact:
            finite = np.isfinite(block)
            bad += int(block.size - np.count_nonzero(finite))
            block = block[finite]
        if block.size:
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if bad:
        raise ValueError(
            f"image has {bad} NaN or infinite values out of {int(np.prod(image.shape))}; "
            "replace them (e.g. with np.nan_to_num) before segmenting"
        )
    if lo >= hi:
        raise ValueError(f"image is constant (every value is {lo}): nothing to segment")


# ------------------------------------------------------------------------------------------------- labels


def check_labels(labels: Any, what: str = "labels", *, sparse: bool = True) -> np.ndarray:
    """Labels as the library uses them: a 2-D integer array, checked, with ids that fit in int32.

    Accepted: integers of any width (signed or unsigned), bool (returned as uint8 0/1). 0 = background, ids
    > 0. With `sparse`, the reserved "not annotated" value is accepted: -1 in signed dtypes, the maximum of
    unsigned dtypes of >= 16 bits (`targets.unannotated_value`). Refused: floats, complex, other negative
    values, not 2-D, empty. Ids above 2**31 - 1 are renumbered 1..n in increasing order (instance identity
    is what counts) and the result is int32 with -1 for "not annotated"; otherwise the array keeps its
    dtype (in native byte order).
    """
    from .targets import reserved_value

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{what} must be one 2-D (H, W) plane of instance ids, got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError(f"{what} are empty: shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        hint = _float_labels_hint(labels, NOT_WHOLE_HINT) if labels.dtype.kind == "f" else ""
        raise DtypeError(f"{what} must be integers (instance ids, 0 = background), got dtype {labels.dtype}{hint}")
    labels = labels.astype(labels.dtype.newbyteorder("="), copy=False)
    reserved = reserved_value(labels) if sparse else None
    if labels.dtype.kind == "i":
        low = int(labels.min())
        allowed = -1 if sparse else 0
        if low < allowed:
            expected = ">= 0 (0 = background), or -1 for 'not annotated'" if sparse else ">= 0 (0 = background)"
            raise ValueError(f"{what} must be {expected}; found the value {low}")
    cells = labels if reserved is None else labels[labels != reserved]
    top = cells.max(initial=0)
    if int(top) <= INT32_MAX:
        return labels
    return _renumber(labels, reserved)


def _renumber(labels: np.ndarray, reserved: int | None) -> np.ndarray:
    """int32 ids 1..n in increasing order of the original ids (0 stays 0, `reserved` becomes -1)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    new = np.zeros(ids.size, np.int64)
    cells = (ids != 0) & ((ids != reserved) if reserved is not None else True)
    new[cells] = np.arange(1, int(cells.sum()) + 1)
    if reserved is not None:
        new[ids == reserved] = -1
    if int(cells.sum()) > INT32_MAX:
        raise ValueError(f"labels hold {int(cells.sum())} distinct ids; at most {INT32_MAX} are supported")
    return new[inverse.reshape(labels.shape)].astype(np.int32)


def _float_labels_hint(labels: np.ndarray, otherwise: str) -> str:
    """The hint for labels stored as floats: whole numbers convert to ids; other values are no ids (truncating
    them would merge and invent objects), and `otherwise` says what they may be."""
    if np.all(np.isfinite(labels)) and np.array_equal(labels, np.round(labels)):
        return " (whole numbers: convert with .astype(np.int32))"
    return otherwise


NOT_WHOLE_HINT = " (its values are not whole numbers: labels must be integer ids, 0 = background)"


def check_instance_labels(labels: Any, what: str = "labels", *, ground_truth: bool = False) -> np.ndarray:
    """Instance labels for scoring (any number of dimensions): integers >= 0, ids of any size (not renumbered).

    Bool and floats are refused with a hint: take connected components; a prediction's floats are
    probabilities, to post-process first; `ground_truth` is the annotation itself, not a probability map nor an
    image: floats of whole numbers are to be converted, others are no ids.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        floats = " (probabilities: post-process them with napari_unet.postprocess.probs_to_labels)"
        if ground_truth and labels.dtype.kind == "f":
            floats = _float_labels_hint(
                labels,
                " (its values are not whole numbers: ground truth must be the annotated label image, integer ids "
                "with 0 = background, not a probability map or an image)",
            )
        hint = {
            "b": " (a bool mask: take its connected components with scipy.ndimage.label)",
            "f": floats,
        }.get(labels.dtype.kind, "")
        raise DtypeError(
            f"{what} must be an integer array of instance ids (0 = background); got dtype {labels.dtype}{hint}"
        )
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError(f"{what} must hold ids >= 0; got minimum {labels.min()}")
    return labels


def check_label_axes(axes: str, shape: tuple[int, ...], what: str = "labels") -> None:
    """Labels have no channel axis: a colour (RGB) or multi-channel file is an image, or labels drawn as colours."""
    if "C" in axes:
        raise ValueError(
            f"{what} has axes {axes!r} (shape {tuple(shape)}): labels must not be colour or have channels; they "
            "are one plane of integer ids per image (0 = background)"
        )


def check_instance_regions(labels: Any, what: str = "labels", ignore: int | None = None) -> bool:
    """Whether integer (or bool) `labels` are a binary mask rather than instance labels; ValueError when neither.

    Instance labels have about one region (connected pixels of one value, 8-connected in 2-D) per id. When more
    than half of the foreground has values found in several separate regions, and there are at least twice as
    many regions as values, they are not instance labels: one value (a binary mask, Fiji's 0/255) is a mask,
    whose connected components are the objects (True); several values (an intensity image, or ids reused for
    separate objects) are refused. Labels with an id in two pieces here and there are labels (False).
    ignore: a value that is no id, counted as background (the sparse "not annotated" value,
    `targets.unannotated_value`: its pixels lie in as many pieces as the annotator left).

    >>> check_instance_regions(np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1]]))
    True
    >>> check_instance_regions(np.array([[1, 0, 2], [0, 0, 0], [3, 0, 4]]))
    False
    """
    from skimage.measure import label

    labels = np.asarray(labels)
    if ignore is not None and np.any(labels == ignore):
        labels = np.where(labels == ignore, 0, labels)
    foreground = labels != 0
    if not foreground.any():
        return False
    regions = label(labels, background=0, connectivity=labels.ndim)  # one number per region of equal values
    ids, index = np.unique(labels[foreground], return_inverse=True)
    id_of_region = np.zeros(int(regions.max()) + 1, np.int64)
    id_of_region[regions[foreground]] = index
    regions_per_id = np.bincount(id_of_region[1:], minlength=ids.size)
    split = float(np.mean(regions_per_id[index] > 1))
    if split <= 0.5 or regions_per_id.sum() < 2 * ids.size:
        return False
    if ids.size == 1:
        return True
    raise ValueError(
        f"{what} does not look like instance labels: its {ids.size} values lie in {regions_per_id.sum()} separate "
        f"regions ({split:.0%} of its foreground has values found in several places), where labels have one region "
        "per id; is it an image? give label images (one id per object, 0 = background)"
    )


def check_mask(mask: Any, shape: tuple[int, ...], what: str = "mask") -> np.ndarray:
    """A mask as bool (nonzero = annotated): 2-D, of `shape`, bool or integers; floats and complex refused."""
    mask = np.asarray(mask)
    if mask.dtype != bool and mask.dtype.kind not in "iu":
        raise DtypeError(f"{what} must be bool or integers (nonzero = annotated), got dtype {mask.dtype}")
    if mask.shape != tuple(shape):
        raise ValueError(f"{what} has shape {mask.shape} but its labels have {tuple(shape)}: they must agree")
    return mask != 0


PROBABILITY_SLACK = 1e-3  # rounding of resized or averaged probabilities; float labels and images lie far beyond


def check_probabilities(probs: Any, what: str = "probs") -> np.ndarray:
    """Float probabilities, finite, in [0, 1] (a float label image or intensity image is refused)."""
    probs = np.asarray(probs)
    if probs.dtype.kind != "f":
        raise DtypeError(f"{what} must be a float array of probabilities in [0, 1]; got dtype {probs.dtype}")
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"{what} must be finite; got NaN or infinite values")
    if probs.size and (probs.min() < -PROBABILITY_SLACK or probs.max() > 1 + PROBABILITY_SLACK):
        raise ValueError(
            f"{what} must be probabilities in [0, 1]; got values from {probs.min():g} to {probs.max():g} (labels or "
            "an image saved as floats?)"
        )
    return probs


# -------------------------------------------------------------------------------------------------- paths


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when `a` and `b` name the same file (an existing one by inode, else by resolved path)."""
    a, b = Path(a), Path(b)
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output_not_input(outputs: Iterable[str | Path], inputs: Iterable[str | Path]) -> None:
    """Raise ValueError when an output path is one of the inputs (or inside an input model folder)."""
    inputs = [Path(p) for p in inputs]
    for output in outputs:
        for source in inputs:
            if same_file(output, source):
                raise ValueError(f"the output {output} would replace the input {source}: choose another --out")


def check_output_free(path: str | Path, overwrite: bool, what: str = "--out") -> None:
    """Raise ValueError when `path` exists and `overwrite` was not given (existing outputs are replaced only
    when asked)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{what} {path} exists: replace it with --overwrite, or choose another path")
    if path.is_dir() and not path.is_symlink() and overwrite and path.suffix.lower() in (".tif", ".tiff"):
        raise ValueError(f"{what} {path} is a folder; it cannot be replaced by a file")


def check_writable_folder(folder: str | Path, what: str = "--out") -> Path:
    """Create `folder` (and its parents) if needed and prove it writable by creating a file in it.

    Raises PermissionError / NotADirectoryError-type OSErrors with `what` in the message, at once, rather than
    after a long run.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise PermissionError(f"{what}: {folder} is not writable ({error.strerror or error})") from None
    return folder


def check_json_object(value: Any, what: str) -> dict[str, Any]:
    """`value` (read from JSON) when it is an object (a dict), else a ValueError naming `what`."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def check_unet_entry(value: Any) -> dict[str, Any]:
    """The "unet" entry of a model folder's config.json, its integers checked against `MODEL_CONFIG_LIMITS`
    before a network is built from it."""
    value = check_json_object(value, "unet")
    for name, limit in MODEL_CONFIG_LIMITS.items():
        if name in value:
            number = value[name]
            if not isinstance(number, int) or isinstance(number, bool) or not 0 < number <= limit:
                raise ValueError(f"unet.{name} must be an integer in 1..{limit}, got {number!r}")
    for name in ("batch_norm",):
        if name in value and not isinstance(value[name], bool):
            raise ValueError(f"unet.{name} must be true or false, got {value[name]!r}")
    if "dropout" in value and (not isinstance(value["dropout"], (int, float)) or isinstance(value["dropout"], bool)):
        raise ValueError(f"unet.dropout must be a number, got {value['dropout']!r}")
    return value
