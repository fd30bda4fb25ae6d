"""Physical pixel size: read from OME-TIFF, ImageJ and TIFF resolution tags, written back into outputs.

A :class:`PixelSize` is the height and width of one pixel in a length ``unit`` (``"um"``, ``"nm"``, ...).
Files without a usable calibration give ``None``: measurements then stay in pixels.

>>> size = PixelSize(0.5, 0.5, "µm")
>>> size.unit, size.scale
('um', (0.5, 0.5))
>>> PixelSize.from_tiff_resolution((20000.0, 20000.0), "CENTIMETER")  # 20,000 pixels per cm
PixelSize(y=0.5, x=0.5, unit='um')
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from ._config import Config

UNIT_ALIASES = {
    "µm": "um",
    "μm": "um",
    "micron": "um",
    "microns": "um",
    "micrometer": "um",
    "micrometre": "um",
    "nanometer": "nm",
    "nanometre": "nm",
    "millimeter": "mm",
    "millimetre": "mm",
    "\\u00B5m": "um",
}
METRES_PER_UNIT = {"m": 1.0, "cm": 1e-2, "mm": 1e-3, "um": 1e-6, "nm": 1e-9, "inch": 0.0254}


def normalize_unit(unit: str) -> str:
    """A length unit as a plain ASCII name: ``"µm"``, ``"micron"`` -> ``"um"``."""
    unit = unit.strip()
    return UNIT_ALIASES.get(unit, UNIT_ALIASES.get(unit.lower(), unit))


@dataclass(frozen=True)
class PixelSize(Config):
    """Height ``y`` and width ``x`` of a pixel, in ``unit`` (normalised: ``"um"``, ``"nm"``, ``"mm"``, ...)."""

    y: float
    x: float
    unit: str = "um"

    def __post_init__(self) -> None:
        for name in ("y", "x"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"pixel size {name} must be a positive finite number, got {value!r}")
        unit = normalize_unit(str(self.unit))
        if not re.fullmatch(r"[A-Za-z]+", unit):
            raise ValueError(f"pixel size unit must be a length such as 'um' or 'nm', got {self.unit!r}")
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "y", float(self.y))
        object.__setattr__(self, "x", float(self.x))

    @property
    def scale(self) -> tuple[float, float]:
        """``(y, x)``: the napari layer scale of a (Y, X) plane."""
        return (self.y, self.x)

    @property
    def isotropic(self) -> bool:
        return math.isclose(self.y, self.x, rel_tol=1e-6)

    @classmethod
    def from_tiff_resolution(cls, resolution: tuple[float, float], resolution_unit: str) -> PixelSize | None:
        """From TIFF tags: ``resolution`` (pixels per unit along x, y) in ``"CENTIMETER"`` or ``"INCH"``."""
        per_unit = {"CENTIMETER": 1e4, "INCH": 25400.0}.get(resolution_unit)
        if per_unit is None or not all(r > 0 for r in resolution):
            return None
        x_res, y_res = resolution
        return cls(_round(per_unit / y_res), _round(per_unit / x_res), "um")

    def to_tiff_resolution(self) -> tuple[tuple[float, float], str] | None:
        """``(resolution (x, y) in pixels per cm, "CENTIMETER")``, or None for a unit that is not a length."""
        metres = METRES_PER_UNIT.get(self.unit)
        if metres is None:
            return None
        return ((1e-2 / (self.x * metres), 1e-2 / (self.y * metres)), "CENTIMETER")


def _round(value: float) -> float:
    """Rounded to 10 significant digits: 1e4 / (1e4 / 0.65) is 0.65, not 0.6500000000000001."""
    return float(f"{value:.10g}")


def read_pixel_size(path: str | Path) -> PixelSize | None:
    """The pixel size stored in a TIFF (OME-XML, then ImageJ, then resolution tags) or an OME-Zarr, or None.

    Resolution tags without a unit (ResolutionUnit NONE, no ImageJ unit) and the 1 pixel per inch many programs
    write by default carry no calibration and give None. PNG/JPEG files give None.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _tiff_pixel_size(path)
    if suffix == ".zarr":
        return _zarr_pixel_size(path)
    return None


