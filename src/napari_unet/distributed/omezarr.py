"""OME-Zarr outputs of a large image (NGFF 0.4, written block by block) and the input's pixel size.

A large image is a single plane: its outputs have axes y and x only, sized by the pixel size; their `multiscales`
are built as `predict --zarr`'s (`ome_zarr.ngff_multiscales`), which also sizes z and t.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..metadata import PixelSize, read_pixel_size
from ..ome_zarr import NGFF_CHUNK_KEYS, NGFF_VERSION, OME_ZARR_UNITS, ngff_multiscales
from ..pipeline import base_name

COMPLETE = "napari_unet_complete"  # attribute set on an OME-Zarr output once every block is written
SETTINGS = "napari_unet_settings"  # with it, the settings it was written with (`pipeline.output_settings`)


def ngff_attributes(
    name: str, axes: str, scale: tuple[float, float] | None, unit: str | None, label: bool
) -> dict[str, Any]:
    """OME-NGFF 0.4 attributes of an image with axes "YX" or "CYX": `multiscales` (one level, "0"; as
    `ome_zarr.ngff_multiscales` builds them for `predict --zarr`) with the pixel size `scale` (y, x) in the NGFF
    `unit` ("micrometer", `ngff_pixel_size`) when both are known, and for labels `image-label`."""
    pixel_size = PixelSize(*scale, unit) if scale and unit else None
    attrs: dict[str, Any] = {"multiscales": ngff_multiscales(name, axes, pixel_size)}
    if label:
        attrs["image-label"] = {"version": NGFF_VERSION}
    return attrs


def create_ome_zarr(path: Path, shape: tuple[int, ...], dtype, chunks: tuple[int, ...], attrs: dict[str, Any]):
    """A new OME-Zarr (NGFF 0.4: zarr format 2, "/" chunk keys) group at `path` with the empty array "0"."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=0,
        chunk_key_encoding=NGFF_CHUNK_KEYS,  # as `ome_zarr.write_ome_zarr` writes them
    )
    group.attrs.update(attrs)
    return group


def input_pixel_size(path: str | Path) -> tuple[tuple[float, float] | None, str | None]:
    """((y, x) pixel size, NGFF unit) of an OME-Zarr or TIFF file (`metadata.read_pixel_size`), (None, None) when
    it does not say."""
    return ngff_pixel_size(read_pixel_size(path))


def ngff_pixel_size(pixel_size: PixelSize | None) -> tuple[tuple[float, float] | None, str | None]:
    """((y, x), unit) as OME-NGFF writes them ("micrometer": the UDUNITS name, `ome_zarr.OME_ZARR_UNITS`, as
    `ome_zarr.write_ome_zarr` writes), (None, None) for None or a unit NGFF has no name for (as that writer)."""
    unit = OME_ZARR_UNITS.get(pixel_size.unit) if pixel_size is not None else None
    return (pixel_size.scale, unit) if unit else (None, None)


def large_output_paths(path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """(labels, probabilities) OME-Zarr outputs of an image segmented block by block."""
    stem, out_dir = base_name(path), Path(out_dir)
    return out_dir / f"{stem}_labels.ome.zarr", out_dir / f"{stem}_probs.ome.zarr"


def is_complete(path: Path) -> bool:
    """Whether the OME-Zarr output at `path` was finished (every block written)."""
    if not path.is_dir():
        return False
    import zarr

    try:
        return bool(zarr.open_group(str(path), mode="r").attrs.get(COMPLETE, False))
    except Exception:  # noqa: BLE001 - an unreadable output is unfinished
        return False


def recorded_settings(path: Path) -> dict[str, Any] | None:
    """The settings a finished OME-Zarr output was written with (`SETTINGS`), or None: none recorded (another
    program's, an earlier version's) or unreadable."""
    import zarr

    try:
        settings = zarr.open_group(str(path), mode="r").attrs.get(SETTINGS)
    except Exception:  # noqa: BLE001 - unreadable: nothing recorded
        return None
    return settings if isinstance(settings, dict) else None
