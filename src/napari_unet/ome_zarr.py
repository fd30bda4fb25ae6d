"""OME-Zarr in and out: a zarr array (or the full resolution of an OME-Zarr image) read lazily with its axes, and labels
or images written as a single-scale OME-Zarr 0.4 image with their pixel size, Z step and frame interval (zarr
format 2, "/" chunk keys, axes in NGFF's order: time, channel, space; `metadata.read_pixel_size` and
`metadata.read_spacing` read them back).

>>> import tempfile
>>> path = write_ome_zarr(tempfile.mkdtemp() + "/labels.ome.zarr", np.zeros((2, 8, 8), np.int32), "TYX")
>>> read_zarr(path)[1]
'TYX'
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .io import (
    canonical_axes,
    guess_axes,
    recover_replaced_folder,
    remove_stale_temporaries,
    replace_folder,
    temporary_sibling,
    to_canonical,
    validate_axes,
)
from .metadata import PixelSize, StackSpacing

NGFF_VERSION = "0.4"
OME_ZARR_UNITS = {"um": "micrometer", "nm": "nanometer", "mm": "millimeter", "cm": "centimeter", "m": "meter"}
OME_ZARR_AXIS_TYPES = {"T": "time", "Z": "space", "C": "channel", "Y": "space", "X": "space"}
OME_ZARR_TIME_UNIT = "second"  # of the t scale (`metadata.StackSpacing.t`)
NGFF_AXES = "TCZYX"  # NGFF 0.4's order: time, then channel, then space (the package's own is "TZCYX")
# NGFF 0.4 stores are zarr format 2 with "/" chunk keys (`0/3/1`, nested folders: dimension_separator "/"),
# where zarr's own default for format 2 is "." (`0.3.1`). Every OME-Zarr this package writes uses these keys:
# `write_ome_zarr` (`predict --zarr`) and `distributed.create_ome_zarr` (block by block), so both lay out alike.
NGFF_CHUNK_KEYS = {"name": "v2", "separator": "/"}
ZARR_METADATA = (".zarray", ".zgroup", ".zattrs", "zarr.json")  # a zarr store's metadata files (format 2 and 3)


def read_zarr(path: str | Path, axes: str | None = None) -> tuple[Any, str]:
    """(image, axes) of a zarr store, read lazily through dask; axes canonical ("TZCYX" order). They come from
    `axes`, from OME-Zarr multiscales metadata, or are guessed from the shape; a group is read at its first
    multiscales dataset (its full resolution), a bioformats2raw layout at its first image (`_image_array`)."""
    import dask.array as da
    import zarr

    path = Path(path)

    if not path.exists():
        raise FileNotFoundError(f"no zarr store at {path}")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:  # zarr raises a variety of errors for a folder that is not a store
        raise ValueError(f"cannot open {path} as a zarr array ({type(error).__name__}: {error})") from error
    if hasattr(node, "shape"):  # an array: its axes where it is a dataset of the image around it ("slide.zarr/0")
        described = array_multiscale(path)
        found = _ngff_axes(described[0]) if described else None
    else:
        node, found = _image_array(node, path)
    image = da.from_zarr(node)
    if axes is None:
        axes = found if found and len(found) == image.ndim else guess_axes(tuple(image.shape))
    return to_canonical(image, axes)


def is_zarr_store(path: str | Path) -> bool:
    """Whether `path` is a folder holding a zarr array or group (a metadata file: `ZARR_METADATA`), whatever its
    name: `slide.zarr`, or an array inside one, `slide.zarr/0`."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in ZARR_METADATA)


def _multiscales(group) -> list | None:
    """The NGFF `multiscales` of a zarr group (0.4: an attribute; 0.5: inside the attribute "ome"), or None."""
    attrs = group.attrs
    ome = attrs.get("ome")
    return attrs.get("multiscales") or (ome.get("multiscales") if isinstance(ome, dict) else None)


def image_group(group) -> tuple[Any, str]:
    """(the group holding the image's multiscales, its path inside `group`): `group` itself, or for a
    bioformats2raw layout (bfconvert, QuPath: images as the groups "0", "1", ... of the root) its first image."""
    if not _multiscales(group) and "0" in group and not hasattr(group["0"], "shape"):
        return group["0"], "0"
    return group, ""


