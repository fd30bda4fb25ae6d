"""Image and label I/O with explicit axes, and percentile normalisation.

Arrays carry an ``axes`` string over the letters ``"TZCYX"`` and are always returned in that
canonical order: ``"YX"``, ``"CYX"``, ``"ZYX"``, ``"TCYX"``, ... (a subset of T, Z, C followed by Y, X).

>>> image, axes = read_image("nuclei.tif")  # doctest: +SKIP
>>> image, axes = np.arange(10_000, dtype=np.uint16).reshape(100, 100), "YX"
>>> lo, hi = percentiles(image, 1.0, 99.8, axes)  # global values, from a bounded subsample
>>> tile = apply_normalization(image[:50, :50], lo, hi)  # normalise tile by tile with them
>>> float(tile.min()), tile.dtype  # doctest: +ELLIPSIS
(-0.01..., dtype('float32'))
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .metadata import PixelSize, StackSpacing, tiff_calibration
from .validation import check_image, check_labels  # noqa: F401  (check_image: io's public name since 0.1)

CANONICAL_AXES = "TZCYX"
TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIX = ".zarr"
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg")
SUPPORTED_FORMATS = "TIFF (.tif, .tiff), PNG (.png), JPEG (.jpg, .jpeg)"
SUPPORTED_AXES_HELP = (
    "axes over the letters T, Z, C, Y, X, each at most once and ending in Y and X, "
    "e.g. 'YX', 'CYX', 'ZYX', 'TCYX', 'TZCYX'"
)
IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
OME_LENGTH_UNITS = {"nm": "nm", "um": "µm", "mm": "mm", "cm": "cm", "m": "m"}  # PixelSize.unit -> OME's symbol
MAX_PERCENTILE_SAMPLES = 2**20
TEMPORARY_SUFFIX = ".tmp"


# ----------------------------------------------------------------------------- axes


def validate_axes(axes: str, ndim: int) -> str:
    """Check an axes string against an array's ``ndim`` and return it upper-cased.

    Letters from ``"TZCYX"``, each at most once, including Y and X, one per dimension.
    """
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string such as 'CYX', got {type(axes).__name__}")
    axes = axes.upper()
    unknown = sorted(set(axes) - set(CANONICAL_AXES))
    if unknown:
        raise ValueError(f"axes {axes!r} has unknown letters {unknown}; expected {SUPPORTED_AXES_HELP}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"axes {axes!r} repeats a letter; expected {SUPPORTED_AXES_HELP}")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"axes {axes!r} lacks Y or X; expected {SUPPORTED_AXES_HELP}")
    if len(axes) != ndim:
        raise ValueError(f"axes {axes!r} names {len(axes)} dimensions but the array has {ndim}")
    return axes


def canonical_axes(axes: str) -> str:
    """The letters of ``axes`` in canonical ``"TZCYX"`` order: ``canonical_axes("YXC") == "CYX"``."""
    return "".join(a for a in CANONICAL_AXES if a in axes)


def to_canonical(image: Any, axes: str) -> tuple[Any, str]:
    """Reorder ``image`` (axes ``axes``) to canonical order by a transpose.

    The transpose is a view for numpy arrays and memmaps (a memmap stays a memmap) and lazy for dask.
    """
    axes = validate_axes(axes, np.ndim(image))
    target = canonical_axes(axes)
    if target == axes:
        return image, axes
    order = tuple(axes.index(a) for a in target)
    return image.transpose(order), target


def guess_axes(shape: tuple[int, ...]) -> str:
    """Axes of an array that carries no metadata.

    2-D: ``"YX"``; 3-D: ``"CYX"`` when the first dimension is <= 4, ``"YXC"`` (RGB(A)) when the last
    dimension is 3 or 4, else ``"ZYX"``. Higher dimensions cannot be guessed: pass ``axes``.
    """
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        if shape[0] <= 4:
            return "CYX"
        if shape[-1] in (3, 4):
            return "YXC"
        return "ZYX"
    raise ValueError(
        f"cannot guess the axes of a {len(shape)}-D array of shape {tuple(shape)}; "
        f"pass axes explicitly ({SUPPORTED_AXES_HELP})"
    )


def _axes_from_series(series_axes: str, shape: tuple[int, ...]) -> str:
    """Translate tifffile series axes to ours: 'S' (samples) is C; one unknown letter is guessed."""
    letters = list(series_axes.upper().replace("S", "C"))
    if letters.count("C") > 1:
        raise ValueError(f"TIFF series axes {series_axes!r} hold both channels and RGB samples; pass axes explicitly")
    unknown = [i for i, a in enumerate(letters) if a not in CANONICAL_AXES or letters.count(a) > 1]
    if not unknown:
        return "".join(letters)
    if len(shape) <= 3 or len(unknown) > 1:
        return guess_axes(shape)
    (i,) = unknown
    free = [a for a in ("C", "Z", "T") if a not in letters]
    if "C" in free and shape[i] > 4:
        free.remove("C")
    if not free:
        raise ValueError(f"cannot interpret TIFF series axes {series_axes!r}; pass axes explicitly")
    letters[i] = free[0]
    return "".join(letters)


def _named_layout(series_axes: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """tifffile's series axes and shape without the length-1 axes the file does not name (tifffile's 'Q') beside
    a named Y and X: an (H, W, 1) mask saved without axes (series axes 'YXQ') is one H x W plane ('YX'), not H
    planes of W x 1 pixels; (2, H, W, 1) ('QYXQ') is (2, H, W) ('QYX'). ImageJ and OME readers drop such axes too.

    >>> _named_layout("YXQ", (256, 200, 1))
    ('YX', (256, 200))
    """
    letters = series_axes.upper().replace("S", "C")

    def named(letter: str) -> bool:
        return letter in CANONICAL_AXES and letters.count(letter) == 1

    if not (named("Y") and named("X")):
        return series_axes, shape
    kept = [i for i, (a, n) in enumerate(zip(letters, shape)) if n != 1 or named(a)]
    return "".join(series_axes[i] for i in kept), tuple(shape[i] for i in kept)


# ----------------------------------------------------------------------------- reading


def read_image(path: str | Path, axes: str | None = None, lazy: bool = False) -> tuple[ArrayLike, str]:
    """Read an image and return ``(image, axes)`` with axes in canonical ``"TZCYX"`` order.

    TIFF: memory-mapped when the file is uncompressed and contiguous (the result is a read-only
    ``np.memmap``), read otherwise; with `lazy`, a TIFF that cannot be memory-mapped (compressed, tiled or
    stored in pieces) is a dask array read through tifffile's zarr store instead (`_tiff_as_dask`: a slice
    decodes only the strips or tiles it covers). Axes from ImageJ/OME/tifffile metadata when present, else
    guessed (see :func:`guess_axes`); length-1 axes the file does not name beside its Y and X are dropped
    (`_named_layout`: an (H, W, 1) mask saved without axes is one plane). PNG/JPEG: grey -> ``"YX"``; RGB(A)
    -> ``"CYX"`` with alpha dropped, or ``"YX"`` when the colour channels are equal (16-bit colour PNGs: decoded
    by imagecodecs). An explicit ``axes`` overrides the metadata and describes the array as stored in the file
    (e.g. ``"YXC"``; a PNG or JPEG takes only ``"YX"`` or ``"YXC"``; a TIFF's may leave out the length-1 axes the
    file does not name). A file that is missing raises ``FileNotFoundError``; one that cannot be decoded,
    ``ValueError`` naming the supported formats.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read {path}: the file is empty (0 bytes); supported formats: {SUPPORTED_FORMATS}")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        image, series_axes = _read_tiff(path, lazy)
        named_axes, named_shape = _named_layout(series_axes, tuple(image.shape))
        if named_shape != tuple(image.shape) and (axes is None or len(axes) == len(named_shape)):
            image, series_axes = image.reshape(named_shape), named_axes
        found_axes = _axes_from_series(series_axes, tuple(image.shape)) if axes is None else ""  # given: no guess
    elif suffix in PILLOW_SUFFIXES:
        image, found_axes = _read_pillow(path)
        if axes is not None:  # it describes the file as stored (colour last), not the array read (colour first)
            _check_picture_axes(path, axes, found_axes)
            axes = None
    else:
        raise ValueError(
            f"cannot read {path}: unsupported suffix {path.suffix!r}; supported formats: {SUPPORTED_FORMATS}"
        )
    if axes is not None:
        found_axes = validate_axes(axes, image.ndim)
    return to_canonical(image, found_axes)


