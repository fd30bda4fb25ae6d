"""OME-Zarr in and out: a zarr array (or the array "0" of an OME-Zarr group) read lazily with its axes, and labels
or images written as a single-scale OME-Zarr 0.4 image with their pixel size (zarr format 2, "/" chunk keys).

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

OME_ZARR_UNITS = {"um": "micrometer", "nm": "nanometer", "mm": "millimeter", "cm": "centimeter", "m": "meter"}
OME_ZARR_AXIS_TYPES = {"T": "time", "Z": "space", "C": "channel", "Y": "space", "X": "space"}
# NGFF 0.4 stores are zarr format 2 with "/" chunk keys (`0/3/1`, nested folders: dimension_separator "/"),
# where zarr's own default for format 2 is "." (`0.3.1`). Every OME-Zarr this package writes uses these keys:
# `write_ome_zarr` (`predict --zarr`) and `distributed.create_ome_zarr` (block by block), so both lay out alike.
NGFF_CHUNK_KEYS = {"name": "v2", "separator": "/"}


def read_zarr(path: str | Path, axes: str | None = None) -> tuple[Any, str]:
    """(image, axes) of a zarr store, read lazily through dask; axes canonical ("TZCYX" order). They come from
    `axes`, from OME-Zarr multiscales metadata, or are guessed from the shape; a group is read at its array "0"."""
    import dask.array as da
    import zarr

    path = Path(path)

    if not path.exists():
        raise FileNotFoundError(f"no zarr store at {path}")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:  # zarr raises a variety of errors for a folder that is not a store
        raise ValueError(f"cannot open {path} as a zarr array ({type(error).__name__}: {error})") from error
    found = None
    if not hasattr(node, "shape"):
        multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
        if multiscales:
            found = (
                "".join(
                    (a["name"] if isinstance(a, dict) else str(a)).upper()[0] for a in multiscales[0].get("axes", [])
                ).replace("S", "C")
                or None
            )
        if "0" not in node:
            raise ValueError(f"{path} is a zarr group without an array '0'; give the path of the array")
        node = node["0"]
    image = da.from_zarr(node)
    if axes is None:
        axes = found if found and len(found) == image.ndim else guess_axes(tuple(image.shape))
    return to_canonical(image, axes)


def write_ome_zarr(path: str | Path, array, axes: str, pixel_size=None, chunk: int = 1024) -> Path:
    """Copy `array` (axes over "TZCYX", canonical) into a single-scale OME-Zarr 0.4 image at `path`, plane by
    plane (a memory-mapped array is never loaded whole); `pixel_size` (a `metadata.PixelSize`) becomes the scale
    of the y and x axes with their unit. `read_input` and `metadata.read_pixel_size` read it back; an existing
    store at `path` is replaced once the new one is complete (written under a temporary name, then renamed).
    Axes that do not name the array's dimensions in canonical order are a ValueError, before anything is written."""
    axes = validate_axes(axes, np.ndim(array))
    if axes != canonical_axes(axes):
        raise ValueError(
            f"axes {axes!r} must be in canonical order ({canonical_axes(axes)!r}): reorder the array first"
        )
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_replaced_folder(final, _complete)  # a replacement killed between its renames: the old store back
    remove_stale_temporaries(final)  # what killed writers left: `.<name>.<pid>.*.tmp`
    path = temporary_sibling(final, folder=True)
    try:
        _write_store(path, final.name, array, axes, pixel_size, chunk)
        replace_folder(path, final)  # killed between its renames: the next write puts the old store back
    finally:
        shutil.rmtree(path, ignore_errors=True)  # Ctrl-C, a full disk: no half-written store is left
    return final


def _complete(path: Path) -> bool:
    """Whether the store at `path` was finished: its metadata is written last."""
    return (path / ".zattrs").is_file()


def _write_store(path: Path, name: str, array, axes: str, pixel_size, chunk: int) -> None:
    import zarr

    shape = tuple(int(n) for n in array.shape)
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    chunks = tuple(1 if a in "TZC" else min(n, chunk) for a, n in zip(axes, shape))
    data = group.create_array(
        "0", shape=shape, chunks=chunks, dtype=np.dtype(array.dtype), chunk_key_encoding=NGFF_CHUNK_KEYS
    )
    for index in np.ndindex(*shape[:-2]):
        data[index] = np.asarray(array[index])
    unit = OME_ZARR_UNITS.get(pixel_size.unit) if pixel_size is not None else None
    entries = []
    for a in axes:
        entry = {"name": a.lower(), "type": OME_ZARR_AXIS_TYPES[a]}
        if unit and a in "YX":
            entry["unit"] = unit
        entries.append(entry)
    scale = [pixel_size.y if unit and a == "Y" else pixel_size.x if unit and a == "X" else 1.0 for a in axes]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": name,
            "axes": entries,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }
    ]