def _ngff_axes(multiscale: dict) -> str | None:
    """The axes an NGFF `multiscale` names, in its stored order ("S" as "C"), or None where it names none."""
    names = (a["name"] if isinstance(a, dict) else str(a) for a in multiscale.get("axes", []))
    return "".join(name.upper()[0] for name in names).replace("S", "C") or None


def array_multiscale(path: str | Path) -> tuple[dict, dict] | None:
    """(the multiscale, the dataset) of the NGFF `multiscales` of the zarr group holding the array at `path` whose
    dataset is that array (`slide.zarr/0`: the dataset "0" of `slide.zarr`), so that an array read on its own
    keeps the image's axes and scale; None where its parent folder describes no such dataset."""
    import zarr

    path = Path(path)
    try:
        multiscales = _multiscales(zarr.open_group(str(path.parent), mode="r"))
        for multiscale in multiscales if isinstance(multiscales, list) else []:
            for dataset in multiscale.get("datasets") or []:
                if isinstance(dataset, dict) and str(dataset.get("path")).strip("/") == path.name:
                    return multiscale, dataset
    except Exception:  # noqa: BLE001 - not a zarr group, or metadata in error: nothing describes the array
        return None
    return None


def _image_array(group, path: Path) -> tuple[Any, str | None]:
    """(the full-resolution array, its axes from the metadata or None) of the zarr group at `path`: an OME-Zarr
    image is read at its first dataset (`multiscales[0]["datasets"][0]["path"]`: "0" as this package writes it,
    "s0" elsewhere); a bioformats2raw layout (bfconvert, QuPath: the images are the groups "0", "1", ... of the
    root, beside "OME") at its first image; a group without metadata at its array "0"."""
    group, inner = image_group(group)
    path, multiscales = path / inner, _multiscales(group)
    found, name = None, "0"
    if multiscales:
        found = _ngff_axes(multiscales[0])
        datasets = multiscales[0].get("datasets") or [{}]
        name = str(datasets[0].get("path", "0")) if isinstance(datasets[0], dict) else "0"
    if name not in group:
        raise ValueError(f"{path} is a zarr group without an array {name!r}; give the path of the array")
    node = group[name]
    if not hasattr(node, "shape"):
        raise ValueError(f"{path / name} is a zarr group, not an array; give the path of the array in it")
    return node, found


def write_ome_zarr(
    path: str | Path,
    array,
    axes: str,
    pixel_size: PixelSize | None = None,
    spacing: StackSpacing | None = None,
    chunk: int = 1024,
    attributes: dict[str, Any] | None = None,
) -> Path:
    """Copy `array` (axes over "TZCYX", canonical) into a single-scale OME-Zarr 0.4 image at `path`, plane by
    plane (a memory-mapped array is never loaded whole), its axes in NGFF's order (`NGFF_AXES`: "TZCYX" is
    stored as "TCZYX", and `read_zarr` gives it back as "TZCYX"); `pixel_size` becomes the scale of the y and x axes,
    `spacing` that of z (the Z step, in the pixel size's unit) and t (the frame interval, in seconds), each with
    its unit (`ngff_multiscales`). `read_input`, `metadata.read_pixel_size` and `metadata.read_spacing` read it
    back; an existing store at `path` is replaced once the new one is complete (written under a temporary name,
    then renamed); a file or a folder that is not a zarr store (and not empty) is refused, never replaced.
    Axes that do not name the array's dimensions in canonical order are a ValueError, before anything is written.
    attributes: more attributes of the group (JSON), written with the `multiscales`."""
    axes = validate_axes(axes, np.ndim(array))
    if axes != canonical_axes(axes):
        raise ValueError(
            f"axes {axes!r} must be in canonical order ({canonical_axes(axes)!r}): reorder the array first"
        )
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_replaced_folder(final, _complete)  # a replacement killed between its renames: the old store back
    _check_replaceable(final)
    remove_stale_temporaries(final)  # what killed writers left: `.<name>.<pid>.*.tmp`
    path = temporary_sibling(final, folder=True)
    stored = ngff_order(axes)
    try:
        multiscales = ngff_multiscales(final.name, stored, pixel_size, spacing)
        _write_store(path, array, axes, stored, chunk, {**(attributes or {}), "multiscales": multiscales})
        replace_folder(path, final)  # killed between its renames: the next write puts the old store back
    finally:
        shutil.rmtree(path, ignore_errors=True)  # Ctrl-C, a full disk: no half-written store is left
    return final