def reading_notes(path: str | Path, axes_option: str | None = "--axes") -> list[str]:
    """What `read_image(path)` (without `axes`) had to assume, in words for the user: a TIFF whose axes are not
    in its metadata and were guessed (`guess_axes`), one stored as planar RGB(A) samples without ImageJ or OME
    axes (what tifffile makes of a stack of 3 or 4 planes saved without metadata: read as channels), or one with
    several series (only the first is read); a zarr array without OME-Zarr axes, whose axes `read_zarr` guessed
    alike. Empty for other files and for files that say it all.
    axes_option: how the caller lets the user give the axes (the command line's ``--axes``); None: there is no
    such option (napari's reader), and the note says to save the file with its axes instead.

    >>> import tempfile, tifffile
    >>> path = tempfile.mkdtemp() + "/stack.tif"
    >>> tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint16), metadata=None)
    >>> reading_notes(path)
    ['its axes are not in the file: read as CYX (3 channels) by guess; give --axes ZYX if these are planes']
    """
    import tifffile

    from .ome_zarr import is_zarr_store

    path = Path(path)
    if path.suffix.lower() == ZARR_SUFFIX or is_zarr_store(path):
        return _zarr_notes(path, axes_option)
    if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
        return []
    try:
        with tifffile.TiffFile(path) as tif:
            series = list(tif.series)
            described = tif.is_imagej or tif.is_ome
    except Exception:  # noqa: BLE001  (read_image says what is wrong with an unreadable file)
        return []
    if not series:
        return []
    notes = []
    first = series[0]
    series_axes, shape = _named_layout(first.axes, tuple(first.shape))
    letters = series_axes.upper().replace("S", "C")
    planar_samples = series_axes.upper().startswith("S") and len(shape) == 3 and not described
    if len(shape) > 2 and (planar_samples or any(a not in CANONICAL_AXES for a in letters)):
        try:
            found = _axes_from_series(series_axes, shape)
        except ValueError:  # no guess at all (4-D without axes): `read_image` says so, naming the file
            return notes
        colours = series_axes.upper().endswith("S") and not planar_samples  # RGB samples: the planes are the guess
        notes.append(_guessed_axes_note(found, shape, axes_option, "ImageJ or OME-TIFF", colours))
    if len(series) > 1:
        notes.append(
            f"it holds {len(series)} image series: only the first (shape {shape}) is read; save the others as "
            "files of their own to segment them"
        )
    return notes


