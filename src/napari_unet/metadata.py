"""Calibration: the physical pixel size, and a stack's Z step and frame interval, read from OME-TIFF, ImageJ
TIFF, TIFF resolution tags and OME-Zarr, and written back into outputs (`tiff_calibration`, `io.tiff_layout`).

A :class:`PixelSize` is the height and width of one pixel in a length ``unit`` (``"um"``, ``"nm"``, ...);
a :class:`StackSpacing` the distance between the planes of a stack (in that unit) and between the frames of a
time series (in seconds). Files without a usable calibration give ``None``: measurements then stay in pixels.

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
from typing import Any

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
    "centimeter": "cm",
    "centimetre": "cm",
    "meter": "m",
    "metre": "m",
    "\\u00B5m": "um",
}
METRES_PER_UNIT = {"m": 1.0, "cm": 1e-2, "mm": 1e-3, "um": 1e-6, "nm": 1e-9, "inch": 0.0254}
SECONDS_PER_UNIT = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "ms": 1e-3,
    "msec": 1e-3,
    "millisecond": 1e-3,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


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


@dataclass(frozen=True)
class StackSpacing:
    """How far apart the planes of a stack and the frames of a time series are: ``z`` in the unit of the pixel
    size it goes with (`PixelSize.unit`), ``t`` in seconds; None where it is not known.

    >>> StackSpacing(z=2.0).z, StackSpacing().t
    (2.0, None)
    """

    z: float | None = None
    t: float | None = None


def _round(value: float) -> float:
    """Rounded to 10 significant digits: 1e4 / (1e4 / 0.65) is 0.65, not 0.6500000000000001."""
    return float(f"{value:.10g}")


SCREEN_DPI = (1.0, 72.0, 96.0)
"""Pixels per inch that programs write by default (1; 72 by Photoshop, GIMP and macOS; 96 by Windows): no
calibration. 72 dpi read as one would be pixels of 352.8 µm; a microscope's 0.25 µm pixel is 101,600 dpi."""


def read_pixel_size(path: str | Path) -> PixelSize | None:
    """The pixel size stored in a TIFF (OME-XML, then ImageJ, then resolution tags) or an OME-Zarr, or None.

    Resolution tags without a unit (ResolutionUnit NONE, no ImageJ unit) and the screen resolutions programs
    write by default (1, 72 or 96 pixels per inch: `SCREEN_DPI`) carry no calibration and give None. PNG/JPEG
    files give None.
    """
    from .ome_zarr import is_zarr_store  # ome_zarr imports this module

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _tiff_pixel_size(path)
    if suffix == ".zarr" or is_zarr_store(path):
        return _zarr_pixel_size(path)
    return None


def read_spacing(path: str | Path, pixel_size: PixelSize | None) -> StackSpacing:
    """The Z step and frame interval stored in a TIFF or an OME-Zarr. TIFF: OME-XML (``PhysicalSizeZ``,
    ``TimeIncrement``, with their units), else ImageJ metadata (``spacing`` in its ``unit``, ``finterval`` in its
    ``tunit``, seconds by default). OME-Zarr: the scale of its ``z`` and ``t`` axes, with their units.

    The Z step is returned in `pixel_size`'s unit (converted between nm, um, mm, cm, m), and only with a pixel
    size: a Z step without a length unit, or beside no pixel size, is not known. The frame interval is in seconds.
    Other files (PNG, JPEG) and unreadable ones give ``StackSpacing()``.

    >>> read_spacing("cells.png", PixelSize(0.5, 0.5))
    StackSpacing(z=None, t=None)
    """
    from .ome_zarr import is_zarr_store  # ome_zarr imports this module

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _tiff_spacing(path, pixel_size)
    if suffix == ".zarr" or is_zarr_store(path):
        scales = _ngff_scales(path)
        z = _length_in(*scales["z"], pixel_size) if "z" in scales else None
        return StackSpacing(z, _in_seconds(*scales["t"]) if "t" in scales else None)
    return StackSpacing()


def _tiff_pixel_size(path: Path) -> PixelSize | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                found = _ome_pixel_size(_ome_pixels(tif.ome_metadata))
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
            imagej = (tif.imagej_metadata or {}) if tif.is_imagej else {}
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
    if x_res <= 0 or y_res <= 0:
        return None
    if imagej.get("unit") and resolution_unit == "NONE":
        unit = normalize_unit(str(imagej["unit"]))
        if unit in ("pixel", "pixels", "") or not re.fullmatch(r"[A-Za-z]+", unit):
            return None
        size = PixelSize(_round(1.0 / y_res), _round(1.0 / x_res), unit)
        if imagej.get("yunit"):  # ImageJ writes yunit only where it differs from the X unit
            y = _length_in(size.y, imagej["yunit"], size)
            return PixelSize(y, size.x, unit) if y is not None else None
        return size
    if resolution_unit == "INCH" and x_res == y_res and x_res in SCREEN_DPI:
        return None
    return PixelSize.from_tiff_resolution((x_res, y_res), resolution_unit)


def _rational(value) -> float:
    if isinstance(value, tuple):
        numerator, denominator = value
        return numerator / denominator if denominator else 0.0
    return float(value)


