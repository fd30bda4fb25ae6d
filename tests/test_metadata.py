"""Calibration read from files: the pixel size and the Z step and frame interval, from one lookup per format."""

from __future__ import annotations

import numpy as np
import tifffile
import zarr

from napari_unet.metadata import PixelSize, StackSpacing, read_pixel_size, read_spacing


def test_one_ome_pixels_element_gives_the_pixel_size_z_step_and_interval(tmp_path):
    """An OME-TIFF's first `Pixels` element holds all of it: PhysicalSizeX/Y/Z and TimeIncrement, each with its
    unit (the schema's defaults: µm and s)."""
    metadata = {"axes": "TZYX", "PhysicalSizeX": 0.4, "PhysicalSizeY": 0.2, "PhysicalSizeXUnit": "nm"}
    metadata |= {"PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.5, "PhysicalSizeZUnit": "µm", "TimeIncrement": 2}
    tifffile.imwrite(tmp_path / "a.ome.tif", np.zeros((2, 3, 8, 8), np.uint8), ome=True, metadata=metadata)
    size = read_pixel_size(tmp_path / "a.ome.tif")
    assert size == PixelSize(0.2, 0.4, "nm")
    assert read_spacing(tmp_path / "a.ome.tif", size) == StackSpacing(z=500.0, t=2.0)


def ngff_store(path, axes: list[dict], scale: list[float]):
    """A minimal OME-Zarr (NGFF 0.4) image of these axes and scale, as other programs write them."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=(2,) * (len(axes) - 2) + (8, 8), dtype=np.uint8)
    transformations = [{"type": "scale", "scale": scale}]
    datasets = [{"path": "0", "coordinateTransformations": transformations}]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    return path


def test_ome_zarr_z_and_t_scales_with_their_units(tmp_path):
    """NGFF `coordinateTransformations`: the z scale in the unit of the pixel size (converted), the t scale in
    seconds; an axis without a unit is not calibrated."""
    um, t = {"type": "space", "unit": "micrometer"}, {"name": "t", "type": "time", "unit": "millisecond"}
    axes = [t, {"name": "z", "type": "space", "unit": "nanometer"}, {"name": "y", **um}, {"name": "x", **um}]
    path = ngff_store(tmp_path / "a.ome.zarr", axes, [250.0, 1500.0, 0.5, 0.25])
    size = read_pixel_size(path)
    assert size == PixelSize(0.5, 0.25, "um")
    assert read_spacing(path, size) == StackSpacing(z=1.5, t=0.25)
    assert read_spacing(path, None) == StackSpacing(t=0.25)  # a Z step goes with a pixel size

    bare = [{"name": "t", "type": "time"}, {"name": "z", "type": "space"}, {"name": "y"}, {"name": "x"}]
    path = ngff_store(tmp_path / "bare.ome.zarr", bare, [5.0, 2.0, 1.0, 1.0])
    assert read_pixel_size(path) is None and read_spacing(path, PixelSize(1, 1)) == StackSpacing()


def test_ngff_units_by_their_names():
    from napari_unet.metadata import normalize_unit

    names = ["micrometer", "nanometer", "millimeter", "centimeter", "meter"]
    assert [normalize_unit(name) for name in names] == ["um", "nm", "mm", "cm", "m"]


def test_ome_pixel_height_and_width_in_different_units_are_in_one_unit(tmp_path):
    """PhysicalSizeY has its own unit (PhysicalSizeYUnit): 200 nm high and 0.2 µm wide is a square pixel, not one
    200 µm high."""
    metadata = {"axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeXUnit": "µm"}
    metadata |= {"PhysicalSizeY": 200.0, "PhysicalSizeYUnit": "nm"}
    tifffile.imwrite(tmp_path / "a.ome.tif", np.zeros((8, 8), np.uint8), ome=True, metadata=metadata)
    assert read_pixel_size(tmp_path / "a.ome.tif") == PixelSize(0.2, 0.2, "um")
    metadata = {"axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.3}  # both in the schema's default, µm
    tifffile.imwrite(tmp_path / "b.ome.tif", np.zeros((8, 8), np.uint8), ome=True, metadata=metadata)
    assert read_pixel_size(tmp_path / "b.ome.tif") == PixelSize(0.3, 0.2, "um")


def test_screen_resolutions_are_no_calibration(tmp_path):
    """An RGB TIFF saved by Photoshop, GIMP or macOS says 72 pixels per inch: it opened at 352.8 µm per pixel and
    predict wrote that into its outputs. 1, 72 and 96 dpi mean no calibration; other inch resolutions are sizes."""
    image = np.zeros((8, 8), np.uint8)
    for dpi in (1, 72, 96):
        tifffile.imwrite(tmp_path / "screen.tif", image, resolution=(dpi, dpi), resolutionunit="INCH")
        assert read_pixel_size(tmp_path / "screen.tif") is None
    tifffile.imwrite(tmp_path / "scan.tif", image, resolution=(25400, 25400), resolutionunit="INCH")
    assert read_pixel_size(tmp_path / "scan.tif") == PixelSize(1.0, 1.0, "um")
    tifffile.imwrite(tmp_path / "odd.tif", image, resolution=(72, 96), resolutionunit="INCH")  # not a default
    assert read_pixel_size(tmp_path / "odd.tif") is not None


def test_imagej_yunit_and_zunit_where_they_differ_from_the_x_unit(tmp_path):
    """ImageJ writes `yunit=` / `zunit=` only when Y's or Z's unit differs from `unit=` (X's): they were ignored,
    so a 2 um Z step beside 200 nm pixels read as 2 nm."""
    import tifffile

    path = tmp_path / "stack.tif"
    metadata = {"unit": "nm", "spacing": 2.0, "zunit": "micron", "yunit": "nm", "axes": "ZYX"}
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(1 / 200, 1 / 100), metadata=metadata)
    size = read_pixel_size(path)
    assert size == PixelSize(100.0, 200.0, "nm")
    assert read_spacing(path, size).z == 2000.0
    metadata = {"unit": "micron", "yunit": "nm", "spacing": 1.0, "axes": "ZYX"}
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(1 / 0.2, 1 / 200), metadata=metadata)
    size = read_pixel_size(path)
    assert size == PixelSize(0.2, 0.2, "um")  # 200 nm tall, 0.2 um wide
    assert read_spacing(path, size).z == 1.0