def _guessed_axes_note(
    found: str, shape: tuple[int, ...], axes_option: str | None, formats: str, colours: bool = False
) -> str:
    """`reading_notes`' note on axes `found` (the file's order, as `axes=` takes them) guessed for an array of
    `shape`: what it was read as and the axes to give (`axes_option`; None: save it with its axes, in `formats`)
    if the guess is wrong. colours: the channels are RGB samples for sure, only the planes are a guess."""
    axes, sizes = canonical_axes(found), dict(zip(found, shape))
    remedy = f"save it with its axes ({formats})"
    if "C" in axes and colours and "Z" in axes:
        as_time = found.replace("Z", "T")
        remedy = f"give {axes_option} {as_time}" if axes_option else remedy  # --axes names the file's order
        said = f"read as {axes} (planes of colour pictures) by guess; {remedy} if the planes are time points"
    elif "C" in axes and not ("Z" in axes and "T" in axes):
        other = found.replace("Z", "T").replace("C", "Z")  # channels as planes (and planes as time points)
        remedy = f"give {axes_option} {other}" if axes_option else remedy
        said = f"read as {axes} ({sizes['C']} channels) by guess; {remedy} if these are planes"
    else:
        said = f"read as {axes} by guess; {f'give {axes_option}' if axes_option else remedy} if that is wrong"
    return f"its axes are not in the file: {said}"


def _zarr_notes(path: Path, axes_option: str | None) -> list[str]:
    """`reading_notes` of a zarr store: its axes, when neither OME-Zarr metadata names them nor a 2-D shape
    says them, are guessed by `ome_zarr.read_zarr` (`guess_axes`)."""
    try:
        shape, said = _zarr_layout(path)
    except Exception:  # noqa: BLE001  (read_zarr says what is wrong with a store it cannot open)
        return []
    if said is not None or len(shape) < 3:
        return []
    try:
        found = guess_axes(shape)
    except ValueError:  # 4-D and up: read_zarr asks for the axes
        return []
    return [_guessed_axes_note(found, shape, axes_option, "OME-Zarr")]


def _zarr_layout(path: str | Path) -> tuple[tuple[int, ...], str | None]:
    """(shape, axes) of the zarr array `ome_zarr.read_zarr` reads at `path` (a group: its full-resolution array,
    `ome_zarr._image_array`; an array of an OME-Zarr: its dataset's, `ome_zarr.array_multiscale`), axes as its
    OME-Zarr multiscales metadata names them (in the stored order, "S" as "C"), or None where it names none that
    fit the shape."""
    import zarr

    from .ome_zarr import _image_array, _ngff_axes, array_multiscale

    node, said = zarr.open(str(path), mode="r"), None
    if not hasattr(node, "shape"):
        node, said = _image_array(node, Path(path))
    elif (described := array_multiscale(path)) is not None:  # an array of an OME-Zarr: its image's axes
        said = _ngff_axes(described[0])
    shape = tuple(int(n) for n in node.shape)
    return shape, said if said is not None and len(said) == len(shape) else None


def _read_tiff(path: Path, lazy: bool = False) -> tuple[Any, str]:
    """The first series of the TIFF at `path` and tifffile's axes of it (`_axes_from_series` translates them):
    memory-mapped where the file allows, else decoded, or with `lazy` a dask array (`_tiff_as_dask`)."""
    import tifffile

    described = False  # the header and its image series were read: a later failure is in the pixel data
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, series_axes, mappable = tuple(series.shape), series.axes, bool(series.dataoffset)
            described = True
            image = None if mappable or lazy else series.asarray()
        if image is None and not mappable:
            if _cut_short(path):  # a lazy read would fail later, on the strips past the end: say it now
                raise EOFError("the pixel data runs past the end of the file")
            image = _tiff_as_dask(path)
        if image is None:
            try:
                image = tifffile.memmap(path, mode="r").reshape(shape)
            except ValueError:
                image = tifffile.imread(path)
    except Exception as error:  # noqa: BLE001  (tifffile and its codecs raise many kinds for a corrupted file)
        held = _pillow_format(path)
        if held is not None:
            raise ValueError(
                f"cannot read {path}: {path.name} is a {held[0]} file, not a TIFF: rename it to {held[1]}"
            ) from error
        if described and (isinstance(error, ImportError) or "imagecodecs" in str(error)):
            raise ValueError(
                f"cannot read {path}: its compression needs a codec that is not installed (pip install imagecodecs) "
                f"({type(error).__name__}: {error})"
            ) from error
        if described and _cut_short(path):
            raise ValueError(
                f"cannot read {path}: a TIFF of shape {shape} whose pixel data is cut short (the file has "
                f"{path.stat().st_size:,} bytes: was it copied or saved completely?) ({type(error).__name__}: {error})"
            ) from error
        raise ValueError(
            f"cannot read {path} as TIFF ({type(error).__name__}: {error}); supported formats: {SUPPORTED_FORMATS}"
        ) from error
    return image, series_axes