def _check_replaceable(path: Path) -> None:
    """Refuse a `path` that holds something other than a zarr store: a file, or a folder with other files."""
    if path.is_file() or path.is_symlink() and not path.is_dir():
        raise ValueError(f"{path} is a file, not an OME-Zarr store: choose another path")
    if (
        path.is_dir()
        and any(path.iterdir())
        and not any((path / f).is_file() for f in (".zgroup", ".zattrs", "zarr.json"))
    ):
        raise ValueError(f"{path} is a folder that is not an OME-Zarr store: choose another path")


def _complete(path: Path) -> bool:
    """Whether the store at `path` was finished: its metadata is written last."""
    return (path / ".zattrs").is_file()


def ngff_order(axes: str) -> str:
    """The letters of `axes` in NGFF 0.4's order, time, channel, space: ``ngff_order("TZCYX") == "TCZYX"``."""
    return "".join(a for a in NGFF_AXES if a in axes)


def _write_store(path: Path, array, axes: str, stored: str, chunk: int, attributes: dict[str, Any]) -> None:
    """Array "0" with the axes `stored` (`axes` reordered), filled plane by plane from `array` (axes `axes`); the
    group's `attributes` (its `multiscales`) are written last, so that a store without them is unfinished."""
    import zarr

    sizes = {a: int(n) for a, n in zip(axes, array.shape)}
    shape = tuple(sizes[a] for a in stored)
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    chunks = tuple(1 if a in "TZC" else min(n, chunk) for a, n in zip(stored, shape))
    data = group.create_array(
        "0", shape=shape, chunks=chunks, dtype=np.dtype(array.dtype), chunk_key_encoding=NGFF_CHUNK_KEYS
    )
    for index in np.ndindex(*shape[:-2]):
        plane = dict(zip(stored, index))
        data[index] = np.asarray(array[tuple(plane[a] for a in axes[:-2])])
    group.attrs.update(attributes)


def ngff_multiscales(
    name: str, axes: str, pixel_size: PixelSize | None = None, spacing: StackSpacing | None = None
) -> list[dict[str, Any]]:
    """The NGFF 0.4 `multiscales` of a single-scale image (array "0") of `axes` in NGFF's order (`ngff_order`:
    time, channel, space; for "YX" and "CYX" the package's canonical order too), as every OME-Zarr this
    package writes has them (`write_ome_zarr`, `distributed.ngff_attributes`): each axis named and typed; the
    scale of y and x from `pixel_size`, of z from the Z step of `spacing` (in the pixel size's unit), of t from
    its frame interval (seconds), 1 elsewhere; a unit ("micrometer", ..., "second") on the axes that have a scale.
    A pixel size in a unit NGFF has no name for (`OME_ZARR_UNITS`) sizes nothing, nor does its Z step.

    >>> ngff_multiscales("x", "ZYX", PixelSize(0.5, 0.5, "um"), StackSpacing(z=2.0))[0]["datasets"]
    [{'path': '0', 'coordinateTransformations': [{'type': 'scale', 'scale': [2.0, 0.5, 0.5]}]}]
    """
    spacing = spacing or StackSpacing()
    unit = OME_ZARR_UNITS.get(pixel_size.unit) if pixel_size is not None else None
    known: dict[str, tuple[float, str]] = {}  # axis: (scale, unit)
    if unit:
        known |= {"Y": (pixel_size.y, unit), "X": (pixel_size.x, unit)}
        known |= {"Z": (spacing.z, unit)} if spacing.z else {}
    known |= {"T": (spacing.t, OME_ZARR_TIME_UNIT)} if spacing.t else {}
    entries = [
        {"name": a.lower(), "type": OME_ZARR_AXIS_TYPES[a], **({"unit": known[a][1]} if a in known else {})}
        for a in axes
    ]
    scale = [float(known[a][0]) if a in known else 1.0 for a in axes]
    transformations = [{"type": "scale", "scale": scale}]
    return [
        {
            "version": NGFF_VERSION,
            "name": name,
            "axes": entries,
            "datasets": [{"path": "0", "coordinateTransformations": transformations}],
        }
    ]
