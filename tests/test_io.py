"""Image I/O with explicit axes, percentile normalisation and input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_unet.io import (
    apply_normalization,
    canonical_axes,
    check_image,
    guess_axes,
    normalize_percentile,
    percentiles,
    read_image,
    read_labels,
    to_canonical,
    validate_axes,
    write_tiff,
)


def ramp(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Distinct values in every position, scaled into ``dtype``."""
    values = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    if np.issubdtype(dtype, np.integer):
        values %= np.iinfo(dtype).max
    return values.astype(dtype)


# ----------------------------------------------------------------------------- axes


def test_canonical_axes_and_guess():
    assert canonical_axes("YXC") == "CYX"
    assert canonical_axes("XYZT") == "TZYX"
    assert guess_axes((30, 40)) == "YX"
    assert guess_axes((3, 30, 40)) == "CYX"
    assert guess_axes((4, 30, 40)) == "CYX"
    assert guess_axes((5, 30, 40)) == "ZYX"
    assert guess_axes((30, 40, 3)) == "YXC"
    with pytest.raises(ValueError, match="pass axes"):
        guess_axes((2, 3, 30, 40))


@pytest.mark.parametrize(
    ("axes", "ndim", "message"),
    [("YQ", 2, "unknown letters"), ("YYX", 3, "repeats"), ("ZX", 2, "lacks Y"), ("CYX", 2, "names 3")],
)
def test_validate_axes_rejects(axes, ndim, message):
    with pytest.raises(ValueError, match=message):
        validate_axes(axes, ndim)


def test_to_canonical_is_a_view():
    image = ramp((30, 40, 3), np.uint8)
    moved, axes = to_canonical(image, "YXC")
    assert axes == "CYX"
    assert np.shares_memory(moved, image)
    np.testing.assert_array_equal(moved[1], image[..., 1])


# ----------------------------------------------------------------------------- TIFF


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_2d_round_trip(tmp_path, dtype):
    image = ramp((33, 47), dtype)
    write_tiff(tmp_path / "a.tif", image, "YX")
    read, axes = read_image(tmp_path / "a.tif")
    assert axes == "YX"
    assert read.dtype == dtype
    np.testing.assert_array_equal(read, image)


@pytest.mark.parametrize(
    ("axes", "shape"),
    [("ZYX", (3, 20, 30)), ("CYX", (2, 20, 30)), ("TZCYX", (2, 3, 2, 20, 30)), ("TCYX", (4, 3, 20, 30))],
)
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int32])
def test_tiff_hyperstack_round_trips_axes(tmp_path, axes, shape, dtype):
    """ImageJ hyperstacks (uint8/16, float32) and shaped TIFFs (other dtypes) keep their axes, even
    where the guess would differ (3 planes of Z would be guessed as C)."""
    image = ramp(shape, dtype)
    write_tiff(tmp_path / "h.tif", image, axes)
    read, read_axes = read_image(tmp_path / "h.tif")
    assert read_axes == axes
    np.testing.assert_array_equal(read, image)


def test_write_tiff_stores_canonical_order(tmp_path):
    image = ramp((20, 30, 3), np.uint16)
    write_tiff(tmp_path / "c.tif", image, "YXC")
    with tifffile.TiffFile(tmp_path / "c.tif") as tif:
        assert tif.is_imagej
        assert tif.series[0].axes == "CYX"
    read, axes = read_image(tmp_path / "c.tif")
    assert axes == "CYX"
    np.testing.assert_array_equal(read, np.moveaxis(image, -1, 0))


def test_uncompressed_tiff_is_memory_mapped(tmp_path):
    image = ramp((40, 50), np.uint16)
    write_tiff(tmp_path / "m.tif", image, "YX")
    read, _ = read_image(tmp_path / "m.tif")
    assert isinstance(read, np.memmap)
    assert not read.flags.writeable