def _tiff_as_dask(path: Path) -> Any:
    """The first series of the TIFF at `path` (its full resolution) as a dask array over tifffile's zarr store:
    a slice of it decodes only the strips or tiles it covers (compressed and tiled files). The first chunk is
    decoded at once, so that a missing codec is an error here, not when the array is drawn or segmented."""
    import dask.array as da
    import tifffile
    import zarr

    array = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
    array[(0,) * array.ndim]
    return da.from_zarr(array)


def _cut_short(path: Path) -> bool:
    """Whether a TIFF's pixel data (its pages' strips or tiles) runs past the end of the file."""
    import tifffile

    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            return any(
                offset + count > size
                for page in tif.pages
                for offset, count in zip(page.dataoffsets, page.databytecounts)
            )
    except Exception:  # noqa: BLE001  (a header that cannot be read again: not known to be cut short)
        return False


PILLOW_SIGNATURES = {b"\x89PNG\r\n\x1a\n": ("PNG", ".png"), b"\xff\xd8\xff": ("JPEG", ".jpg")}


def _pillow_format(path: Path) -> tuple[str, str] | None:
    """(format, suffix) of a file that starts as a PNG or JPEG (a picture saved under a TIFF name), else None."""
    with open(path, "rb") as file:
        start = file.read(8)
    return next((name for signature, name in PILLOW_SIGNATURES.items() if start.startswith(signature)), None)


def _read_pillow(path: Path, palette_indices: bool = False) -> tuple[np.ndarray, str]:
    """palette_indices: a palette ("P") image is its plane of palette indices (label images saved with a colour
    table), not the colours they stand for."""
    from PIL import Image

    try:
        with Image.open(path) as pil:
            deep_colour = _is_16_bit_colour_png(pil)
            if not deep_colour:
                pil.load()
                if pil.mode == "P" and palette_indices:
                    return np.asarray(pil), "YX"
                if pil.mode == "P":
                    pil = pil.convert("RGBA" if "transparency" in pil.info else "RGB")
                elif pil.mode in ("1", "LA", "PA"):
                    pil = pil.convert("L")
                elif pil.mode not in ("L", "RGB", "RGBA", "I", "I;16", "F"):
                    pil = pil.convert("RGB")
                image = np.asarray(pil)
    except Exception as error:  # noqa: BLE001  (Pillow and its plugins raise many kinds for a corrupted file)
        raise ValueError(
            f"cannot read {path} as an image ({type(error).__name__}: {error}); supported formats: {SUPPORTED_FORMATS}"
        ) from error
    if deep_colour:
        image = _read_16_bit_colour_png(path)
    if image.ndim == 2:
        return image, "YX"
    if image.shape[-1] == 2:  # grey and alpha
        return np.ascontiguousarray(image[..., 0]), "YX"
    colour = image[..., :3]
    if (colour[..., 0] == colour[..., 1]).all() and (colour[..., 0] == colour[..., 2]).all():
        return np.ascontiguousarray(colour[..., 0]), "YX"
    return np.ascontiguousarray(np.moveaxis(colour, -1, 0)), "CYX"


def _check_picture_axes(path: Path, axes: str, found: str) -> None:
    """Refuse axes that cannot describe a PNG or JPEG as stored: "YX" (grey) or "YXC" (colour, the channels last;
    a colour picture whose channels are all equal, read as grey, takes either).

    >>> _check_picture_axes(Path("rgb.png"), "CYX", "CYX")
    Traceback (most recent call last):
    ...
    ValueError: axes 'CYX' cannot describe rgb.png: a colour .png image is stored as YXC (its channels last)
    """
    given = validate_axes(axes, len(axes))
    fits = ("YXC",) if found == "CYX" else ("YX", "YXC")
    if given not in fits:
        kind = "colour" if found == "CYX" else "grey"
        raise ValueError(
            f"axes {axes!r} cannot describe {path.name}: a {kind} {path.suffix.lower()} image is stored as "
            f"{fits[0]}{' (its channels last)' if fits[0] == 'YXC' else ''}"
        )


def _is_16_bit_colour_png(pil: Any) -> bool:
    """Whether a Pillow image, opened but not loaded, is a PNG of 16-bit RGB, RGBA or grey + alpha values, which
    Pillow would read as 8 bits (the high byte of each value). Its raw mode says so (a grey 16-bit PNG, "I;16B",
    keeps its bits)."""
    raw_modes = {args if isinstance(args, str) else args[0] for *_, args in pil.tile}
    return pil.format == "PNG" and bool(raw_modes & {"RGB;16B", "RGBA;16B", "LA;16B"})


def _read_16_bit_colour_png(path: Path) -> np.ndarray:
    """The uint16 pixels (Y, X, samples) of a 16-bit colour or grey + alpha PNG, decoded by imagecodecs."""
    try:
        import imagecodecs
    except ImportError:
        raise ValueError(
            f"cannot read {path}: a 16-bit colour PNG, of which Pillow reads only 8 bits per value; install "
            "imagecodecs (pip install imagecodecs) to read all 16, or save the image as a 16-bit TIFF"
        ) from None
    try:
        return imagecodecs.png_decode(path.read_bytes())
    except Exception as error:  # noqa: BLE001  (imagecodecs raises its own kinds for a corrupted file)
        raise ValueError(
            f"cannot read {path} as an image ({type(error).__name__}: {error}); supported formats: {SUPPORTED_FORMATS}"
        ) from error