def _ome_pixels(xml: str) -> dict[str, str]:
    """The attributes of the first ``Pixels`` element of OME-XML ({} when there is none): the pixel size
    (``PhysicalSizeX/Y``), Z step (``PhysicalSizeZ``) and frame interval (``TimeIncrement``), with their units."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return {}
    pixels = next((element for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    return dict(pixels.attrib) if pixels is not None else {}


def _ome_pixel_size(pixels: dict[str, str]) -> PixelSize | None:
    """From the attributes of OME's ``Pixels`` (`_ome_pixels`); a ValueError for sizes that are not numbers."""
    if "PhysicalSizeX" not in pixels:
        return None
    x = float(pixels["PhysicalSizeX"])
    try:
        square = PixelSize(x, x, pixels.get("PhysicalSizeXUnit", "µm"))  # the OME schema's default unit
    except ValueError:
        return None
    if "PhysicalSizeY" not in pixels:
        return square
    y = _length_in(pixels["PhysicalSizeY"], pixels.get("PhysicalSizeYUnit", "µm"), square)  # in X's unit
    return PixelSize(y, x, square.unit) if y is not None else None


def _zarr_pixel_size(path: Path) -> PixelSize | None:
    """From OME-Zarr multiscales: the first dataset's scale on the y and x axes, in the x axis's unit."""
    scales = _ngff_scales(path)
    if "y" not in scales or "x" not in scales or not scales["x"][1]:
        return None
    try:
        return PixelSize(scales["y"][0], scales["x"][0], scales["x"][1])
    except ValueError:
        return None


def _ngff_scales(path: Path) -> dict[str, tuple[float, str]]:
    """{axis name (lower case): (scale, unit)} of an OME-Zarr's first dataset (of an array in one, `slide.zarr/0`:
    of its own dataset, `ome_zarr.array_multiscale`), the unit '' where its axis names none (NGFF: "micrometer",
    "second", ...); {} for a store without such metadata, or with metadata in error."""
    import zarr

    from .ome_zarr import _multiscales, array_multiscale, image_group

    try:
        node = zarr.open(str(path), mode="r")
        if hasattr(node, "shape"):
            multiscale, dataset = array_multiscale(path) or (None, None)
        else:
            multiscales = _multiscales(image_group(node)[0])
            multiscale, dataset = multiscales[0], multiscales[0]["datasets"][0]
    except Exception:  # zarr raises a variety of errors for a folder that is not a store
        return {}
    try:
        axes = [a if isinstance(a, dict) else {"name": str(a)} for a in multiscale.get("axes", [])]
        transformations = dataset.get("coordinateTransformations", [])
        scale = next((t["scale"] for t in transformations if t["type"] == "scale"), None)
        if scale is None or len(scale) != len(axes):
            return {}
        return {str(a["name"]).lower(): (float(v), str(a.get("unit") or "")) for a, v in zip(axes, scale)}
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return {}


def _tiff_spacing(path: Path, pixel_size: PixelSize | None) -> StackSpacing:
    """`read_spacing` of a TIFF: OME-XML's ``Pixels`` (`_ome_pixels`) first, then ImageJ's metadata (or the same
    names in a tifffile "shaped" description, as `io.tiff_layout` writes them)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            ome = _ome_pixels(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else {}
            imagej = (tif.imagej_metadata or {}) if tif.is_imagej else {}
            if not imagej and tif.is_shaped:  # `io.tiff_layout` keeps the steps there, under ImageJ's names
                imagej = dict((tif.shaped_metadata or ({},))[0])
    except Exception:  # noqa: BLE001  (io.read_image says what is wrong with an unreadable file)
        return StackSpacing()
    z = _length_in(ome.get("PhysicalSizeZ"), ome.get("PhysicalSizeZUnit", "µm"), pixel_size)  # OME's default unit
    t = _in_seconds(ome.get("TimeIncrement"), ome.get("TimeIncrementUnit", "s"))
    if z is None:
        # ImageJ writes zunit= only where Z's unit differs from X's
        z = _length_in(imagej.get("spacing"), imagej.get("zunit") or imagej.get("unit"), pixel_size)
    if t is None:
        t = _in_seconds(imagej.get("finterval"), imagej.get("tunit", "sec"))
    return StackSpacing(z, t)


def _positive(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _length_in(value: Any, unit: Any, pixel_size: PixelSize | None) -> float | None:
    """`value` (a length in `unit`) in the unit of `pixel_size`; None when either is missing or not convertible."""
    value = _positive(value)
    if value is None or pixel_size is None or not unit:
        return None
    unit = normalize_unit(str(unit))
    if unit == pixel_size.unit:
        return value
    if unit not in METRES_PER_UNIT or pixel_size.unit not in METRES_PER_UNIT:
        return None
    return _round(value * METRES_PER_UNIT[unit] / METRES_PER_UNIT[pixel_size.unit])  # 2000 nm: 2.0 um


def _in_seconds(value: Any, unit: Any) -> float | None:
    value = _positive(value)
    per_unit = SECONDS_PER_UNIT.get(str(unit).strip().lower())
    return None if value is None or per_unit is None else value * per_unit


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