def test_rgb_tiff_is_moved_to_channels_first_without_loading(tmp_path):
    image = ramp((20, 30, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", image, photometric="rgb")
    read, axes = read_image(tmp_path / "rgb.tif")
    assert axes == "CYX"
    assert isinstance(read, np.memmap)
    np.testing.assert_array_equal(read, np.moveaxis(image, -1, 0))


def test_compressed_tiff_is_read(tmp_path):
    image = ramp((3, 20, 30), np.uint16)
    write_tiff(tmp_path / "z.tif", image, "ZYX", compression="zlib")
    read, axes = read_image(tmp_path / "z.tif")
    assert not isinstance(read, np.memmap)
    assert axes == "ZYX"
    np.testing.assert_array_equal(read, image)


@pytest.mark.parametrize(("planes", "expected"), [(3, "CYX"), (7, "ZYX")])
def test_plain_multipage_tiff_axes_are_guessed(tmp_path, planes, expected):
    image = ramp((planes, 20, 30), np.uint16)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for plane in image:
            tif.write(plane, metadata=None)
    read, axes = read_image(tmp_path / "pages.tif")
    assert axes == expected
    np.testing.assert_array_equal(read, image)


def test_explicit_axes_override_and_are_validated(tmp_path):
    image = ramp((3, 20, 30), np.uint16)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for plane in image:
            tif.write(plane, metadata=None)
    read, axes = read_image(tmp_path / "pages.tif", axes="ZYX")
    assert axes == "ZYX"
    read, axes = read_image(tmp_path / "pages.tif", axes="yxc")
    assert axes == "CYX"
    np.testing.assert_array_equal(read, np.moveaxis(image, -1, 0))
    with pytest.raises(ValueError, match="names 2 dimensions but the array has 3"):
        read_image(tmp_path / "pages.tif", axes="YX")


def test_ome_tiff_axes(tmp_path):
    image = ramp((2, 3, 20, 30), np.uint16)
    tifffile.imwrite(tmp_path / "o.ome.tif", image, ome=True, metadata={"axes": "ZCYX"})
    read, axes = read_image(tmp_path / "o.ome.tif")
    assert axes == "ZCYX"
    np.testing.assert_array_equal(read, image)


# ----------------------------------------------------------------------------- PNG / JPEG


def test_png_grey_round_trip(tmp_path):
    image = ramp((30, 40), np.uint8)
    Image.fromarray(image).save(tmp_path / "g.png")
    read, axes = read_image(tmp_path / "g.png")
    assert axes == "YX"
    np.testing.assert_array_equal(read, image)


def test_png_16_bit(tmp_path):
    image = ramp((30, 40), np.uint16) * 40
    Image.fromarray(image).save(tmp_path / "g16.png")
    read, axes = read_image(tmp_path / "g16.png")
    assert axes == "YX"
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, image)


def test_png_rgb_is_channels_first(tmp_path):
    image = np.stack([ramp((30, 40), np.uint8), ramp((30, 40), np.uint8)[::-1], np.full((30, 40), 7, np.uint8)], -1)
    Image.fromarray(image).save(tmp_path / "rgb.png")
    read, axes = read_image(tmp_path / "rgb.png")
    assert axes == "CYX"
    np.testing.assert_array_equal(read, np.moveaxis(image, -1, 0))
    given, axes = read_image(tmp_path / "rgb.png", axes="YXC")  # axes describe the file as stored: colour last
    assert axes == "CYX" and np.array_equal(given, read)
    for wrong in ("CYX", "XYC", "YX"):  # the decoded array was reordered by them: an error, never scrambled data
        with pytest.raises(ValueError, match=rf"axes '{wrong}' cannot describe rgb.png: a colour .png image is"):
            read_image(tmp_path / "rgb.png", axes=wrong)
    Image.fromarray(image[..., 0]).save(tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png", axes="YX")[1] == read_image(tmp_path / "grey.png", axes="YXC")[1] == "YX"


def test_png_rgba_with_equal_channels_is_grey(tmp_path):
    grey = ramp((30, 40), np.uint8)
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], -1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    read, axes = read_image(tmp_path / "rgba.png")
    assert axes == "YX"
    np.testing.assert_array_equal(read, grey)


def test_png_rgba_colour_drops_alpha(tmp_path):
    rgba = np.stack([ramp((30, 40), np.uint8), np.zeros((30, 40), np.uint8), np.ones((30, 40), np.uint8)], -1)
    rgba = np.concatenate([rgba, np.full((30, 40, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    read, axes = read_image(tmp_path / "rgba.png")
    assert axes == "CYX"
    np.testing.assert_array_equal(read, np.moveaxis(rgba[..., :3], -1, 0))


def png_16_bit(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG of `pixels` (H, W, 2 | 3 | 4: grey + alpha, RGB, RGBA), written as microscope software does;
    Pillow cannot write these."""
    import struct
    import zlib

    height, width, samples = pixels.shape
    colour_type = {2: 4, 3: 2, 4: 6}[samples]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)  # filter 0 (none) on each row
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
    return path


def test_16_bit_colour_png_keeps_its_16_bits(tmp_path):
    """Pillow reads a 16-bit RGB(A) or grey + alpha PNG as 8 bits (the high byte of each value): values under 256
    all became 0. They are decoded with all their bits (imagecodecs, a dependency), as a grey 16-bit PNG is."""
    red, green = ramp((30, 40), np.uint16) * 40, ramp((30, 40), np.uint16)[::-1] % 256
    rgb = np.stack([red, green, np.full_like(red, 7)], -1)
    read, axes = read_image(png_16_bit(tmp_path / "rgb16.png", rgb))
    assert axes == "CYX" and read.dtype == np.uint16
    np.testing.assert_array_equal(read, np.moveaxis(rgb, -1, 0))
    opaque = np.full_like(red, 65535)
    read, axes = read_image(png_16_bit(tmp_path / "rgba16.png", np.dstack([rgb, opaque])))
    assert axes == "CYX"
    np.testing.assert_array_equal(read, np.moveaxis(rgb, -1, 0))
    read, axes = read_image(png_16_bit(tmp_path / "grey-rgba16.png", np.dstack([green, green, green, opaque])))
    assert axes == "YX"
    np.testing.assert_array_equal(read, green)
    read, axes = read_image(png_16_bit(tmp_path / "la16.png", np.dstack([green, opaque])))
    assert axes == "YX" and read.dtype == np.uint16
    np.testing.assert_array_equal(read, green)


@pytest.mark.parametrize("compression", ["lzw", "zstd", "jpeg"])
def test_tiffs_compressed_as_microscope_software_writes_them_are_read(tmp_path, compression):
    """LZW (what many acquisition programs and QuPath write), Zstandard and JPEG TIFFs need imagecodecs, which
    a plain install lacked: such a file was refused ('pip install imagecodecs'). It is a dependency now."""
    import tifffile

    pixels = ramp((40, 48), np.uint8 if compression == "jpeg" else np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", pixels, compression=compression)
    read, axes = read_image(tmp_path / "c.tif")
    assert axes == "YX" and read.shape == (40, 48)
    if compression != "jpeg":  # lossy
        np.testing.assert_array_equal(read, pixels)


def test_16_bit_colour_png_without_imagecodecs_is_refused_not_cut_to_8_bits(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "imagecodecs", None)
    path = png_16_bit(tmp_path / "rgb16.png", np.zeros((8, 8, 3), np.uint16))
    with pytest.raises(ValueError, match=r"rgb16\.png.*16-bit colour PNG.*pip install imagecodecs.*TIFF"):
        read_image(path)


def test_jpeg_grey_is_read_approximately(tmp_path):
    grey = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (32, 1))
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=95)
    read, axes = read_image(tmp_path / "g.jpg")
    assert axes == "YX"
    assert read.shape == grey.shape
    assert np.abs(read.astype(int) - grey).max() <= 8


def test_jpeg_colour_is_channels_first(tmp_path):
    rgb = np.zeros((32, 40, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = 50
    Image.fromarray(rgb).save(tmp_path / "c.jpeg", quality=95)
    read, axes = read_image(tmp_path / "c.jpeg")
    assert axes == "CYX"
    assert read.shape == (3, 32, 40)
    assert np.abs(read.astype(int) - np.moveaxis(rgb, -1, 0)).max() <= 8


# ----------------------------------------------------------------------------- errors while reading


def test_unsupported_suffix_names_the_formats(tmp_path):
    (tmp_path / "image.bmp").write_bytes(b"BM")
    with pytest.raises(ValueError, match=r"image\.bmp.*supported formats: TIFF"):
        read_image(tmp_path / "image.bmp")


@pytest.mark.parametrize("name", ["broken.tif", "broken.png", "broken.jpg"])
def test_unreadable_file_names_path_and_formats(tmp_path, name):
    (tmp_path / name).write_bytes(b"this is not an image" * 10)
    with pytest.raises(ValueError, match=rf"cannot read .*{name}.*supported formats"):
        read_image(tmp_path / name)


@pytest.mark.parametrize("name", ["empty.tif", "EMPTY.TIF", "empty.ome.tif", "empty.png"])
def test_an_empty_file_is_called_empty(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=rf"cannot read .*{name}: the file is empty \(0 bytes\); supported formats"):
        read_image(tmp_path / name)


def test_a_png_or_jpeg_named_tif_says_what_it_holds(tmp_path):
    """A PNG saved under a .tif name was refused with tifffile's "not a TIFF file: header=b'\\x89PNG'"."""
    Image.fromarray(ramp((8, 8), np.uint8)).save(tmp_path / "cells.tif", format="PNG")
    with pytest.raises(ValueError, match=r"cells\.tif is a PNG file, not a TIFF: rename it to \.png"):
        read_image(tmp_path / "cells.tif")
    Image.fromarray(ramp((8, 8), np.uint8)).save(tmp_path / "cells.TIFF", format="JPEG")
    with pytest.raises(ValueError, match=r"cells\.TIFF is a JPEG file, not a TIFF: rename it to \.jpg"):
        read_image(tmp_path / "cells.TIFF")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_image(tmp_path / "nope.tif")


# ----------------------------------------------------------------------------- labels


def test_read_labels_instance_png_and_tiff(tmp_path):
    labels = np.zeros((30, 40), np.uint16)
    labels[2:10, 3:12] = 1
    labels[10:20, 3:12] = 700
    Image.fromarray(labels).save(tmp_path / "l.png")
    write_tiff(tmp_path / "l.tif", labels.astype(np.int32), "YX")
    for name in ("l.png", "l.tif"):
        read = read_labels(tmp_path / name)
        assert isinstance(read, np.ndarray) and not isinstance(read, np.memmap)
        np.testing.assert_array_equal(read, labels)


def test_read_labels_binary_mask_is_returned_as_is(tmp_path):
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 5:25] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    read = read_labels(tmp_path / "m.png")
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, mask)


def test_read_labels_rejects_float_and_multichannel(tmp_path):
    write_tiff(tmp_path / "f.tif", np.ones((30, 40), np.float32), "YX")
    with pytest.raises(ValueError, match="must be integers.*float32"):
        read_labels(tmp_path / "f.tif")
    colour = np.zeros((30, 40, 3), np.uint8)
    colour[5:10, 5:10] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="one 2-D plane.*'CYX'"):
        read_labels(tmp_path / "c.png")


def test_read_labels_rejects_negative_ids_but_the_sparse_value(tmp_path):
    write_tiff(tmp_path / "n.tif", np.full((30, 40), -2, np.int32), "YX")
    with pytest.raises(ValueError, match=">= 0.*found the value -2"):
        read_labels(tmp_path / "n.tif")
    sparse = np.full((30, 40), -1, np.int16)
    sparse[5:10, 5:10] = 3
    write_tiff(tmp_path / "s.tif", sparse, "YX")
    np.testing.assert_array_equal(read_labels(tmp_path / "s.tif"), sparse)


# ----------------------------------------------------------------------------- normalisation


def test_normalize_percentile_hand_computed():
    image = np.arange(101, dtype=np.uint16).reshape(1, 101)
    out = normalize_percentile(image, low=10, high=90, eps=0.0)
    assert out.dtype == np.float32
    assert out[0, 10] == pytest.approx(0.0)
    assert out[0, 90] == pytest.approx(1.0)
    assert out[0, 50] == pytest.approx(0.5)
    assert out[0, 0] == pytest.approx(-0.125)  # not clipped


def test_normalize_percentile_per_channel():
    rng = np.random.default_rng(0)
    image = np.stack([rng.uniform(0, 1, (40, 50)), rng.uniform(100, 5000, (40, 50))]).astype(np.float32)
    out = normalize_percentile(image, 1, 99, axes="CYX")
    for channel, original in zip(out, image):
        assert np.percentile(channel, 1) == pytest.approx(0.0, abs=1e-4)
        assert np.percentile(channel, 99) == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_array_equal(np.argsort(channel, axis=None), np.argsort(original, axis=None))


def test_percentiles_shapes_broadcast():
    image = np.random.default_rng(1).random((2, 3, 20, 30))
    lo, hi = percentiles(image, 2, 98, axes="ZCYX")
    assert lo.shape == hi.shape == (1, 3, 1, 1)
    assert (lo < hi).all()
    lo, hi = percentiles(image[0, 0], 2, 98, axes="YX")
    assert lo.shape == (1, 1)


def test_percentiles_of_dask_match_numpy_without_computing_all():
    da = pytest.importorskip("dask.array")
    rng = np.random.default_rng(2)
    image = rng.gamma(2.0, 100.0, (3, 600, 700)).astype(np.float32)
    lazy = da.from_array(image, chunks=(1, 200, 200))
    exact = percentiles(image, 1, 99.8, axes="CYX", max_samples=10**9)
    sampled = percentiles(lazy, 1, 99.8, axes="CYX", max_samples=50_000)
    for e, s in zip(exact, sampled):
        np.testing.assert_allclose(s, e, rtol=0.05)
    normalised = normalize_percentile(lazy, 1, 99.8, axes="CYX")
    assert isinstance(normalised, da.Array)
    assert normalised.dtype == np.float32


def test_percentiles_of_memmap_sample(tmp_path):
    image = np.random.default_rng(3).integers(0, 4000, (300, 400)).astype(np.uint16)
    write_tiff(tmp_path / "big.tif", image, "YX")
    lazy, axes = read_image(tmp_path / "big.tif")
    assert isinstance(lazy, np.memmap)
    lo, hi = percentiles(lazy, 1, 99, axes, max_samples=10_000)
    assert np.mean(image < lo) == pytest.approx(0.01, abs=0.004)  # the sample's 1 % is the image's ~1 %
    assert np.mean(image > hi) == pytest.approx(0.01, abs=0.004)


def test_percentiles_of_zarr_sample():
    zarr = pytest.importorskip("zarr")
    image = np.random.default_rng(4).random((2, 300, 400)).astype(np.float32)
    store = zarr.zeros(shape=image.shape, chunks=(1, 100, 100), dtype="float32")
    store[...] = image
    lo, hi = percentiles(store, 5, 95, "CYX", max_samples=5_000)
    np.testing.assert_allclose(lo.ravel(), np.percentile(image, 5, axis=(1, 2)), atol=0.02)
    np.testing.assert_allclose(hi.ravel(), np.percentile(image, 95, axis=(1, 2)), atol=0.02)


@settings(max_examples=25, deadline=None)
@given(
    tiles=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_tiles_with_global_values_equal_whole_image(tiles, seed):
    """Normalising tile by tile with global percentiles == normalising the whole image."""
    image = np.random.default_rng(seed).normal(300, 80, (2, 64, 96)).astype(np.float32)
    lo, hi = percentiles(image, 1, 99.8, "CYX")
    whole = apply_normalization(image, lo, hi)
    edges = np.linspace(0, image.shape[-1], tiles + 1).astype(int)
    stitched = np.concatenate(
        [apply_normalization(image[..., a:b], lo, hi) for a, b in zip(edges[:-1], edges[1:])], axis=-1
    )
    np.testing.assert_array_equal(stitched, whole)
    np.testing.assert_allclose(whole, normalize_percentile(image, 1, 99.8, "CYX"), rtol=1e-6, atol=1e-6)


def test_percentiles_rejects_bad_range():
    with pytest.raises(ValueError, match="low < high"):
        percentiles(np.ones((4, 4)), 99, 1)


@pytest.mark.parametrize("scale", [1e-8, 1e-3, 1e5])
def test_normalisation_does_not_depend_on_the_images_units(scale):
    """An image in other units (scaled by 1e-8: values below 1e-7) normalises as the image, also inverted
    (lo and hi swapped); an absolute eps squashed it toward 0 and divided by ~0 when inverted."""
    image = np.random.default_rng(0).gamma(2.0, 0.3, (40, 50)).astype(np.float32)
    scaled = image * np.float32(scale)
    expected = normalize_percentile(image)
    np.testing.assert_allclose(normalize_percentile(scaled), expected, rtol=0, atol=1e-5)
    lo, hi = percentiles(image)
    slo, shi = percentiles(scaled)
    np.testing.assert_allclose(apply_normalization(scaled, shi, slo), 1 - expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(apply_normalization(image, hi, lo), 1 - expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_ordinary_images_normalise_as_with_an_absolute_eps(dtype):
    """The relative eps changes ordinary images by float rounding only: CSBDeep's / bioimage.io's
    ``(x - lo) / (hi - lo + 1e-6)``."""
    image = np.random.default_rng(1).integers(0, np.iinfo(dtype).max, (30, 40)).astype(dtype)
    lo, hi = np.percentile(image, [1.0, 99.8])
    np.testing.assert_allclose(normalize_percentile(image), (image - lo) / (hi - lo + 1e-6), rtol=3e-6, atol=1e-6)


@pytest.mark.parametrize("value", [0.0, 5e-9, 300.0])
def test_a_constant_image_normalises_to_0_without_dividing_by_zero(value):
    out = normalize_percentile(np.full((8, 9), value, np.float32))
    np.testing.assert_array_equal(out, np.zeros((8, 9), np.float32))


@pytest.mark.parametrize("dtype", [np.int64, np.uint32, np.float64])
def test_a_large_offset_keeps_the_contrast(dtype):
    """Values float32 rounds to steps of 256 (2**31 + counts) are normalised in float64 with float64
    percentiles: the offset changes nothing."""
    counts = np.random.default_rng(2).integers(0, 4000, (30, 40))
    expected = normalize_percentile(counts.astype(np.uint16))
    offset = (counts + 2**31).astype(dtype)
    out = normalize_percentile(offset)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    assert out.dtype == np.float32
    assert percentiles(offset)[0].dtype == np.float64


def test_percentiles_of_an_empty_image_say_it_is_empty():
    with pytest.raises(ValueError, match="the image is empty"):
        percentiles(np.zeros((0, 10), np.float32))


# ----------------------------------------------------------------------------- checks


def test_check_image_accepts_a_normal_image():
    check_image(np.random.default_rng(0).random((2, 20, 30)), "CYX")
    check_image(np.arange(12, dtype=np.uint8).reshape(3, 4), "YX")


def test_check_image_counts_nan_and_inf():
    image = np.ones((20, 30), np.float32)
    image[0, :3] = np.nan
    image[5, 5] = np.inf
    with pytest.raises(ValueError, match="4 NaN or infinite values"):
        check_image(image, "YX")


def test_check_image_counts_nan_in_dask():
    da = pytest.importorskip("dask.array")
    image = np.random.default_rng(0).random((4, 20, 30))
    image[1, 2, :7] = np.nan
    with pytest.raises(ValueError, match="7 NaN"):
        check_image(da.from_array(image, chunks=(1, 10, 10)), "ZYX")


def test_check_image_rejects_constant():
    with pytest.raises(ValueError, match="constant"):
        check_image(np.full((20, 30), 3, np.uint16), "YX")


@pytest.mark.parametrize(
    ("shape", "axes"), [((20,), "X"), ((20, 30), "CYX"), ((2, 2, 2, 2, 2, 20, 30), "TZCQSYX"), ((20, 30, 3), "YXT")]
)
def test_check_image_rejects_unsupported_dimensionality(shape, axes):
    image = np.random.default_rng(0).random(shape)
    with pytest.raises(ValueError, match="supported: axes over the letters T, Z, C, Y, X"):
        check_image(image, axes)


# ----------------------------------------------------------------------------- real data


def test_isbi_png_is_grey_uint8(shared_data: Path):
    image, axes = read_image(shared_data / "isbi2012/train/images/00.png")
    assert axes == "YX"
    assert image.shape == (512, 512)
    assert image.dtype == np.uint8
    check_image(image, axes)
    mask = read_labels(shared_data / "isbi2012/train/labels/00.png")
    assert set(np.unique(mask).tolist()) == {0, 255}


def test_dsb_rgba_images_are_grey_with_instance_labels(shared_data: Path):
    paths = sorted((shared_data / "dsb2018-fluo/train/images").glob("*.png"))[:4]
    assert paths, "no DSB images found"
    for path in paths:
        image, axes = read_image(path)
        assert axes == "YX"
        assert image.ndim == 2 and image.dtype == np.uint8
        np.testing.assert_array_equal(image, np.asarray(Image.open(path))[..., 0])
        labels = read_labels(path.parent.parent / "labels" / path.name)
        assert labels.dtype == np.uint16
        assert labels.shape == image.shape
        assert labels.max() >= 1
        assert len(np.unique(labels)) > 2  # instance ids, not a binary mask


def test_a_palette_png_of_labels_reads_as_its_ids(tmp_path):
    """Annotation tools save labels as palette PNGs: the ids are the palette indices, whatever the colours
    (here every cell red: as colours, one object)."""
    cells = np.zeros((16, 16), np.uint8)
    cells[2:6, 2:6], cells[8:12, 8:12] = 1, 7
    image = Image.fromarray(cells, mode="P")
    image.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    image.save(tmp_path / "labels.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "labels.png"), cells)
    assert read_image(tmp_path / "labels.png")[1] == "CYX"  # as an image: its colours, red on black


def test_a_boolean_image_is_normalised_as_0_and_1():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    np.testing.assert_array_equal(normalize_percentile(mask), normalize_percentile(mask.astype(np.uint8)))


def test_reading_notes_of_a_file_whose_axes_cannot_be_guessed_leave_the_error_to_read_image(tmp_path):
    from napari_unet.io import reading_notes

    tifffile.imwrite(tmp_path / "four.tif", np.zeros((2, 5, 8, 8), np.uint16))  # series axes QQYX
    assert reading_notes(tmp_path / "four.tif") == []
    with pytest.raises(ValueError, match="cannot guess the axes of a 4-D array"):
        read_image(tmp_path / "four.tif")


def test_the_alternative_axes_a_note_offers_are_in_canonical_order(tmp_path):
    from napari_unet.io import reading_notes

    tifffile.imwrite(tmp_path / "zc.tif", np.zeros((2, 3, 8, 8), np.uint16))  # series axes QSYX: read as ZCYX
    (said,) = reading_notes(tmp_path / "zc.tif")
    assert "read as ZCYX (3 channels) by guess; give --axes TZYX if these are planes" in said


def test_a_stack_of_colour_pictures_without_axes_is_noted_as_planes_not_as_guessed_channels(tmp_path):
    """RGB samples stored last are colours for sure: only the leading axis (planes or time points) is a guess."""
    from napari_unet.io import reading_notes

    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((5, 8, 8, 3), np.uint8), photometric="rgb", metadata=None)
    (said,) = reading_notes(tmp_path / "rgb.tif")
    assert "read as ZCYX (planes of colour pictures) by guess; give --axes TYXC if the planes are time points" in said
    assert read_image(tmp_path / "rgb.tif", axes="TYXC")[1] == "TCYX"


# ----------------------------------------------------------------------------- Z step and frame interval


@pytest.mark.parametrize(("axes", "shape"), [("ZYX", (3, 20, 30)), ("TYX", (4, 20, 30)), ("TZYX", (2, 3, 20, 30))])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int32])
def test_write_tiff_keeps_pixel_size_z_step_and_frame_interval(tmp_path, axes, shape, dtype):
    """ImageJ hyperstacks (spacing, finterval) and, for int32 labels, OME-TIFFs (PhysicalSizeZ, TimeIncrement)
    give back what was written, with the axes and values."""
    from napari_unet.metadata import PixelSize, StackSpacing, read_pixel_size, read_spacing

    image, size = ramp(shape, dtype), PixelSize(0.25, 0.5, "um")
    write_tiff(tmp_path / "c.tif", image, axes, pixel_size=size, spacing=StackSpacing(z=2.5, t=30.0))
    read, read_axes = read_image(tmp_path / "c.tif")
    assert read_axes == axes and isinstance(read, np.memmap)
    np.testing.assert_array_equal(read, image)
    assert read_pixel_size(tmp_path / "c.tif") == size
    expected = StackSpacing(z=2.5 if "Z" in axes else None, t=30.0 if "T" in axes else None)
    assert read_spacing(tmp_path / "c.tif", size) == expected
    with tifffile.TiffFile(tmp_path / "c.tif") as tif:
        assert tif.is_imagej == (dtype != np.int32) and tif.is_ome == (dtype == np.int32)


def test_without_a_z_step_or_frame_interval_labels_stay_plain_tiffs(tmp_path):
    """int32 labels become OME-TIFF only to hold a Z step or frame interval: not for a 2-D image, not without
    them, and not with an axis of length 1 (OME readers drop it: the file would come back with other axes)."""
    from napari_unet.metadata import PixelSize, StackSpacing, read_pixel_size, read_spacing

    size, spacing = PixelSize(0.5, 0.5, "um"), StackSpacing(z=2.0, t=5.0)
    for name, shape, axes in [("yx", (20, 30), "YX"), ("one", (1, 3, 20, 30), "TZYX")]:
        write_tiff(tmp_path / f"{name}.tif", np.ones(shape, np.int32), axes, pixel_size=size, spacing=spacing)
        assert read_image(tmp_path / f"{name}.tif")[1] == axes
        assert read_pixel_size(tmp_path / f"{name}.tif") == size
        with tifffile.TiffFile(tmp_path / f"{name}.tif") as tif:
            assert not tif.is_ome and tif.shaped_metadata
    write_tiff(tmp_path / "plain.tif", np.ones((3, 20, 30), np.int32), "ZYX")
    assert read_spacing(tmp_path / "plain.tif", size) == StackSpacing()
    assert read_pixel_size(tmp_path / "plain.tif") is None
    # a Z step needs a pixel size (its unit): without one, only the frame interval is kept
    write_tiff(tmp_path / "t.tif", np.ones((2, 3, 20, 30), np.uint16), "TZYX", spacing=spacing)
    assert read_spacing(tmp_path / "t.tif", None) == StackSpacing(t=5.0)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int32, np.int64, np.uint64])
def test_stacks_keep_their_axes_and_steps_with_a_plane_of_one_and_in_64_bits(tmp_path, dtype):
    """ImageJ and OME readers drop an axis of length 1, and OME has no 64-bit integers (napari's int64 labels
    crashed tifffile's OME writer): such stacks come back with their axes, pixel size and steps."""
    from napari_unet.metadata import PixelSize, StackSpacing, read_pixel_size, read_spacing

    size, steps = PixelSize(0.5, 0.5), StackSpacing(z=2.0, t=1.5)
    for shape, axes, expected in (
        ((1, 16, 16), "ZYX", StackSpacing()),  # one plane: no Z step to keep
        ((1, 2, 16, 16), "TZYX", StackSpacing(z=2.0)),
        ((3, 2, 16, 16), "TZYX", steps),
    ):
        array = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
        if np.dtype(dtype).itemsize == 8 and np.dtype(dtype).kind in "iu":
            array[0, 0, 0] = 2**40  # beyond 32 bits: kept as 64 bits
        write_tiff(tmp_path / "s.tif", array, axes, pixel_size=size, spacing=steps)
        read, found = read_image(tmp_path / "s.tif")
        assert found == axes and np.array_equal(read, array)
        assert read_pixel_size(tmp_path / "s.tif") == size and read_spacing(tmp_path / "s.tif", size) == expected
    labels = np.ones((3, 16, 16), np.int64)  # 64-bit labels that fit in 32 bits: an OME-TIFF of int32
    write_tiff(tmp_path / "l.tif", labels, "ZYX", pixel_size=size, spacing=steps)
    assert read_image(tmp_path / "l.tif")[0].dtype == np.int32
    assert read_spacing(tmp_path / "l.tif", size) == StackSpacing(z=2.0)


def test_read_spacing_of_files_written_by_imagej_and_ome_writers(tmp_path):
    """ImageJ: spacing in its unit, finterval in its tunit (seconds by default); OME: PhysicalSizeZ and
    TimeIncrement with their units, converted to the pixel size's unit and to seconds."""
    from napari_unet.metadata import PixelSize, StackSpacing, read_pixel_size, read_spacing

    image = np.zeros((2, 3, 16, 16), np.uint16)
    tifffile.imwrite(
        tmp_path / "fiji.tif",
        image,
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"axes": "TZYX", "spacing": 2.0, "unit": "micron", "finterval": 1.5, "tunit": "min"},
    )
    size = read_pixel_size(tmp_path / "fiji.tif")
    assert size == PixelSize(0.5, 0.5, "um")
    assert read_spacing(tmp_path / "fiji.tif", size) == StackSpacing(z=2.0, t=90.0)
    assert read_spacing(tmp_path / "fiji.tif", PixelSize(500, 500, "nm")) == StackSpacing(z=2000.0, t=90.0)
    assert read_spacing(tmp_path / "fiji.tif", None) == StackSpacing(t=90.0)

    metadata = {"axes": "TZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 800.0}
    metadata |= {"PhysicalSizeZUnit": "nm", "TimeIncrement": 250.0, "TimeIncrementUnit": "ms"}
    tifffile.imwrite(tmp_path / "o.ome.tif", image, ome=True, metadata=metadata)
    size = read_pixel_size(tmp_path / "o.ome.tif")
    assert size == PixelSize(0.2, 0.2, "um")
    assert read_spacing(tmp_path / "o.ome.tif", size) == StackSpacing(z=0.8, t=0.25)

    tifffile.imwrite(tmp_path / "bare.tif", image[0], metadata=None, photometric="minisblack")
    Image.fromarray(image[0, 0].astype(np.uint8)).save(tmp_path / "p.png")
    for path in (tmp_path / "bare.tif", tmp_path / "p.png", tmp_path / "missing.tif"):
        assert read_spacing(path, size) == StackSpacing()


def test_a_missing_codec_is_not_called_a_damaged_file(tmp_path, monkeypatch):
    """A healthy compressed TIFF whose codec is not installed was called "damaged or cut short"."""
    import tifffile

    path = tmp_path / "zstd.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint16))

    def no_codec(self, *args, **kwargs):
        raise ValueError("<COMPRESSION.ZSTD: 50000> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_codec)
    monkeypatch.setattr(tifffile, "memmap", lambda *a, **k: (_ for _ in ()).throw(ValueError("not mappable")))
    monkeypatch.setattr(tifffile, "imread", lambda *a, **k: no_codec(None))
    with pytest.raises(ValueError, match="needs a codec that is not installed \\(pip install imagecodecs\\)"):
        read_image(path)


def test_a_stack_of_a_few_label_planes_saved_without_axes_reads_as_planes(tmp_path):
    """tifffile.imwrite of 2 to 4 label planes (no axes metadata) read as channels by the images' guess (CYX):
    evaluate, measure and rois refused them ("labels must not be colour or have channels") with no --axes to
    say otherwise. Labels have no channels: they are planes."""
    import tifffile

    from napari_unet.io import read_label_image

    planes = np.zeros((3, 16, 16), np.int32)
    planes[:, 2:6, 2:6] = 1
    for count, expected in ((2, "ZYX"), (3, "ZYX"), (4, "ZYX")):
        tifffile.imwrite(tmp_path / f"s{count}.tif", planes[:1].repeat(count, axis=0))
        labels, axes = read_label_image(tmp_path / f"s{count}.tif")
        assert axes == expected and labels.shape == (count, 16, 16)
    tifffile.imwrite(tmp_path / "zc.tif", np.zeros((2, 3, 16, 16), np.uint16), imagej=True, metadata={"axes": "ZCYX"})
    assert read_label_image(tmp_path / "zc.tif")[1] == "ZCYX"  # said by the file: kept (and refused where used)


def test_given_axes_read_a_4d_tiff_that_says_none(tmp_path):
    """`--axes TZYX` (`axes=`) on a plain tifffile save of a 4-D array still failed with "cannot guess the axes
    ... pass axes explicitly": the reader guessed before the given axes were applied."""
    import tifffile

    data = np.arange(2 * 5 * 8 * 6, dtype=np.uint16).reshape(2, 5, 8, 6)
    tifffile.imwrite(tmp_path / "tz.tif", data)
    with pytest.raises(ValueError, match="cannot guess the axes of a 4-D array"):
        read_image(tmp_path / "tz.tif")
    image, axes = read_image(tmp_path / "tz.tif", "TZYX")
    assert axes == "TZYX" and np.array_equal(np.asarray(image), data)
    image, axes = read_image(tmp_path / "tz.tif", "ZCYX")  # canonical order: TZCYX
    assert axes == "ZCYX" and np.asarray(image).shape == (2, 5, 8, 6)