LABEL_PNG_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "F")
"""Pillow modes a PNG of labels may have: one plane of values (a palette PNG: its indices). Colour and alpha
channels are refused: such a file is an image (images and labels swapped), or labels drawn as colours."""


def read_label_image(path: str | Path) -> tuple[ArrayLike, str]:
    """Read a label image or stack as stored, ``(labels, axes)``: as `read_image`, except that a palette PNG
    (ids saved with a colour table, as many annotation tools do) gives its ids, not the colours they stand for,
    a PNG with colour or alpha channels is refused (`LABEL_PNG_MODES`: an RGBA image whose R = G = B would
    otherwise read as one grey plane of "ids"), and so is a JPEG (lossy: its ids and outlines are not those
    saved). A TIFF without axes in its metadata whose guess gives channels (a stack of 2 to 4 planes) is read as
    planes: labels have no channels."""
    path = Path(path)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        raise ValueError(
            f"labels in {path.name}: JPEG's lossy compression changes ids and outlines (a binary mask gets dozens "
            "of values); save labels as PNG or TIFF"
        )
    if path.suffix.lower() in PILLOW_SUFFIXES and path.is_file():
        _check_label_png_mode(path)
        return _read_pillow(path, palette_indices=True)
    labels, axes = read_image(path)
    if "C" in axes and any("by guess" in said for said in reading_notes(path)):
        # a stack of 2 to 4 label planes saved without axes reads as channels by the images' guess; labels have
        # none: they are planes (Z, or T beside a Z)
        free = next((a for a in "ZT" if a not in axes), None)
        if free is not None:
            return to_canonical(labels, axes.replace("C", free))
    return labels, axes


def _check_label_png_mode(path: Path) -> None:
    """Refuse a PNG with colour or alpha channels as labels, naming what it holds."""
    from PIL import Image

    try:
        with Image.open(path) as pil:
            mode = pil.mode
    except Exception:  # noqa: BLE001  (`_read_pillow` says what is wrong with a file that cannot be decoded)
        return
    if mode in LABEL_PNG_MODES:
        return
    held = {"RGBA": "colour and alpha", "LA": "grey and alpha", "PA": "palette and alpha"}.get(mode, "colour")
    raise ValueError(
        f"labels in {path.name} must be one 2-D plane of integer ids (0 = background, a grey 8- or 16-bit PNG or "
        f"a TIFF), got an {mode} PNG ({held} channels: axes 'CYX'); if it is an image, images and labels are "
        "swapped"
    )


def read_labels(path: str | Path) -> np.ndarray:
    """Read a 2-D label image ``(Y, X)`` of integers, 0 = background, checked by `validation.check_labels`.

    Values are returned as stored (a binary 0/255 mask stays 0/255; a boolean mask becomes uint8 0/1), except
    ids above 2**31 - 1, which are renumbered 1..n (int32, -1 = not annotated). The sparse-annotation value
    -1 of signed dtypes is accepted; other negative values, floats and multi-channel files raise ``ValueError``.
    """
    image, axes = read_label_image(path)
    labels = np.asarray(image)
    if axes != "YX":
        raise ValueError(
            f"labels in {path} must be one 2-D plane (axes 'YX'), got axes {axes!r} with shape {labels.shape}"
        )
    return np.array(check_labels(labels, f"labels in {path}"))


# ----------------------------------------------------------------------------- calibrated TIFF layout


