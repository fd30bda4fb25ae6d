"""OME-Zarr outputs of a large image (NGFF 0.4, written block by block) and the input's pixel size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..pipeline import ZARR_SUFFIX, base_name

NGFF_VERSION = "0.4"
COMPLETE = "napari_unet_complete"  # attribute set on an OME-Zarr output once every block is written


def ngff_attributes(
    name: str, axes: str, scale: tuple[float, float] | None, unit: str | None, label: bool
) -> dict[str, Any]:
    """OME-NGFF 0.4 `multiscales` (one level, "0") for axes "YX" or "CYX", with the pixel size when known."""
    entries = []
    for a in axes.lower():
        entry: dict[str, Any] = {"name": a, "type": "channel" if a == "c" else "space"}
        if a != "c" and unit:
            entry["unit"] = unit
        entries.append(entry)
    yx = list(scale) if scale else [1.0, 1.0]
    full = ([1.0] if axes.startswith("C") else []) + [float(v) for v in yx]
    attrs: dict[str, Any] = {
        "multiscales": [
            {
                "version": NGFF_VERSION,
                "name": name,
                "axes": entries,
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": full}]}],
            }
        ]
    }
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
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    group.attrs.update(attrs)
    return group


def input_pixel_size(path: str | Path) -> tuple[tuple[float, float] | None, str | None]:
    """((y, x) pixel size, unit) of an OME-Zarr or TIFF file, (None, None) when it does not say."""
    path = Path(path)
    try:
        if path.suffix.lower() == ZARR_SUFFIX:
            return _zarr_pixel_size(path)
        return _tiff_pixel_size(path)
    except Exception:  # noqa: BLE001 - metadata is optional: a file without readable sizes has none
        return None, None


def _zarr_pixel_size(path: Path) -> tuple[tuple[float, float] | None, str | None]:
    import zarr

    node = zarr.open(str(path), mode="r")
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None, None
    axes = multiscales[0].get("axes", [])
    for transform in multiscales[0]["datasets"][0].get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = transform["scale"]
            unit = axes[-1].get("unit") if axes and isinstance(axes[-1], dict) else None
            return (float(scale[-2]), float(scale[-1])), unit
    return None, None


def _tiff_pixel_size(path: Path) -> tuple[tuple[float, float] | None, str | None]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.ome_metadata:
            import xml.etree.ElementTree as ET

            for element in ET.fromstring(tif.ome_metadata).iter():
                if element.tag.endswith("Pixels") and "PhysicalSizeX" in element.attrib:
                    a = element.attrib
                    size = (float(a.get("PhysicalSizeY", a["PhysicalSizeX"])), float(a["PhysicalSizeX"]))
                    return size, a.get("PhysicalSizeXUnit", "µm")
        tags = tif.pages[0].tags
        if "XResolution" in tags and "YResolution" in tags:
            xn, xd = tags["XResolution"].value
            yn, yd = tags["YResolution"].value
            unit = (tif.imagej_metadata or {}).get("unit")
            if xn and yn and (xn, xd) != (1, 1):
                return (yd / yn, xd / xn), unit.replace("\\u00B5", "µ") if unit else None
    return None, None


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