def _tiff_pixel_size(path: Path) -> PixelSize | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                found = _ome_pixel_size(tif.ome_metadata)
                if found is not None:
                    return found
            page = tif.pages.first
            tags = page.tags
            if "XResolution" not in tags or "YResolution" not in tags:
                return None
            x_res, y_res = (_rational(tags[name].value) for name in ("XResolution", "YResolution"))
            unit_tag = tags.get("ResolutionUnit")
            resolution_unit = (
                unit_tag.value.name if unit_tag is not None and hasattr(unit_tag.value, "name") else "NONE"
            )
            imagej_unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
    if x_res <= 0 or y_res <= 0:
        return None
    if imagej_unit and resolution_unit == "NONE":
        unit = normalize_unit(str(imagej_unit))
        if unit in ("pixel", "pixels", "") or not re.fullmatch(r"[A-Za-z]+", unit):
            return None
        return PixelSize(_round(1.0 / y_res), _round(1.0 / x_res), unit)
    if resolution_unit == "INCH" and x_res == 1 and y_res == 1:
        return None
    return PixelSize.from_tiff_resolution((x_res, y_res), resolution_unit)


def _rational(value) -> float:
    if isinstance(value, tuple):
        numerator, denominator = value
        return numerator / denominator if denominator else 0.0
    return float(value)


def _ome_pixel_size(xml: str) -> PixelSize | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((element for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    x = float(pixels.attrib["PhysicalSizeX"])
    y = float(pixels.attrib.get("PhysicalSizeY", x))
    unit = pixels.attrib.get("PhysicalSizeXUnit", "µm")  # the OME schema's default
    try:
        return PixelSize(y, x, unit)
    except ValueError:
        return None


def _zarr_pixel_size(path: Path) -> PixelSize | None:
    """From OME-Zarr multiscales: the first dataset's scale transformation on the y and x axes."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
        attrs = dict(node.attrs)
    except Exception:  # zarr raises a variety of errors for a folder that is not a store
        return None
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None
    axes = multiscales[0].get("axes", [])
    names = [(a.get("name") if isinstance(a, dict) else str(a)).lower() for a in axes]
    if "y" not in names or "x" not in names:
        return None
    scale = next(
        (
            t["scale"]
            for t in multiscales[0]["datasets"][0].get("coordinateTransformations", [])
            if t["type"] == "scale"
        ),
        None,
    )
    if scale is None or len(scale) != len(names):
        return None
    unit = axes[names.index("x")].get("unit", "") if isinstance(axes[names.index("x")], dict) else ""
    unit = {"micrometer": "um", "nanometer": "nm", "millimeter": "mm"}.get(unit, unit)
    if not unit:
        return None
    try:
        return PixelSize(float(scale[names.index("y")]), float(scale[names.index("x")]), unit)
    except ValueError:
        return None


def tiff_calibration(pixel_size: PixelSize | None, imagej: bool) -> tuple[dict, dict]:
    """``(keyword arguments, metadata entries)`` for ``tifffile.imwrite``/``memmap`` that store ``pixel_size``.

    ImageJ files get the resolution in pixels per ``unit`` and the unit in the ImageJ metadata, as Fiji writes
    them; other TIFFs get it in pixels per centimetre. None (or a unit that is not a length) stores nothing.
    """
    if pixel_size is None:
        return {}, {}
    if imagej:
        return {"resolution": (1.0 / pixel_size.x, 1.0 / pixel_size.y)}, {"unit": pixel_size.unit}
    converted = pixel_size.to_tiff_resolution()
    if converted is None:
        return {}, {}
    resolution, unit = converted
    return {"resolution": resolution, "resolutionunit": unit}, {}