def tiff_layout(
    shape: tuple[int, ...],
    dtype: Any,
    axes: str,
    pixel_size: PixelSize | None = None,
    spacing: StackSpacing | None = None,
) -> dict[str, Any]:
    """The keywords of ``tifffile.imwrite`` (or ``tifffile.memmap``) for an array of `shape`, `dtype` and canonical
    `axes` that :func:`read_image` reads back with those axes, with its calibration (`metadata.read_pixel_size`
    and `metadata.read_spacing` read it back).

    uint8/uint16/float32: an ImageJ hyperstack (pixel size as Fiji writes it, ``spacing``, ``finterval``),
    unless an axis other than Y and X has length 1 (ImageJ readers drop it).
    Other dtypes (int32 labels), and those: a tifffile "shaped" TIFF with the pixel size in its resolution tags
    (pixels per cm) and a Z step or frame interval in its JSON description (ImageJ's names: ``spacing``, ``unit``,
    ``finterval``), which other readers do not know; so when there is one to keep, an OME-TIFF
    (``PhysicalSizeX/Y/Z``, ``TimeIncrement`` in s; the resolution tags too), unless an axis other than Y and X
    has length 1 (OME readers drop it) or the dtype is a 64-bit integer (OME has none: `write_tiff` stores labels
    that fit in 32 bits as such). A Z step is kept with a pixel size and more than one plane, a frame
    interval with more than one frame.
    """
    lengths = dict(zip(axes, shape))
    spacing = spacing or StackSpacing()
    z = spacing.z if pixel_size is not None and lengths.get("Z", 1) > 1 else None
    t = spacing.t if lengths.get("T", 1) > 1 else None
    single = any(n == 1 for a, n in lengths.items() if a not in "YX")  # ImageJ and OME readers drop such axes
    imagej = np.dtype(dtype) in IMAGEJ_DTYPES and not single
    calibration, entries = tiff_calibration(pixel_size, imagej)
    layout: dict[str, Any] = {"photometric": "minisblack", **calibration}
    if imagej:
        entries |= ({"spacing": z} if z else {}) | ({"finterval": t} if t else {})
        return {**layout, "imagej": True, "metadata": {"axes": axes, **entries}}
    unit = OME_LENGTH_UNITS.get(pixel_size.unit) if pixel_size is not None else None
    ome_type = np.dtype(dtype).kind not in "iu" or np.dtype(dtype).itemsize < 8  # OME has no 64-bit integers
    if not (z and unit or t) or not ome_type or single:  # the steps in the JSON description, named as ImageJ's
        kept = ({"spacing": z, "unit": pixel_size.unit} if z else {}) | ({"finterval": t} if t else {})
        return {**layout, "metadata": {"axes": axes, **kept}}
    z = z if unit else None
    if unit:
        entries = {"PhysicalSizeX": pixel_size.x, "PhysicalSizeY": pixel_size.y}
        entries |= {"PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit}
    if z:
        entries |= {"PhysicalSizeZ": z, "PhysicalSizeZUnit": unit}
    if t:
        entries |= {"TimeIncrement": t, "TimeIncrementUnit": "s"}
    return {**layout, "ome": True, "metadata": {"axes": axes, **entries}}


# ----------------------------------------------------------------------------- writing


def write_tiff(
    path: str | Path,
    array: ArrayLike,
    axes: str,
    compression: str | None = None,
    pixel_size: PixelSize | None = None,
    spacing: StackSpacing | None = None,
) -> None:
    """Write ``array`` with ``axes`` to a TIFF that :func:`read_image` reads back with the same axes.

    The array is stored in canonical ``"TZCYX"`` order. uint8/uint16/float32 are written as ImageJ
    hyperstacks; other dtypes as tifffile "shaped" TIFFs (axes in the JSON description), or OME-TIFFs to keep
    a Z step or frame interval (:func:`tiff_layout`); 64-bit integers whose values fit in 32 bits are stored in
    32. Uncompressed by default, which keeps the file memory-mappable; ``compression="zlib"`` needs no extra package. ``pixel_size`` (a `metadata.PixelSize`)
    and ``spacing`` (a `metadata.StackSpacing`) are stored for `metadata.read_pixel_size` and
    `metadata.read_spacing`.
    Atomic (:func:`atomic_write`): an interrupted write leaves no file under ``path``, or the old one.
    """
    import tifffile

    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8 and array.size:  # napari's int64 labels: 32 bits
        narrow = np.dtype(np.int32 if array.dtype.kind == "i" else np.uint32)  # when they fit, which OME can hold
        if np.iinfo(narrow).min <= int(array.min()) and int(array.max()) <= np.iinfo(narrow).max:
            array = array.astype(narrow)
    array, axes = to_canonical(array, axes)
    layout = tiff_layout(array.shape, array.dtype, axes, pixel_size, spacing)
    with atomic_write(path) as staging:
        tifffile.imwrite(staging, array, compression=compression, **layout)


# ----------------------------------------------------------------------------- atomic writes


def temporary_sibling(path: str | Path, folder: bool = False) -> Path:
    """A new, unused name beside `path` for writing it: ``.<name>.<pid>.<random>.tmp`` (hidden, and marked
    with the writer's process id so that `remove_stale_temporaries` knows when it is abandoned); created as an
    empty file, or an empty folder with `folder`, with the permissions a plain `open` or `mkdir` would give it
    (the umask's: `default_mode`), not tempfile's owner-only ones, since it is renamed into place as the result:
    colleagues on a shared drive can read the labels and load the model."""
    path = Path(path)
    prefix = f".{path.name}.{os.getpid()}."
    if folder:
        created = Path(tempfile.mkdtemp(prefix=prefix, suffix=TEMPORARY_SUFFIX, dir=path.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=TEMPORARY_SUFFIX, dir=path.parent)
        os.close(handle)
        created = Path(name)
    created.chmod(default_mode(folder))
    return created


def default_mode(folder: bool = False) -> int:
    """The permissions a new file (0o666) or folder (0o777) gets under the process's umask."""
    return (0o777 if folder else 0o666) & ~_umask()


@functools.cache
def _umask() -> int:
    """The process's umask, read once: from /proc where there is one, since setting it to read it back (the only
    portable way) would briefly change it for every thread."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Write a file under a temporary name and rename it to `path` once the block completes.

    >>> with atomic_write(folder / "scores.json") as staging:  # doctest: +SKIP
    ...     staging.write_text("{}")

    An error (or KeyboardInterrupt) in the block removes the temporary file and leaves `path` as it was; a
    killed process leaves only a hidden ``.<name>.<pid>.*.tmp`` that the next write of `path` removes. The file
    gets the permissions a plain `open` would give it (the umask's), not the temporary's owner-only ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    staging = temporary_sibling(path)
    try:
        yield staging
        if staging.exists():
            staging.chmod(default_mode())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def carry_over(path: Path, staging: Path, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Give the folder `staging`, about to replace `path` (`replace_folder`), the entries of `path` it does not
    have and that are not in `keep` (the files the writer makes): hard-linked where the file system allows it,
    else copied, so that they stay in `path` (or in the old folder `replace_folder` leaves when it is killed)
    until the new folder is in place. Our own temporaries are left behind. Returns the names carried over."""
    import shutil

    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return []

    def link_or_copy(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:  # no hard links here (FAT, some network drives): a copy
            shutil.copy2(source, target)

    carried = []
    for entry in sorted(path.iterdir()):
        name = entry.name
        if name in keep or (staging / name).exists() or (name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), staging / name)
        elif entry.is_dir():
            shutil.copytree(entry, staging / name, symlinks=True, copy_function=link_or_copy)
        else:
            link_or_copy(str(entry), str(staging / name))
        carried.append(name)
    return carried


def replace_folder(staging: Path, path: Path) -> None:
    """Move the complete folder `staging` to `path` (same file system), replacing what is there, in two renames:
    a process killed between them leaves the previous folder as ``.<name>.<pid>.old.tmp``, which
    `recover_replaced_folder` puts back. `path` is never a half-written folder."""
    import shutil

    if not path.exists():
        os.replace(staging, path)
        return
    old = path.with_name(f".{path.name}.{os.getpid()}.old{TEMPORARY_SUFFIX}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    try:
        os.replace(staging, path)
    except BaseException:
        os.replace(old, path)
        raise
    if old.is_symlink():  # `path` was a link: the link is replaced, the folder it pointed to stays
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


def recover_replaced_folder(path: str | Path, complete: Callable[[Path], bool]) -> Path | None:
    """Put back the previous folder of `path` when a `replace_folder` was killed between its two renames: when
    `path` is missing and a ``.<name>.<pid>.old.tmp`` folder of a process that no longer runs is `complete`,
    it is renamed back to `path` (the newest first). Returns the recovered folder, or None. Call it before
    `remove_stale_temporaries`, which would delete that folder."""
    path = Path(path)
    if path.exists() or not path.parent.is_dir():
        return None
    prefix, suffix = f".{path.name}.", f".old{TEMPORARY_SUFFIX}"
    # only the folder's names are looked at first: its other entries (a dangling symbolic link, a file removed
    # meanwhile) are none of this function's business
    candidates = []
    for candidate in path.parent.iterdir():
        name = candidate.name
        pid = name[len(prefix) : -len(suffix)] if name.startswith(prefix) and name.endswith(suffix) else ""
        if pid.isdigit() and candidate.is_dir() and not _process_alive(int(pid)):
            candidates.append(candidate)
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if complete(candidate):
            os.replace(candidate, path)
            return path
    return None


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files and folders left beside `path` by writers that no longer run.

    Matches ``.<name>.<pid>.<part>.tmp`` (files of `atomic_write`, folders of `modelfile.save_model`, with a
    random part or "old") whose process `pid` is gone; a live writer's temporaries are left alone, and so are
    those of another file whose name starts like this one's (``.run.2024.<pid>.<part>.tmp`` of `run.2024` is
    not `run`'s, whose process 2024 would be looked for). Returns what was removed.
    """
    import shutil

    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = f".{path.name}."
    for candidate in path.parent.iterdir():
        name = candidate.name
        if not (name.startswith(prefix) and name.endswith(TEMPORARY_SUFFIX)):
            continue
        parts = name[len(prefix) : -len(TEMPORARY_SUFFIX)].split(".")
        pid = parts[0] if len(parts) == 2 else ""  # tempfile's random parts hold no dot
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: assume it is alive
    return True


# ----------------------------------------------------------------------------- normalisation


def _is_lazy(image: Any) -> bool:
    """True for arrays whose values are not in memory: dask, zarr, ``np.memmap``."""
    return isinstance(image, np.memmap) or not isinstance(image, np.ndarray)


def _to_numpy(array: Any) -> np.ndarray:
    compute = getattr(array, "compute", None)
    return np.asarray(compute() if callable(compute) else array)


def _strided_sample(image: Any, axes: str, max_samples: int) -> np.ndarray:
    """A regular strided subset of ``image`` with at most ~``max_samples`` elements per channel."""
    sampled = [i for i, a in enumerate(axes) if a != "C"]
    per_channel = int(np.prod([image.shape[i] for i in sampled]))
    if per_channel <= max_samples:
        return _to_numpy(image)
    step = 1
    while int(np.prod([-(-image.shape[i] // step) for i in sampled])) > max_samples:
        step += 1
    index = tuple(slice(None, None, step) if a != "C" else slice(None) for a in axes)
    return _to_numpy(image[index])


def channel_values(image: ArrayLike, axes: str = "YX", max_samples: int = MAX_PERCENTILE_SAMPLES) -> np.ndarray:
    """The values of ``image`` per channel, ``(C, N)`` (C = 1 without ``"C"`` in ``axes``), from the regular
    strided subsample `percentiles` reads (at most ``max_samples`` values per channel)."""
    if not hasattr(image, "shape"):
        image = np.asarray(image)
    axes = validate_axes(axes, image.ndim)
    sample = _strided_sample(image, axes, max_samples) if _is_lazy(image) or image.size > max_samples else image
    sample = np.asarray(sample)
    if "C" not in axes:
        return sample.reshape(1, -1)
    return np.moveaxis(sample, axes.index("C"), 0).reshape(sample.shape[axes.index("C")], -1)


def percentiles(
    image: ArrayLike,
    low: float = 1.0,
    high: float = 99.8,
    axes: str = "YX",
    max_samples: int = MAX_PERCENTILE_SAMPLES,
) -> tuple[np.ndarray, np.ndarray]:
    """Low and high percentiles of ``image``, per channel when ``"C"`` is in ``axes``.

    Returns ``(lo, hi)``, float32 arrays (float64 for values float32 does not hold exactly, see
    `percentiles_of`) shaped to broadcast against ``image``: size 1 on every axis but C (``(C, 1, 1)``
    for ``"CYX"``, ``(1, 1)`` for ``"YX"``). Arrays with more than ``max_samples`` values per channel
    (and any dask/zarr array or memmap) are estimated from a regular strided subsample of at most
    ``max_samples`` values per channel, read without loading the whole array.
    """
    return percentiles_of(channel_values(image, axes, max_samples), low, high, axes)


def percentiles_of(values: np.ndarray, low: float, high: float, axes: str) -> tuple[np.ndarray, np.ndarray]:
    """`percentiles` of the values `channel_values` read, ``(C, N)``, shaped to broadcast against an image of
    `axes` (for a caller that needs the values for something else too, so the image is sampled once).

    float32, or float64 for values float32 does not hold exactly (`exact_in_float32`), e.g. int64 counts offset
    by 2**31, whose percentiles float32 would round to a multiple of 256."""
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles need 0 <= low < high <= 100, got low={low}, high={high}")
    if values.shape[-1] == 0:
        raise ValueError(f"the image is empty: no values to take percentiles of (sample shape {values.shape})")
    if values.dtype == bool:  # a binary image: 0 and 1 (np.percentile cannot subtract booleans)
        values = values.astype(np.uint8)
    lo, hi = np.percentile(values, [low, high], axis=1)
    broadcast = tuple(-1 if a == "C" else 1 for a in axes)
    dtype = np.float32 if exact_in_float32(values.dtype) else np.float64
    return lo.astype(dtype).reshape(broadcast), hi.astype(dtype).reshape(broadcast)


def exact_in_float32(dtype: Any) -> bool:
    """True when float32 holds every value of `dtype` exactly (bool, 8/16-bit integers, float16/32).

    >>> exact_in_float32(np.uint16), exact_in_float32(np.int64), exact_in_float32(np.float64)
    (True, False, False)
    """
    dtype = np.dtype(dtype)
    return dtype.kind in "biuf" and dtype.itemsize <= (4 if dtype.kind == "f" else 2)


def normalization_range(lo: ArrayLike, hi: ArrayLike, eps: float = 1e-6) -> np.ndarray:
    """The denominator of the normalisation: ``(hi - lo) * (1 + eps)``, same shape as ``lo``, ``hi`` (float64).

    `eps` is relative, so the result does not depend on the image's units (an image scaled by 1e-8 normalises
    as the image): for a range of 1 or more it differs from CSBDeep's ``hi - lo + eps`` by float rounding. The
    sign is kept, so ``lo`` and ``hi`` swapped (an inverted channel) give ``-(hi - lo) * (1 + eps)``. Where
    ``hi == lo`` (a constant image): ``eps * |lo|``, or ``eps`` at 0, so nothing is divided by zero.

    >>> float(normalization_range(0.0, 4e-8) / normalization_range(0.0, 4.0))  # scale invariant
    1e-08
    >>> float(normalization_range(4.0, 0.0))  # swapped (inverted): the sign of hi - lo
    -4.000004
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    span = hi - lo
    magnitude = np.maximum(np.abs(lo), np.abs(hi))
    constant = eps * np.where(magnitude > 0, magnitude, 1.0)
    return np.where(span != 0, span * (1.0 + eps), constant)


def apply_normalization(tile: ArrayLike, lo: ArrayLike, hi: ArrayLike, eps: float = 1e-6) -> Any:
    """``(tile - lo) / normalization_range(lo, hi, eps)`` in float32, not clipped (CSBDeep convention,
    ``(tile - lo) / (hi - lo)`` with a relative `eps`: see `normalization_range`).

    ``lo``, ``hi`` come from :func:`percentiles` of the whole image, so every tile is normalised with
    the same global values (swapped for an inverted channel: ``1 - x``). Dask input stays lazy; anything else
    becomes a numpy array. A tile of values float32 does not hold exactly (int32/64, float64: an offset of
    2**31 would leave steps of 256) is computed in float64 before the float32 result.
    """
    if not hasattr(tile, "compute"):
        tile = np.asarray(tile)
    denominator = normalization_range(lo, hi, eps)
    scale = 1.0 / denominator
    beyond_float32 = max(np.abs(denominator).max(), np.abs(scale).max()) > np.finfo(np.float32).max  # ~3e38
    if beyond_float32 or not exact_in_float32(tile.dtype):
        return ((tile.astype(np.float64) - np.asarray(lo, dtype=np.float64)) * scale).astype(np.float32)
    lo = np.asarray(lo, dtype=np.float32)
    return (tile.astype(np.float32) - lo) * scale.astype(np.float32)


def normalize_percentile(
    image: ArrayLike, low: float = 1.0, high: float = 99.8, axes: str = "YX", eps: float = 1e-6
) -> Any:
    """Percentile-normalise ``image`` to float32: ``(x - p_low) / ((p_high - p_low) * (1 + eps))``.

    Percentiles per channel when ``"C"`` is in ``axes`` (CSBDeep style); values outside
    ``[p_low, p_high]`` map outside ``[0, 1]`` (no clipping); `eps` is relative (`normalization_range`), so
    the result does not depend on the image's units.
    """
    lo, hi = percentiles(image, low, high, axes)
    return apply_normalization(image, lo, hi, eps)
